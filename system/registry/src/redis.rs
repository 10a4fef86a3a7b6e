//! [`RedisRegistry`]: the registry in Redis, shared by every connection and app server.
//!
//! # Data model
//!
//! | key | type | field | value | written by | read by |
//! | --- | --- | --- | --- | --- | --- |
//! | `{prefix}u:{user}` | HASH | `"{server}:{conn}"` (decimal) | expiry of the entry, ms since the Unix epoch (decimal) | `register`, `refresh` (HSET), `unregister` (HDEL) | `lookup` (HGETALL) |
//!
//! Every write also sets `PEXPIRE {key} entry_ttl` on the user's key.
//!
//! Why this shape:
//! - **One hash per online user**: a lookup is one HGETALL per recipient, all of a message's
//!   recipients in one pipeline (one round trip), and a user's devices are one key.
//! - **The field is the exact connection**: `unregister` is an HDEL of that field only, so a
//!   stale unregister (after a reconnect, another server, or a retry) never removes another
//!   connection.
//! - **Two expiries**: Redis expires keys, not hash fields (before 7.4). The key's PEXPIRE
//!   makes a user whose servers all died disappear; the per-field expiry in the value hides
//!   the connections of a dead server while another device of the same user keeps the key
//!   alive. Readers drop fields whose expiry has passed and delete them opportunistically.
//!   Expiries are written with the writer's clock and compared with the reader's, so clock
//!   skew between servers must stay well below `entry_ttl` (30 s by default).
//! - **Refresh re-writes everything**: each connection server re-asserts all its entries
//!   every heartbeat (~10 s), so Redis needs no persistence: after it restarts empty, entries
//!   are back within one heartbeat.
//!
//! The per-user cap ([`CONNS_PER_USER_MAX`]) is checked with HLEN after the HSET (one round
//! trip). HLEN also counts expired fields, so only when it is over the cap does `register`
//! read the hash, count the fields that are still live and delete the expired ones. Two
//! concurrent registers at the cap can both be refused; the cap is never exceeded for longer
//! than one round trip. `refresh` does not check the cap: it re-asserts connections that
//! `register` accepted.
//!
//! # Commands
//! The registry sends exactly: `HSET`, `HDEL`, `HGETALL`, `HLEN`, `PEXPIRE`, `PING`; the
//! client library sends `CLIENT SETINFO` on connect (its replies are ignored). The test
//! support (cargo feature `testing`: tests, the simulator, the `redis_memory` example) also
//! sends `FLUSHALL`, `DBSIZE` and `INFO`. The simulator's Redis model
//! (`chat-sim`'s `resp` module) implements this set and no more: adding a command here
//! means adding it there.
//!
//! # Connection
//! One multiplexed connection over the runtime alias's `TcpStream` (so it runs under madsim),
//! connected lazily and shared by all callers. Every request is bounded by
//! `request_timeout`; on an I/O error, a protocol error or a timeout the connection is
//! dropped and the next call reconnects, no sooner than the current backoff (doubling from
//! `reconnect_backoff_min` to `reconnect_backoff_max`). While waiting out the backoff calls
//! fail at once. Every failure is [`RegistryError::Unavailable`]. `refresh` sends its
//! entries in pipelines of [`REFRESH_CHUNK_ENTRIES_MAX`], up to
//! [`REFRESH_CHUNKS_IN_FLIGHT_MAX`] at once, each bounded by `request_timeout`, and stops at
//! the first failure (the next heartbeat re-sends everything).

use crate::{CONNS_PER_USER_MAX, Registry, RegistryError};
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisConnectionInfo, Value};
use chat_proto::model::now_ms;
use chat_proto::{ConnAddr, ServerId};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Entries written by one `refresh` pipeline (two commands each).
pub const REFRESH_CHUNK_ENTRIES_MAX: usize = 512;
/// `refresh` pipelines in flight at once on the connection.
pub const REFRESH_CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// Users looked up by one pipeline; a conversation's members always fit in one.
pub const LOOKUP_CHUNK_USERS_MAX: usize = 1024;
const _: () = assert!(LOOKUP_CHUNK_USERS_MAX >= chat_proto::limits::CONV_MEMBERS_MAX);
/// Expired fields deleted by one background clean-up after a lookup.
pub const PRUNE_FIELDS_MAX: usize = 1024;

