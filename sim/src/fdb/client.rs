//! The client: [`SimFdbKv`], a [`Kv`] whose transactions live on the store node, one at a
//! time on each of its TCP connections.
//!
//! The synchronous `set`/`clear`/`clear_range` append their frames to a bounded buffer and
//! return at once; the next request that expects a reply writes them ahead of itself, so
//! later reads still reach the server after them (madsim sends nothing before a flush, so
//! they would wait for that flush anyway). Callers write their own requests, one at a time;
//! replies are matched to their requests in order by a reader task. Every wait is bounded;
//! what a failure means depends on what was sent:
//! - before the `Commit` frame left, nothing can have been applied: [`KvError::Unavailable`];
//! - once it left (even if its write failed: on real TCP a failed write may have delivered
//!   bytes), a missing answer is [`KvError::CommitUnknownResult`], FoundationDB's 1021.
//!
//! Connections are reused, as FoundationDB's client keeps its connections to the cluster:
//! a transaction dropped while its connection is healthy and every reply it asked for has
//! arrived sends `End` and leaves the connection in a small pool (at most
//! [`POOLED_CONNECTIONS_MAX`], none idle longer than [`POOLED_IDLE_MAX`]); anything else
//! (a broken connection, a caller that gave up on a reply still to come) closes it, which
//! drops the server's transaction as before. `begin` takes the newest pooled connection; if
//! that connection turns out dead (the store was killed or restarted meanwhile) the pool is
//! emptied and a new connection is made, all within [`ClientOptions::begin_timeout`]. A
//! `begin` that times out empties the pool too, so during a partition the next `begin`
//! connects anew and is refused at once.

use super::wire::{RANGE_ENDPOINT_BYTES_MAX, RANGE_REPLY_BYTES_MAX, Reply, Request, read_frame};
use super::{deadline, timeout};
use async_trait::async_trait;
use chat_store::kv::{KEY_BYTES_MAX, TX_BYTES_MAX, TX_LIFETIME, VALUE_BYTES_MAX};
use chat_store::{Kv, KvError, KvTx, Tx};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Mutations of one transaction waiting to be written (with the next read or the commit).
/// Mutations beyond it fail the transaction with [`KvError::TransactionTooLarge`]
/// (FoundationDB has no such count, but its 10 MB bound on mutation bytes makes more than
/// this a runaway loop in practice).
pub const REQUESTS_QUEUED_MAX: usize = 1 << 17;
/// Requests written and awaiting their replies, per transaction.
const REPLIES_AWAITED_MAX: usize = 1024;
/// A caller never waits longer than this for its reply, whatever is queued before it.
const CALL_WAIT_MAX: Duration = Duration::from_secs(2 * TX_LIFETIME.as_secs());
/// Idle connections a client keeps for its next transactions; more are closed. Every new
/// connection costs madsim a scan of the node's bound ports (it picks the lowest free
/// ephemeral port): with 16, the scale scenario's app servers spent a fifth to a third of
/// the simulator's time in that scan. Far below the server's `CONNECTIONS_PER_CLIENT_MAX`, since
/// idle connections hold its permits too.
pub const POOLED_CONNECTIONS_MAX: usize = 64;
/// A pooled connection idle this long is closed rather than reused: well within the
/// server's 10 s bound on a silent connection, so the server does not close a connection
/// the client is about to use.
pub const POOLED_IDLE_MAX: Duration = TX_LIFETIME;

/// Timeouts of a [`SimFdbKv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Connecting and the `Begin` handshake (FoundationDB's read-version request).
    pub begin_timeout: Duration,
    /// Waiting for a read's reply, from when the reply is next due.
    pub request_timeout: Duration,
    /// Waiting for the commit's reply; beyond it the result is unknown (1021).
    pub commit_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            begin_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            commit_timeout: Duration::from_secs(2),
        }
    }
}

/// What one client saw, by outcome: for traces and for tests that want to show a fault
/// reached the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SimFdbClientCounts {
    /// Transactions begun.
    pub begun: u64,
    /// Commits answered `Ok` (read-only ones included).
    pub committed: u64,
    /// Calls (begin, reads, commits) that returned `Unavailable`.
    pub unavailable: u64,
    /// Commits that returned `CommitUnknownResult`, from the server or from a lost reply.
    pub unknown_result: u64,
    /// Commits that returned `NotCommitted`.
    pub not_committed: u64,
    /// Calls that returned `TransactionTooOld`.
    pub too_old: u64,
}

