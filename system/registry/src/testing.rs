//! The conformance suite every [`Registry`] backend must pass, and what tests need to run it
//! against Redis.
//!
//! # Layout
//! - [`Backend`]: what the suite needs from a backend: fresh registries, the entry TTL (if
//!   entries expire), and a way to lose all data (a Redis restart without persistence).
//! - [`conformance`]: every check in turn; each check is also public, named as the claim it
//!   checks.
//! - [`LocalBackend`], [`RedisBackend`]: the two backends of this crate. The simulator's
//!   Redis model is checked by running the suite over [`RedisBackend`] against it and
//!   against a real `redis-server`.
//! - [`RedisServer`]: a private `redis-server` process on a free port of 127.0.0.1, killed
//!   when dropped.
//!
//! Checks panic on failure (they are tests). The order of one user's connections is
//! unspecified, so checks compare sorted lists. Timing checks are relative to when each
//! call actually returned, so a slow machine makes them wait longer, never fail; a claim that
//! needs a call to finish *before* a deadline is skipped (with a note) if the machine was too
//! slow to test it.

use crate::redis::{RedisConfig, RedisRegistry};
use crate::{CONNS_PER_USER_MAX, LocalRegistry, Registry, RegistryError};
use chat_proto::ConnAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A registry implementation under test.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A registry that sees none of the entries of the registries returned before.
    fn registry(&self) -> Arc<dyn Registry>;
    /// How long an entry lives without a refresh; `None` where entries never expire.
    fn entry_ttl(&self) -> Option<Duration>;
    /// Makes the backend lose every entry, as a Redis restart without persistence does.
    /// Returns false where the backend cannot lose data.
    async fn lose_data(&self) -> bool;
}

/// Runs every check against `backend`, printing each check's name first.
pub async fn conformance(backend: &dyn Backend) {
    println!("conformance: multi_device_register_and_lookup");
    multi_device_register_and_lookup(&*backend.registry()).await;
    println!("conformance: unregister_removes_exactly_that_connection");
    unregister_removes_exactly_that_connection(&*backend.registry()).await;
    println!("conformance: lookup_of_unknown_users_is_empty");
    lookup_of_unknown_users_is_empty(&*backend.registry()).await;
    println!("conformance: refresh_restores_missing_entries");
    refresh_restores_missing_entries(&*backend.registry()).await;
    println!("conformance: connections_per_user_are_capped");
    connections_per_user_are_capped(&*backend.registry()).await;
    println!("conformance: refresh_restores_entries_after_data_loss");
    refresh_restores_entries_after_data_loss(backend).await;
    if let Some(ttl) = backend.entry_ttl() {
        println!("conformance: entries_expire_without_refresh");
        entries_expire_without_refresh(&*backend.registry(), ttl).await;
        println!("conformance: cap_counts_only_live_connections");
        cap_counts_only_live_connections(&*backend.registry(), ttl).await;
    }
}

pub fn addr(server: u32, conn: u64) -> ConnAddr {
    ConnAddr { server, conn }
}

fn names(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| (*u).to_owned()).collect()
}

/// `lookup`, with each user's connections sorted.
pub async fn lookup_sorted(r: &dyn Registry, users: &[&str]) -> Vec<Vec<ConnAddr>> {
    let mut found = r.lookup(&names(users)).await.expect("lookup");
    assert_eq!(found.len(), users.len(), "lookup answers one list per user");
    for conns in &mut found {
        conns.sort_unstable();
    }
    found
}

async fn sleep_until(deadline: Instant) {
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
}

/// A user may be connected from several devices, on several servers; registering the same
/// connection twice records it once.
pub async fn multi_device_register_and_lookup(r: &dyn Registry) {
    r.register("alice", addr(1, 1)).await.unwrap();
    r.register("alice", addr(2, 7)).await.unwrap();
    r.register("alice", addr(2, 7)).await.unwrap();
    r.register("bob", addr(1, 2)).await.unwrap();
    r.register("carol", addr(u32::MAX, u64::MAX)).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["alice", "dave", "bob", "carol", "alice"]).await,
        vec![
            vec![addr(1, 1), addr(2, 7)],
            vec![],
            vec![addr(1, 2)],
            vec![addr(u32::MAX, u64::MAX)],
            vec![addr(1, 1), addr(2, 7)]
        ],
        "answers follow the order of the users asked, duplicates included"
    );
}