/// Where the registry's Redis is and how entries live there.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `host:port` (or `ip:port`) of the Redis server.
    pub addr: String,
    /// Prepended to every key, so several deployments (or tests) can share one Redis.
    pub key_prefix: String,
    /// An entry not refreshed for this long disappears. Connection servers refresh about
    /// every 10 s, so 30 s survives two missed heartbeats.
    pub entry_ttl: Duration,
    /// Every call (connect included) gives up after this long.
    pub request_timeout: Duration,
    /// Wait after the first failed connect before the next attempt...
    pub reconnect_backoff_min: Duration,
    /// ...doubling on each failure up to this.
    pub reconnect_backoff_max: Duration,
}

impl RedisConfig {
    pub fn new(addr: impl Into<String>) -> RedisConfig {
        RedisConfig {
            addr: addr.into(),
            key_prefix: "chat:".to_owned(),
            entry_ttl: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(2),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig::new("127.0.0.1:6379")
    }
}

/// The connection registry in Redis. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    /// `entry_ttl` in whole milliseconds, at least 1 (PEXPIRE rejects 0).
    ttl_ms: u64,
    // A std Mutex: held to read or swap the slot only, never across an await.
    slot: Mutex<Slot>,
    /// Serialises connect attempts, so a burst of callers opens one connection, not many.
    connecting: tokio::sync::Mutex<()>,
    /// One background clean-up of expired fields at a time; lookups skip it while busy.
    pruning: AtomicBool,
}

struct Slot {
    live: Option<Live>,
    /// Connections opened so far; identifies `live` so a late failure of an old connection
    /// does not drop a new one.
    generation: u64,
    /// No connect attempt before this instant.
    retry_at: Option<Instant>,
    /// The wait after the next failed attempt.
    backoff: Duration,
    /// Why the last connect failed, for errors returned while backing off.
    last_error: String,
}