impl SimFdbClientCounts {
    fn record<T>(&mut self, result: &Result<T, KvError>) {
        match result {
            Err(KvError::Unavailable(_)) => self.unavailable += 1,
            Err(KvError::CommitUnknownResult) => self.unknown_result += 1,
            Err(KvError::NotCommitted) => self.not_committed += 1,
            Err(KvError::TransactionTooOld) => self.too_old += 1,
            _ => {}
        }
    }
}

type Counts = Arc<Mutex<SimFdbClientCounts>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind these locks: still consistent after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A [`Kv`] on a simulated FoundationDB node at `addr`. Cheap to clone; clones share counts
/// and pooled connections.
#[derive(Clone, Debug)]
pub struct SimFdbKv {
    addr: SocketAddr,
    options: ClientOptions,
    counts: Counts,
    pool: Arc<Pool>,
}

impl SimFdbKv {
    pub fn new(addr: SocketAddr) -> SimFdbKv {
        SimFdbKv::with_options(addr, ClientOptions::default())
    }

    pub fn with_options(addr: SocketAddr, options: ClientOptions) -> SimFdbKv {
        SimFdbKv {
            addr,
            options,
            counts: Counts::default(),
            pool: Arc::default(),
        }
    }

    pub fn counts(&self) -> SimFdbClientCounts {
        *lock(&self.counts)
    }

    /// A connection with a transaction begun on it: a pooled one, or else a new one.
    async fn begin_on_connection(&self) -> Result<Conn, KvError> {
        let addr = self.addr;
        let attempt = async {
            if let Some(conn) = self.pool.take() {
                match conn.begin().await {
                    Ok(()) => return Ok(conn),
                    Err(Begin::Refused(error)) => {
                        self.pool.put(conn);
                        return Err(error);
                    }
                    // The store went away since (killed, restarted, or closed the connection):
                    // so did every other pooled connection. A new one tells how it is now.
                    Err(Begin::Failed(_)) => self.pool.clear(),
                }
            }
            let conn = Conn::open(addr, self.options).await?;
            match conn.begin().await {
                Ok(()) => Ok(conn),
                Err(Begin::Refused(error)) => {
                    self.pool.put(conn);
                    Err(error)
                }
                Err(Begin::Failed(error)) => Err(error),
            }
        };
        match timeout(self.options.begin_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // Unreachable (a partition holds requests without error) or slow: the pooled
                // connections are no better, and the next begin connects anew, as every
                // begin did before connections were pooled (refused at once while a
                // partition lasts).
                self.pool.clear();
                Err(unavailable(format!("begin on {addr} timed out")))
            }
        }
    }
}

#[async_trait]
impl Kv for SimFdbKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        let conn = self.begin_on_connection().await;
        let mut counts = lock(&self.counts);
        counts.record(&conn);
        let conn = conn?;
        counts.begun += 1;
        drop(counts);
        Ok(Tx::new(Arc::new(SimFdbTx {
            conn: Some(conn),
            state: Mutex::default(),
            counts: self.counts.clone(),
            pool: self.pool.clone(),
        })))
    }
}

fn unavailable(why: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("sim fdb: {why}"))
}

/// Idle connections, oldest first.
#[derive(Default)]
struct Pool {
    /// Oldest first: `put` pushes at the back, `take` pops the most recent from the back,
    /// and the connections idle too long are at the front.
    idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &lock(&self.idle).len())
            .finish()
    }
}