/// Unregister removes that connection only: a stale unregister (another server, an old
/// connection id) leaves the others.
pub async fn unregister_removes_exactly_that_connection(r: &dyn Registry) {
    r.register("alice", addr(1, 1)).await.unwrap();
    r.register("alice", addr(2, 1)).await.unwrap();
    r.register("bob", addr(1, 1)).await.unwrap();
    r.unregister("alice", addr(9, 9)).await.unwrap();
    r.unregister("alice", addr(1, 2)).await.unwrap();
    r.unregister("nobody", addr(1, 1)).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["alice", "bob"]).await,
        vec![vec![addr(1, 1), addr(2, 1)], vec![addr(1, 1)]]
    );
    r.unregister("alice", addr(1, 1)).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["alice", "bob"]).await,
        vec![vec![addr(2, 1)], vec![addr(1, 1)]]
    );
    r.unregister("alice", addr(2, 1)).await.unwrap();
    r.unregister("alice", addr(2, 1)).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["alice", "bob"]).await,
        vec![vec![], vec![addr(1, 1)]]
    );
}

/// Unknown users have no connections; an empty question has an empty answer.
pub async fn lookup_of_unknown_users_is_empty(r: &dyn Registry) {
    assert_eq!(r.lookup(&[]).await.unwrap(), Vec::<Vec<ConnAddr>>::new());
    assert_eq!(
        lookup_sorted(r, &["ghost", "", "ünïcode ✓", "a:b"]).await,
        vec![vec![], vec![], vec![], vec![]]
    );
    r.register("ünïcode ✓", addr(3, 3)).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["ghost", "ünïcode ✓"]).await,
        vec![vec![], vec![addr(3, 3)]]
    );
}

/// `refresh` creates entries the registry does not have, and repeating it changes nothing.
pub async fn refresh_restores_missing_entries(r: &dyn Registry) {
    let entries = vec![
        ("alice".to_owned(), addr(4, 1)),
        ("bob".to_owned(), addr(4, 2)),
        ("alice".to_owned(), addr(4, 3)),
    ];
    r.refresh(4, &entries).await.unwrap();
    r.refresh(4, &entries).await.unwrap();
    r.refresh(4, &[]).await.unwrap();
    assert_eq!(
        lookup_sorted(r, &["alice", "bob"]).await,
        vec![vec![addr(4, 1), addr(4, 3)], vec![addr(4, 2)]]
    );
    // More entries than one pipeline holds.
    let many: Vec<(String, ConnAddr)> = (0..1500u64)
        .map(|i| (format!("user{}", i % 700), addr(5, i)))
        .collect();
    r.refresh(5, &many).await.unwrap();
    let found = lookup_sorted(r, &["user0", "user699"]).await;
    assert_eq!(found[0], vec![addr(5, 0), addr(5, 700), addr(5, 1400)]);
    assert_eq!(found[1], vec![addr(5, 699), addr(5, 1399)]);
}

/// One user holds at most [`CONNS_PER_USER_MAX`] connections; re-registering one of them
/// at the cap is fine, and unregistering one makes room.
pub async fn connections_per_user_are_capped(r: &dyn Registry) {
    let max = CONNS_PER_USER_MAX as u64;
    for conn in 0..max {
        r.register("bob", addr(1, conn)).await.unwrap();
    }
    assert_eq!(
        r.register("bob", addr(2, 1000)).await,
        Err(RegistryError::TooManyConnections)
    );
    r.register("bob", addr(1, 0))
        .await
        .expect("re-registering at the cap");
    let found = lookup_sorted(r, &["bob"]).await;
    assert_eq!(
        found[0].len(),
        CONNS_PER_USER_MAX,
        "the refused connection is not recorded"
    );
    assert!(!found[0].contains(&addr(2, 1000)));
    r.unregister("bob", addr(1, 5)).await.unwrap();
    r.register("bob", addr(2, 1000))
        .await
        .expect("room after an unregister");
    r.register("carol", addr(1, 0))
        .await
        .expect("the cap is per user");
}