struct Live {
    generation: u64,
    conn: MultiplexedConnection,
    /// Dropping it stops the connection's driver task (and closes the socket) even when
    /// requests are stuck on a silent peer.
    _stop_driver: oneshot::Sender<()>,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisRegistry {
    /// A registry that connects on first use.
    pub fn new(config: RedisConfig) -> RedisRegistry {
        let ttl_ms = u64::try_from(config.entry_ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let backoff = config.reconnect_backoff_min;
        RedisRegistry {
            inner: Arc::new(Inner {
                config,
                ttl_ms,
                slot: Mutex::new(Slot {
                    live: None,
                    generation: 0,
                    retry_at: None,
                    backoff,
                    last_error: String::new(),
                }),
                connecting: tokio::sync::Mutex::new(()),
                pruning: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// The key of `user`'s hash.
    pub fn user_key(&self, user: &str) -> String {
        format!("{}u:{}", self.inner.config.key_prefix, user)
    }

    /// Round trip to Redis (health checks, and to connect eagerly).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let mut pipe = new_pipe();
        pipe.cmd("PING");
        let replies = self.inner.run(&pipe).await?;
        match &replies[0] {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::Okay => Ok(()),
            other => Err(unexpected("PING", other)),
        }
    }

    /// Erases EVERY key of the Redis database, not only this registry's: for tests that
    /// simulate a Redis restart without persistence. Test support (feature `testing`), as are
    /// [`RedisRegistry::dbsize`], [`RedisRegistry::info`] and
    /// [`RedisRegistry::used_memory_bytes`].
    #[cfg(any(test, feature = "testing"))]
    pub async fn flush_all(&self) -> Result<(), RegistryError> {
        let mut pipe = new_pipe();
        pipe.cmd("FLUSHALL");
        match &self.inner.run(&pipe).await?[0] {
            Value::Okay => Ok(()),
            Value::SimpleString(s) if s == "OK" => Ok(()),
            other => Err(unexpected("FLUSHALL", other)),
        }
    }

    /// Keys in the Redis database (all of them, not only this registry's).
    #[cfg(any(test, feature = "testing"))]
    pub async fn dbsize(&self) -> Result<u64, RegistryError> {
        let mut pipe = new_pipe();
        pipe.cmd("DBSIZE");
        match &self.inner.run(&pipe).await?[0] {
            Value::Int(n) if *n >= 0 => Ok(*n as u64),
            other => Err(unexpected("DBSIZE", other)),
        }
    }

    /// The text of `INFO {section}`.
    #[cfg(any(test, feature = "testing"))]
    pub async fn info(&self, section: &str) -> Result<String, RegistryError> {
        let mut pipe = new_pipe();
        pipe.cmd("INFO").arg(section);
        match &self.inner.run(&pipe).await?[0] {
            Value::BulkString(bytes) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Value::VerbatimString { text, .. } => Ok(text.clone()),
            other => Err(unexpected("INFO", other)),
        }
    }

    /// `used_memory` from `INFO memory`: bytes Redis has allocated for its data.
    #[cfg(any(test, feature = "testing"))]
    pub async fn used_memory_bytes(&self) -> Result<u64, RegistryError> {
        let info = self.info("memory").await?;
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| RegistryError::Unavailable("INFO memory has no used_memory".to_owned()))
    }

    fn entry_expiry_ms(&self) -> u64 {
        now_ms().saturating_add(self.inner.ttl_ms)
    }

    /// Deletes expired fields seen by a lookup, in a background task so the lookup does not
    /// wait for it. At most one clean-up runs at a time; the next lookup that sees garbage
    /// tries again. Race: if the connection's server refreshes the field between our read
    /// and this HDEL, the live entry is deleted and comes back with the next refresh.
    fn prune_in_background(&self, expired: Vec<(String, Vec<u8>)>) {
        if expired.is_empty() || self.inner.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut pipe = new_pipe();
            for (key, field) in expired.iter().take(PRUNE_FIELDS_MAX) {
                pipe.cmd("HDEL").arg(key).arg(field);
            }
            if let Err(error) = inner.run(&pipe).await {
                tracing::debug!(%error, "registry: deleting expired entries failed");
            }
            inner.pruning.store(false, Ordering::Release);
        });
    }
}

impl Inner {
    /// Sends `pipe` (every command's reply kept: no `ignore()`), within `request_timeout`
    /// including a connect. Returns one reply per command; a command the server refused is
    /// a `Value::ServerError` in its place, not an error of the whole call.
    async fn run(&self, pipe: &::redis::Pipeline) -> Result<Vec<Value>, RegistryError> {
        let timeout = self.config.request_timeout;
        let started = Instant::now();
        let (generation, mut conn) = match tokio::time::timeout(timeout, self.connection()).await {
            Ok(connected) => connected?,
            Err(_) => {
                return Err(RegistryError::Unavailable(format!(
                    "connecting to redis at {} timed out after {timeout:?}",
                    self.config.addr
                )));
            }
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, pipe.query_async::<Value>(&mut conn)).await {
            Ok(Ok(Value::Array(replies))) if replies.len() == pipe.len() => Ok(replies),
            Ok(Ok(other)) => {
                let reason = format!("redis answered {} commands with {other:?}", pipe.len());
                self.drop_connection(generation, &reason);
                Err(RegistryError::Unavailable(reason))
            }
            Ok(Err(error)) => {
                let reason = format!("redis at {}: {error}", self.config.addr);
                // With ignore_errors a refusal comes back as a reply; an error here is the
                // connection's (I/O, protocol), so the connection cannot be trusted.
                self.drop_connection(generation, &reason);
                Err(RegistryError::Unavailable(reason))
            }
            Err(_) => {
                // A silent peer (a partition raises no TCP error) shows only as a timeout.
                let reason = format!(
                    "redis at {} did not answer within {timeout:?}",
                    self.config.addr
                );
                self.drop_connection(generation, &reason);
                Err(RegistryError::Unavailable(reason))
            }
        }
    }

    /// Runs a pipeline of writes; a refused write fails it.
    async fn run_writes(self: Arc<Inner>, pipe: ::redis::Pipeline) -> Result<(), RegistryError> {
        let replies = self.run(&pipe).await?;
        match replies
            .iter()
            .find(|reply| matches!(reply, Value::ServerError(_)))
        {
            Some(refused) => Err(unexpected("HSET/PEXPIRE", refused)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // Every update of the slot is a few field assignments that cannot panic halfway.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.lock()
            .live
            .as_ref()
            .map(|live| (live.generation, live.conn.clone()))
    }

    /// The live connection, connecting if there is none and the backoff allows.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), RegistryError> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        {
            let mut slot = self.lock();
            let now = Instant::now();
            if let Some(retry_at) = slot.retry_at
                && now < retry_at
            {
                return Err(RegistryError::Unavailable(format!(
                    "redis at {} unreachable ({}); next attempt in {:?}",
                    self.config.addr,
                    slot.last_error,
                    retry_at - now
                )));
            }
            // Book the backoff before trying: a caller's timeout may cancel this attempt
            // halfway, and the next caller must still wait.
            slot.retry_at = Some(now + slot.backoff);
            slot.backoff = (slot.backoff * 2)
                .min(self.config.reconnect_backoff_max)
                .max(self.config.reconnect_backoff_min);
        }
        match self.connect().await {
            Ok((conn, stop_driver)) => {
                let mut slot = self.lock();
                slot.generation += 1;
                let generation = slot.generation;
                slot.live = Some(Live {
                    generation,
                    conn: conn.clone(),
                    _stop_driver: stop_driver,
                });
                slot.retry_at = None;
                slot.backoff = self.config.reconnect_backoff_min;
                tracing::info!(addr = %self.config.addr, generation, "registry: connected to redis");
                Ok((generation, conn))
            }
            Err(reason) => {
                tracing::warn!(addr = %self.config.addr, %reason, "registry: cannot connect to redis");
                self.lock().last_error = reason.clone();
                Err(RegistryError::Unavailable(reason))
            }
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, oneshot::Sender<()>), String> {
        let addr = &self.config.addr;
        let stream = tokio::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| format!("connect to redis at {addr}: {e}"))?;
        // Small pipelined requests must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        // The library's own timeouts use the real tokio timer, which does not exist under
        // madsim: ours (the alias) bound every call instead.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        let (conn, driver) =
            MultiplexedConnection::new_with_config(&RedisConnectionInfo::default(), stream, config)
                .await
                .map_err(|e| format!("handshake with redis at {addr}: {e}"))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = driver => {}
                _ = stop_rx => {}
            }
        });
        Ok((conn, stop_tx))
    }

    /// Forgets connection `generation` if it is still the live one; the next call reconnects.
    fn drop_connection(&self, generation: u64, reason: &str) {
        let mut slot = self.lock();
        if slot
            .live
            .as_ref()
            .is_some_and(|live| live.generation == generation)
        {
            slot.live = None;
            slot.last_error = reason.to_owned();
            tracing::warn!(addr = %self.config.addr, generation, %reason, "registry: dropped redis connection");
        }
    }
}