impl Pool {
    /// The most recently used healthy connection not idle too long.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while idle
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= POOLED_IDLE_MAX)
        {
            idle.pop_front();
        }
        while let Some((conn, _)) = idle.pop_back() {
            if conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for a later transaction if it is reusable and there is room; else it is
    /// closed (dropped).
    fn put(&self, conn: Conn) {
        if !conn.reusable() {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() < POOLED_CONNECTIONS_MAX {
            idle.push_back((conn, Instant::now()));
        }
    }

    fn clear(&self) {
        let closed = std::mem::take(&mut *lock(&self.idle));
        drop(closed);
    }
}

/// A connection to the store node. Callers write their requests themselves, one at a time
/// (the writer's lock keeps requests and the reader's queue of waiters in the same order);
/// a reader task hands each reply to its waiter.
struct Conn {
    link: Arc<Mutex<Link>>,
    writer: tokio::sync::Mutex<WriteHalf<TcpStream>>,
    waiters: mpsc::Sender<Waiter>,
    reader: JoinHandle<()>,
    options: ClientOptions,
}

/// The state of a connection shared with its reader.
#[derive(Default)]
struct Link {
    /// Why the connection is unusable; nothing more is sent.
    broken: Option<String>,
    /// Calls being written or whose replies have not been read yet.
    calls: usize,
    /// Fire-and-forget frames (mutations, `End`) not written yet: they leave with the next
    /// call, in order before it (madsim sends nothing before a flush, so they would wait for
    /// it anyway; a transaction dropped without another call is dropped on the server too).
    unsent: Vec<u8>,
    /// How many requests `unsent` holds.
    unsent_requests: usize,
}

impl Link {
    fn break_with(&mut self, why: String) {
        self.broken.get_or_insert(why);
    }
}

/// Why a `Begin` did not open a transaction.
enum Begin {
    /// The store answered with an error; the connection is fine.
    Refused(KvError),
    /// The connection failed; it is closed.
    Failed(KvError),
}

/// What a call waits for: its reply's timeout and what a lost reply means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Begin,
    Read,
    Commit,
}

impl Conn {
    /// Connects and starts the connection's reader.
    async fn open(addr: SocketAddr, options: ClientOptions) -> Result<Conn, KvError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| unavailable(format!("connect to {addr}: {e}")))?;
        // Small frames written back to back (a mutation, then a read) must not wait for an
        // acknowledgement (Nagle). A no-op in the simulator.
        stream
            .set_nodelay(true)
            .map_err(|e| unavailable(format!("nodelay: {e}")))?;
        let (reader, writer) = tokio::io::split(stream);
        let (waiters, waiters_rx) = mpsc::channel(REPLIES_AWAITED_MAX);
        let link = Arc::new(Mutex::new(Link::default()));
        let reader = tokio::spawn(read_replies(reader, waiters_rx, link.clone(), options));
        Ok(Conn {
            link,
            writer: tokio::sync::Mutex::new(writer),
            waiters,
            reader,
            options,
        })
    }

    /// Asks the store for a transaction on this connection.
    async fn begin(&self) -> Result<(), Begin> {
        let failed = |why: String| {
            lock(&self.link).break_with(why.clone());
            Begin::Failed(unavailable(why))
        };
        match self.call(Request::Begin, Kind::Begin).await {
            Ok(Reply::Ok) => Ok(()),
            Ok(Reply::Error(error)) => Err(Begin::Refused(error)),
            Ok(other) => Err(failed(format!("protocol: begin answered {other:?}"))),
            Err(CallError::Failed(error)) => Err(failed(format!("begin: {error}"))),
            Err(CallError::Closed) => Err(failed(format!(
                "begin: {}",
                self.broken()
                    .unwrap_or_else(|| "connection closed".to_string())
            ))),
        }
    }

    fn broken(&self) -> Option<String> {
        lock(&self.link).broken.clone()
    }

    /// Healthy, and no reply still to come: the next transaction may use it.
    fn reusable(&self) -> bool {
        let link = lock(&self.link);
        link.broken.is_none() && link.calls == 0
    }

    /// Queues a fire-and-forget request to leave with the next call; false when more than
    /// [`REQUESTS_QUEUED_MAX`] are waiting.
    fn send_later(&self, request: Request<'_>) -> bool {
        let mut link = lock(&self.link);
        if link.unsent_requests >= REQUESTS_QUEUED_MAX {
            return false;
        }
        link.unsent_requests += 1;
        request.write_frame(&mut link.unsent);
        true
    }

    /// Sends a request and waits for its reply.
    async fn call(&self, request: Request<'_>, kind: Kind) -> Result<Reply, CallError> {
        let exchange = async {
            // Counted now; uncounted at once unless its waiter reaches the reader.
            let pending = Pending::new(&self.link);
            let answer = self.send(&request, kind).await?;
            pending.handed_to_reader();
            match answer.await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(error)) => Err(CallError::Failed(error)),
                // The reader stopped without answering: the connection broke.
                Err(_) => Err(CallError::Failed(lost(
                    kind,
                    &self
                        .broken()
                        .unwrap_or_else(|| "connection closed".to_string()),
                ))),
            }
        };
        if kind == Kind::Begin {
            // Bounded by the begin timeout, shorter than any other bound, which closes the
            // connection when it expires.
            return exchange.await;
        }
        match timeout(CALL_WAIT_MAX, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lock(&self.link).break_with("a reply took longer than any bound".into());
                Err(CallError::Failed(if kind == Kind::Commit {
                    KvError::CommitUnknownResult
                } else {
                    unavailable("reply overdue")
                }))
            }
        }
    }

    /// Writes the fire-and-forget requests waiting, then `request`, flushes, and hands the
    /// reply's waiter to the reader. Once bytes start to leave, nothing may interrupt this
    /// before the waiter is queued (or the connection is marked broken): a reply without its
    /// waiter would be taken for the next request's.
    async fn send(
        &self,
        request: &Request<'_>,
        kind: Kind,
    ) -> Result<oneshot::Receiver<Result<Reply, KvError>>, CallError> {
        // Room in the reader's queue first: after the write, queuing must not wait.
        let Ok(slot) = self.waiters.reserve().await else {
            return Err(CallError::Closed); // The reader stopped: the connection broke.
        };
        let mut writer = self.writer.lock().await;
        let interrupted = BreakOnDrop(Some(&self.link));
        let bytes = {
            let mut link = lock(&self.link);
            if link.broken.is_some() {
                return Err(CallError::Closed); // Nothing more is sent.
            }
            link.unsent_requests = 0;
            let mut bytes = std::mem::take(&mut link.unsent);
            request.write_frame(&mut bytes);
            bytes
        };
        let write = async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        };
        if let Err(why) = bounded(self.options.request_timeout, write).await {
            // It may have left (on real TCP a failed write may have delivered bytes).
            lock(&self.link).break_with(why.clone());
            return Err(CallError::Failed(lost(kind, &why)));
        }
        interrupted.disarm();
        let (reply, answer) = oneshot::channel();
        slot.send(Waiter { kind, reply });
        Ok(answer)
    }
}