/// After the backend loses its data, lookups find nothing, and one refresh per server
/// brings every entry back. Where the backend cannot lose data, a fresh registry plays the
/// empty one.
pub async fn refresh_restores_entries_after_data_loss(backend: &dyn Backend) {
    let r = backend.registry();
    let server1 = vec![
        ("alice".to_owned(), addr(1, 1)),
        ("bob".to_owned(), addr(1, 2)),
    ];
    let server2 = vec![("alice".to_owned(), addr(2, 9))];
    for (user, a) in server1.iter().chain(&server2) {
        r.register(user, *a).await.unwrap();
    }
    let before = lookup_sorted(&*r, &["alice", "bob"]).await;
    assert_eq!(before, vec![vec![addr(1, 1), addr(2, 9)], vec![addr(1, 2)]]);

    let r = if backend.lose_data().await {
        assert_eq!(
            lookup_sorted(&*r, &["alice", "bob"]).await,
            vec![vec![], vec![]],
            "data loss loses every entry"
        );
        r
    } else {
        backend.registry()
    };
    r.refresh(1, &server1).await.unwrap();
    r.refresh(2, &server2).await.unwrap();
    assert_eq!(lookup_sorted(&*r, &["alice", "bob"]).await, before);
}

/// An entry not refreshed for the TTL disappears, also while another connection of the
/// same user is refreshed; a refreshed entry lives on.
pub async fn entries_expire_without_refresh(r: &dyn Registry, ttl: Duration) {
    let margin = ttl / 4;
    r.register("alice", addr(1, 1)).await.unwrap();
    r.register("alice", addr(2, 2)).await.unwrap();
    r.register("bob", addr(1, 3)).await.unwrap();
    let registered = Instant::now();

    sleep_until(registered + ttl / 2).await;
    let refresh_sent = Instant::now();
    r.refresh(1, &[("alice".to_owned(), addr(1, 1))])
        .await
        .unwrap();
    let refreshed = Instant::now();

    sleep_until(registered + ttl + margin).await;
    let found = lookup_sorted(r, &["alice", "bob"]).await;
    assert!(
        !found[0].contains(&addr(2, 2)),
        "alice's unrefreshed connection expired: {found:?}"
    );
    assert_eq!(found[1], vec![], "bob expired");
    if Instant::now() < refresh_sent + ttl {
        assert_eq!(
            found[0],
            vec![addr(1, 1)],
            "alice's refreshed connection lives on"
        );
    } else {
        println!("entries_expire_without_refresh: machine too slow to check the refreshed entry");
    }

    sleep_until(refreshed + ttl + margin).await;
    assert_eq!(
        lookup_sorted(r, &["alice", "bob"]).await,
        vec![vec![], vec![]],
        "everything expired"
    );
}

/// Expired connections do not count toward the cap, even while the user's other devices
/// keep the user's record alive.
pub async fn cap_counts_only_live_connections(r: &dyn Registry, ttl: Duration) {
    let margin = ttl / 4;
    for conn in 0..CONNS_PER_USER_MAX as u64 {
        r.register("bob", addr(1, conn)).await.unwrap();
    }
    let registered = Instant::now();
    sleep_until(registered + ttl / 2).await;
    let refresh_sent = Instant::now();
    r.refresh(1, &[("bob".to_owned(), addr(1, 0))])
        .await
        .unwrap();
    sleep_until(registered + ttl + margin).await;
    // All but one expired: there is room again.
    let result = r.register("bob", addr(2, 1)).await;
    if Instant::now() < refresh_sent + ttl {
        result.expect("expired connections leave room");
        assert_eq!(
            lookup_sorted(r, &["bob"]).await,
            vec![vec![addr(1, 0), addr(2, 1)]]
        );
    } else {
        println!("cap_counts_only_live_connections: machine too slow to check");
    }
}