/// A pipeline whose refused commands come back as replies (`Value::ServerError`), so one
/// refusal does not hide the other replies.
fn new_pipe() -> ::redis::Pipeline {
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    pipe
}

fn unexpected(command: &str, reply: &Value) -> RegistryError {
    match reply {
        Value::ServerError(error) => {
            RegistryError::Unavailable(format!("redis refused {command}: {error:?}"))
        }
        other => RegistryError::Unavailable(format!("unexpected reply to {command}: {other:?}")),
    }
}

fn int_reply(command: &str, reply: &Value) -> Result<i64, RegistryError> {
    match reply {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(command, other)),
    }
}

/// The hash field of a connection.
pub fn field_of(addr: ConnAddr) -> String {
    format!("{}:{}", addr.server, addr.conn)
}

/// The connection a hash field names, or `None` for anything else.
pub fn parse_field(field: &[u8]) -> Option<ConnAddr> {
    let text = std::str::from_utf8(field).ok()?;
    let (server, conn) = text.split_once(':')?;
    Some(ConnAddr {
        server: parse_decimal(server)?,
        conn: parse_decimal(conn)?,
    })
}

/// A plain decimal (no sign, no spaces) as the registry writes it.
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The (field, value) pairs of an HGETALL reply; anything unexpected gives none.
fn hash_pairs(reply: Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn bytes(v: Value) -> Option<Vec<u8>> {
        match v {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.into_bytes()),
            _ => None,
        }
    }
    match reply {
        Value::Array(items) => {
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(f), Some(v)) = (items.next(), items.next()) {
                if let (Some(f), Some(v)) = (bytes(f), bytes(v)) {
                    pairs.push((f, v));
                }
            }
            pairs
        }
        Value::Map(items) => items
            .into_iter()
            .filter_map(|(f, v)| Some((bytes(f)?, bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits a user's hash into live connections (sorted) and expired fields. Fields that are
/// not ours (garbage) are skipped and left alone.
fn live_and_expired(pairs: Vec<(Vec<u8>, Vec<u8>)>, now_ms: u64) -> (Vec<ConnAddr>, Vec<Vec<u8>>) {
    let mut live = Vec::with_capacity(pairs.len());
    let mut expired = Vec::new();
    for (field, value) in pairs {
        let Some(addr) = parse_field(&field) else {
            tracing::debug!(field = %String::from_utf8_lossy(&field), "registry: skipping a field that is not a connection");
            continue;
        };
        match std::str::from_utf8(&value)
            .ok()
            .and_then(parse_decimal::<u64>)
        {
            Some(expiry_ms) if expiry_ms >= now_ms => live.push(addr),
            Some(_) => expired.push(field),
            None => tracing::debug!(%addr, "registry: skipping an entry with an unreadable expiry"),
        }
    }
    live.sort_unstable();
    live.dedup();
    (live, expired)
}

#[async_trait::async_trait]
impl Registry for RedisRegistry {
    fn entry_ttl(&self) -> Option<Duration> {
        Some(self.config().entry_ttl)
    }

    async fn register(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError> {
        let key = self.user_key(user);
        let field = field_of(addr);
        let mut pipe = new_pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg(&field)
            .arg(self.entry_expiry_ms());
        pipe.cmd("PEXPIRE").arg(&key).arg(self.inner.ttl_ms);
        pipe.cmd("HLEN").arg(&key);
        let replies = self.inner.run(&pipe).await?;
        let added = int_reply("HSET", &replies[0])?;
        int_reply("PEXPIRE", &replies[1])?;
        let fields = int_reply("HLEN", &replies[2])?;
        if added == 0 || fields <= CONNS_PER_USER_MAX as i64 {
            return Ok(());
        }

        // Over the cap by HLEN: count what is live, delete what has expired, and take our
        // field back if the live ones are still too many.
        let mut read = new_pipe();
        read.cmd("HGETALL").arg(&key);
        let reply = self.inner.run(&read).await?.remove(0);
        if let Value::ServerError(_) = reply {
            return Err(unexpected("HGETALL", &reply));
        }
        let (live, expired) = live_and_expired(hash_pairs(reply), now_ms());
        let refused = live.len() > CONNS_PER_USER_MAX;
        let mut delete = new_pipe();
        for dead in &expired {
            delete.cmd("HDEL").arg(&key).arg(dead);
        }
        if refused {
            delete.cmd("HDEL").arg(&key).arg(&field);
        }
        if !delete.is_empty() {
            self.inner.run(&delete).await?;
        }
        if refused {
            Err(RegistryError::TooManyConnections)
        } else {
            Ok(())
        }
    }

    async fn unregister(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError> {
        let mut pipe = new_pipe();
        pipe.cmd("HDEL")
            .arg(self.user_key(user))
            .arg(field_of(addr));
        let replies = self.inner.run(&pipe).await?;
        int_reply("HDEL", &replies[0])?;
        Ok(())
    }

    async fn lookup(&self, users: &[String]) -> Result<Vec<Vec<ConnAddr>>, RegistryError> {
        let mut found = Vec::with_capacity(users.len());
        let mut expired = Vec::new();
        for chunk in users.chunks(LOOKUP_CHUNK_USERS_MAX) {
            let keys: Vec<String> = chunk.iter().map(|user| self.user_key(user)).collect();
            let mut pipe = new_pipe();
            for key in &keys {
                pipe.cmd("HGETALL").arg(key);
            }
            let replies = self.inner.run(&pipe).await?;
            let now = now_ms();
            for (key, reply) in keys.into_iter().zip(replies) {
                if let Value::ServerError(error) = &reply {
                    // Not a hash (someone else's key): nobody we can reach.
                    tracing::warn!(%key, ?error, "registry: lookup refused");
                }
                let (live, dead) = live_and_expired(hash_pairs(reply), now);
                found.push(live);
                expired.extend(dead.into_iter().map(|field| (key.clone(), field)));
            }
        }
        self.prune_in_background(expired);
        Ok(found)
    }

    async fn refresh(
        &self,
        server: ServerId,
        entries: &[(String, ConnAddr)],
    ) -> Result<(), RegistryError> {
        let expiry_ms = self.entry_expiry_ms();
        let ttl_ms = self.inner.ttl_ms;
        let mut chunks = entries.chunks(REFRESH_CHUNK_ENTRIES_MAX);
        let mut in_flight = FuturesUnordered::new();
        let mut result = Ok(());
        loop {
            while in_flight.len() < REFRESH_CHUNKS_IN_FLIGHT_MAX
                && let Some(chunk) = chunks.next()
            {
                let mut pipe = new_pipe();
                for (user, addr) in chunk {
                    let key = self.user_key(user);
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(field_of(*addr))
                        .arg(expiry_ms);
                    pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms);
                }
                in_flight.push(self.inner.clone().run_writes(pipe));
            }
            match in_flight.next().await {
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    // Stop at the first failure: the connection is likely gone.
                    result = Err(error);
                    break;
                }
                None => break,
            }
        }
        if let Err(error) = &result {
            tracing::warn!(server, entries = entries.len(), %error, "registry: refresh failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_garbage_is_skipped() {
        let addr = ConnAddr {
            server: 199,
            conn: u64::MAX,
        };
        assert_eq!(parse_field(field_of(addr).as_bytes()), Some(addr));
        for garbage in [
            "",
            ":",
            "1:",
            ":2",
            "1:2:3",
            "-1:2",
            "1:+2",
            "x:1",
            "4294967296:1",
            " 1:2",
            "1:18446744073709551616",
        ] {
            assert_eq!(parse_field(garbage.as_bytes()), None, "{garbage:?}");
        }
        assert_eq!(parse_field(&[0xff, b':', b'1']), None);
    }

    #[test]
    fn expired_and_garbage_fields_are_not_live() {
        let pairs = vec![
            (b"1:1".to_vec(), b"1000".to_vec()),
            (b"1:2".to_vec(), b"999".to_vec()),
            (b"junk".to_vec(), b"5000".to_vec()),
            (b"2:1".to_vec(), b"soon".to_vec()),
            (b"0:7".to_vec(), b"2000".to_vec()),
        ];
        let (live, expired) = live_and_expired(pairs, 1000);
        assert_eq!(
            live,
            vec![
                ConnAddr { server: 0, conn: 7 },
                ConnAddr { server: 1, conn: 1 }
            ]
        );
        assert_eq!(expired, vec![b"1:2".to_vec()]);
    }

    #[test]
    fn unexpected_replies_give_no_pairs() {
        assert!(hash_pairs(Value::Nil).is_empty());
        assert!(hash_pairs(Value::Int(3)).is_empty());
        // An odd trailing element and non-string items are skipped.
        let odd = Value::Array(vec![
            Value::BulkString(b"1:1".to_vec()),
            Value::BulkString(b"9".to_vec()),
            Value::Int(1),
            Value::BulkString(b"x".to_vec()),
            Value::BulkString(b"1:2".to_vec()),
        ]);
        assert_eq!(hash_pairs(odd), vec![(b"1:1".to_vec(), b"9".to_vec())]);
    }
}