/// Marks the connection broken if dropped armed: a write interrupted half-way.
struct BreakOnDrop<'a>(Option<&'a Mutex<Link>>);

impl BreakOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for BreakOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.0 {
            lock(link).break_with("a request was interrupted while it was written".into());
        }
    }
}

/// What a caller is told when its request left (or may have) but its reply will never come.
fn lost(kind: Kind, why: &str) -> KvError {
    if kind == Kind::Commit {
        KvError::CommitUnknownResult
    } else {
        unavailable(why)
    }
}

/// Why a call got no reply.
enum CallError {
    /// The request never left: the connection had stopped.
    Closed,
    /// What the caller is told (a lost commit is 1021).
    Failed(KvError),
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Nobody can wait for anything any more: close the connection now, which drops the
        // server's transaction (uncommitted, unless its commit already applied).
        self.reader.abort();
    }
}

/// A call counted in [`Link::calls`] until the reader reads its reply; uncounted at once if
/// it was never queued.
struct Pending<'a> {
    link: Option<&'a Mutex<Link>>,
}

impl<'a> Pending<'a> {
    fn new(link: &'a Mutex<Link>) -> Pending<'a> {
        lock(link).calls += 1;
        Pending { link: Some(link) }
    }

    /// Queued: the reader uncounts it when its reply arrives.
    fn handed_to_reader(mut self) {
        self.link = None;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.link {
            let mut link = lock(link);
            link.calls = link.calls.saturating_sub(1);
        }
    }
}

/// One transaction on the store node, on a connection of its own until it is dropped.
struct SimFdbTx {
    /// Always `Some` until dropped.
    conn: Option<Conn>,
    state: Mutex<TxState>,
    counts: Counts,
    pool: Arc<Pool>,
}

#[derive(Default)]
struct TxState {
    /// The first failed mutation (size limits): every later read and the commit report it,
    /// as FoundationDB (and `MemoryKv`) do.
    error: Option<KvError>,
    /// Bytes of mutations, counted as FoundationDB counts them against its limit.
    mutation_bytes: usize,
    /// Mutations queued: without any, the commit is answered here, as FoundationDB's client
    /// answers a read-only commit without asking the cluster.
    mutations: u64,
    /// The commit's outcome once known; a second `commit` answers it again.
    committed: Option<Result<(), KvError>>,
}

/// Someone waiting for the reply to a request.
struct Waiter {
    kind: Kind,
    reply: oneshot::Sender<Result<Reply, KvError>>,
}

impl Waiter {
    /// The request left (or may have) but its reply will never come.
    fn lost(self, why: &str) {
        // The caller may have given up already; nothing to tell then.
        let _ = self.reply.send(Err(lost(self.kind, why)));
    }
}

impl SimFdbTx {
    fn conn(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a transaction has its connection until dropped")
    }