/// [`LocalRegistry`]: entries never expire and are never lost.
#[derive(Debug, Default)]
pub struct LocalBackend;

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn registry(&self) -> Arc<dyn Registry> {
        Arc::new(LocalRegistry::new())
    }
    fn entry_ttl(&self) -> Option<Duration> {
        None
    }
    async fn lose_data(&self) -> bool {
        false
    }
}

/// [`RedisRegistry`] against the Redis (or Redis model) at `addr`. Each registry gets its own
/// key prefix; losing data is `FLUSHALL`, so give each suite run its own server.
#[derive(Debug)]
pub struct RedisBackend {
    config: RedisConfig,
    registries: AtomicU64,
}

impl RedisBackend {
    /// Registries for the Redis at `addr`, with `entry_ttl` and the other settings short
    /// enough for tests.
    pub fn new(addr: impl Into<String>, entry_ttl: Duration) -> RedisBackend {
        let mut config = RedisConfig::new(addr);
        config.entry_ttl = entry_ttl;
        config.request_timeout = Duration::from_secs(2);
        config.reconnect_backoff_min = Duration::from_millis(20);
        config.reconnect_backoff_max = Duration::from_millis(200);
        RedisBackend::with_config(config)
    }

    pub fn with_config(config: RedisConfig) -> RedisBackend {
        RedisBackend {
            config,
            registries: AtomicU64::new(0),
        }
    }

    /// A registry with its own key prefix.
    pub fn redis_registry(&self) -> RedisRegistry {
        let n = self.registries.fetch_add(1, Ordering::Relaxed);
        let mut config = self.config.clone();
        config.key_prefix = format!("{}t{n}:", self.config.key_prefix);
        RedisRegistry::new(config)
    }
}

#[async_trait::async_trait]
impl Backend for RedisBackend {
    fn registry(&self) -> Arc<dyn Registry> {
        Arc::new(self.redis_registry())
    }
    fn entry_ttl(&self) -> Option<Duration> {
        Some(self.config.entry_ttl)
    }
    async fn lose_data(&self) -> bool {
        self.redis_registry().flush_all().await.expect("FLUSHALL");
        true
    }
}

/// A `redis-server` of our own on a free port of 127.0.0.1, without persistence, killed
/// (SIGKILL) when dropped. Port 6379 may be someone else's.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<std::process::Child>,
    port: u16,
}

/// How long a starting `redis-server` may take to accept connections.
pub const REDIS_START_TIMEOUT: Duration = Duration::from_secs(10);

impl RedisServer {
    /// Starts `redis-server` (from `$REDIS_SERVER`, else `PATH`) on a free port.
    pub fn start() -> Result<RedisServer, String> {
        let port = free_port()?;
        let mut server = RedisServer { child: None, port };
        server.restart()?;
        Ok(server)
    }

    /// [`RedisServer::start`], trying up to three free ports: another process may take the
    /// free port before redis-server binds it (redis-server then exits at start).
    pub fn start_retrying() -> Result<RedisServer, String> {
        let mut failures = Vec::new();
        loop {
            match RedisServer::start() {
                Ok(server) => return Ok(server),
                Err(e) if failures.len() < 2 => failures.push(e),
                Err(e) => return Err(format!("{failures:?}; {e}")),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new one, empty, on the same port.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let program = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = std::process::Command::new(&program)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start `{program}` ({e}): these tests need a real Redis server; \
                     install it (Debian/Ubuntu: `apt-get install redis-server`) or set REDIS_SERVER"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + REDIS_START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "`{program}` on port {} exited at start: {status}",
                    self.port
                ));
            }
            if redis_answers_ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "`{program}` on port {} did not answer within {REDIS_START_TIMEOUT:?}",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Whether a Redis on 127.0.0.1:`port` answers `PING` (plain blocking I/O: no runtime needed).
fn redis_answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