    fn state(&self) -> MutexGuard<'_, TxState> {
        lock(&self.state)
    }

    /// Why nothing more can be asked: the transaction's own error first, then the
    /// connection's.
    fn usable(&self) -> Result<(), KvError> {
        if let Some(error) = &self.state().error {
            return Err(error.clone());
        }
        if let Some(why) = self.conn().broken() {
            return Err(unavailable(why));
        }
        Ok(())
    }

    /// Sends a request and waits for its reply.
    async fn call(&self, request: Request<'_>) -> Result<Reply, KvError> {
        let kind = if request == Request::Commit {
            Kind::Commit
        } else {
            Kind::Read
        };
        self.usable()?;
        match self.conn().call(request, kind).await {
            Ok(reply) => Ok(reply),
            Err(CallError::Failed(error)) => Err(error),
            Err(CallError::Closed) => Err(self
                .usable()
                .err()
                .unwrap_or_else(|| unavailable("connection closed"))),
        }
    }

    /// Counts what a call returns to its caller.
    fn counted<T>(&self, result: Result<T, KvError>) -> Result<T, KvError> {
        lock(&self.counts).record(&result);
        result
    }

    /// Queues a mutation, or records why the transaction cannot take it.
    fn mutate(&self, bytes: usize, request: Request<'_>) {
        if self.usable().is_err() {
            return; // It fails anyway; nothing more goes out.
        }
        let mut state = self.state();
        debug_assert!(state.committed.is_none(), "mutation after commit");
        state.mutation_bytes = state.mutation_bytes.saturating_add(bytes);
        if state.mutation_bytes > TX_BYTES_MAX {
            state.error = Some(KvError::TransactionTooLarge);
            return;
        }
        if self.conn().send_later(request) {
            state.mutations += 1;
        } else {
            state.error = Some(KvError::TransactionTooLarge);
        }
    }

    fn fail(&self, error: KvError) {
        self.state().error.get_or_insert(error);
    }
}

impl Drop for SimFdbTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Reused only when nothing of this transaction can still arrive; `End` drops the
        // server's transaction (uncommitted, unless its commit applied). Otherwise the
        // connection closes, which does the same.
        if conn.reusable() && conn.send_later(Request::End) {
            self.pool.put(conn);
        }
    }
}

fn check_key(key: &[u8], max: usize) -> Result<(), KvError> {
    if key.len() > max {
        Err(KvError::KeyTooLarge)
    } else {
        Ok(())
    }
}

#[async_trait]
impl KvTx for SimFdbTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key, KEY_BYTES_MAX)?;
        let result = match self.call(Request::Get { key }).await {
            Ok(Reply::Value(value)) => Ok(value),
            Ok(Reply::Error(error)) | Err(error) => Err(error),
            Ok(other) => Err(self.protocol_error("get", &other)),
        };
        self.counted(result)
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        check_key(begin, RANGE_ENDPOINT_BYTES_MAX)?;
        check_key(end, RANGE_ENDPOINT_BYTES_MAX)?;
        let limit = limit as u64;
        let result = match self
            .call(Request::GetRange {
                begin,
                end,
                limit,
                reverse,
            })
            .await
        {
            Ok(Reply::Range { pairs, more: false }) => Ok(pairs),
            Ok(Reply::Error(error)) | Err(error) => Err(error),
            Ok(other) => Err(self.protocol_error("get_range", &other)),
        };
        self.counted(result)
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        // Checked here so every frame stays within the frame limit; the same checks as
        // MemoryKv's, so the error is the one the server would report.
        if key.len() > KEY_BYTES_MAX {
            return self.fail(KvError::KeyTooLarge);
        }
        if value.len() > VALUE_BYTES_MAX {
            return self.fail(KvError::ValueTooLarge);
        }
        self.mutate(key.len() + value.len(), Request::Set { key, value });
    }

    fn clear(&self, key: &[u8]) {
        if key.len() > KEY_BYTES_MAX {
            return self.fail(KvError::KeyTooLarge);
        }
        self.mutate(key.len(), Request::Clear { key });
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return; // Clears nothing, as in MemoryKv.
        }
        if begin.len() > RANGE_ENDPOINT_BYTES_MAX || end.len() > RANGE_ENDPOINT_BYTES_MAX {
            return self.fail(KvError::KeyTooLarge);
        }
        self.mutate(begin.len() + end.len(), Request::ClearRange { begin, end });
    }

    async fn commit(&self) -> Result<(), KvError> {
        {
            let mut state = self.state();
            if let Some(outcome) = state.committed.clone() {
                drop(state);
                return self.counted(outcome);
            }
            if state.mutations == 0 {
                // Read-only (or every mutation refused locally): nothing to send, even over a
                // broken connection. Its reads came from one snapshot, a consistent point in
                // the commit order.
                let outcome = state.error.clone().map_or(Ok(()), Err);
                state.committed = Some(outcome.clone());
                if outcome.is_ok() {
                    lock(&self.counts).committed += 1;
                }
                return outcome;
            }
        }
        let outcome = match self.call(Request::Commit).await {
            Ok(Reply::Ok) => Ok(()),
            Ok(Reply::Error(error)) => Err(error),
            Ok(other) => {
                // The commit left; its answer is garbage, so its outcome is unknown.
                self.protocol_error("commit", &other);
                Err(KvError::CommitUnknownResult)
            }
            Err(error) => Err(error),
        };
        let outcome = self.state().committed.get_or_insert(outcome).clone();
        if outcome.is_ok() {
            lock(&self.counts).committed += 1;
        }
        self.counted(outcome)
    }
}

impl SimFdbTx {
    fn protocol_error(&self, what: &str, reply: &Reply) -> KvError {
        let why = format!("protocol: {what} answered {reply:?}");
        tracing::warn!(%why, "sim fdb: bad reply");
        // Nothing more is sent; the reader answers what is pending from what still arrives.
        lock(&self.conn().link).break_with(why.clone());
        unavailable(why)
    }
}

async fn bounded(
    limit: Duration,
    io: impl Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    match timeout(limit, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("write: {error}")),
        Err(_) => Err("write timed out".into()),
    }
}

/// Reads replies in order and hands each to its waiter. On any failure the connection is
/// marked broken and every waiter told: the reply is lost.
async fn read_replies(
    mut reader: impl AsyncRead + Unpin,
    mut waiters: mpsc::Receiver<Waiter>,
    link: Arc<Mutex<Link>>,
    options: ClientOptions,
) {
    // One timer for every reply's bound (see `chat_proto::deadline`).
    let mut bound = deadline();
    while let Some(waiter) = waiters.recv().await {
        let limit = match waiter.kind {
            Kind::Begin => options.begin_timeout,
            Kind::Read => options.request_timeout,
            Kind::Commit => options.commit_timeout,
        };
        let why = match bound.within(limit, read_reply(&mut reader)).await {
            Ok(Ok(reply)) => {
                {
                    let mut link = lock(&link);
                    link.calls = link.calls.saturating_sub(1);
                }
                let _ = waiter.reply.send(Ok(reply));
                continue;
            }
            Ok(Err(why)) => why,
            Err(_) => format!("no reply within {limit:?}"),
        };
        lock(&link).break_with(why.clone());
        waiter.lost(&why);
        waiters.close();
        while let Ok(waiter) = waiters.try_recv() {
            waiter.lost(&why);
        }
        return;
    }
}

/// One reply; a range reply's chunks joined.
async fn read_reply(reader: &mut (impl AsyncRead + Unpin)) -> Result<Reply, String> {
    let mut joined: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let frame = read_frame(reader)
            .await
            .map_err(|e| format!("read: {e}"))?
            .ok_or_else(|| "connection closed by the store".to_string())?;
        bytes += frame.len();
        if bytes > RANGE_REPLY_BYTES_MAX + super::wire::FRAME_BYTES_MAX {
            return Err(format!("reply larger than {RANGE_REPLY_BYTES_MAX} bytes"));
        }
        match Reply::decode(&frame).map_err(|e| format!("protocol: {e}"))? {
            Reply::Range { pairs, more } => {
                joined.extend(pairs);
                if !more {
                    return Ok(Reply::Range {
                        pairs: joined,
                        more: false,
                    });
                }
            }
            other if joined.is_empty() && bytes == frame.len() => return Ok(other),
            other => return Err(format!("protocol: {other:?} inside a range reply")),
        }
    }
}
