//! The client: [`SimFdbKv`], a [`Kv`] whose transactions live on the store node, one TCP
//! connection each.
//!
//! A transaction's requests go through one bounded queue to a writer task, so the
//! synchronous `set`/`clear`/`clear_range` enqueue and return at once while later reads
//! still reach the server after them. Replies are matched to their requests in order by a
//! reader task. Every wait is bounded; what a failure means depends on what was sent:
//! - before the `Commit` frame left, nothing can have been applied: [`KvError::Unavailable`];
//! - once it left (even if its write failed: on real TCP a failed write may have delivered
//!   bytes), a missing answer is [`KvError::CommitUnknownResult`], FoundationDB's 1021.

use super::wire::{RANGE_ENDPOINT_BYTES_MAX, RANGE_REPLY_BYTES_MAX, Reply, Request, read_frame};
use async_trait::async_trait;
use chat_store::kv::{KEY_BYTES_MAX, TX_BYTES_MAX, TX_LIFETIME, VALUE_BYTES_MAX};
use chat_store::{Kv, KvError, KvTx, Tx};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Requests queued on one transaction and not yet written. Mutations beyond it fail the
/// transaction with [`KvError::TransactionTooLarge`] (FoundationDB has no such count, but
/// its 10 MB bound on mutation bytes makes more than this a runaway loop in practice).
pub const REQUESTS_QUEUED_MAX: usize = 1 << 17;
/// Requests written and awaiting their replies, per transaction.
const REPLIES_AWAITED_MAX: usize = 1024;
/// A caller never waits longer than this for its reply, whatever is queued before it.
const CALL_WAIT_MAX: Duration = Duration::from_secs(2 * TX_LIFETIME.as_secs());

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

/// A [`Kv`] on a simulated FoundationDB node at `addr`. Cheap to clone; clones share counts.
#[derive(Clone, Debug)]
pub struct SimFdbKv {
    addr: SocketAddr,
    options: ClientOptions,
    counts: Counts,
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
        }
    }

    pub fn counts(&self) -> SimFdbClientCounts {
        *lock(&self.counts)
    }

    /// Connects and asks the store for a transaction.
    async fn handshake(&self) -> Result<TcpStream, KvError> {
        let addr = self.addr;
        let attempt = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|e| unavailable(format!("connect to {addr}: {e}")))?;
            // Small frames written back to back (a mutation, then a read) must not wait for
            // an acknowledgement (Nagle). A no-op in the simulator.
            stream
                .set_nodelay(true)
                .map_err(|e| unavailable(format!("nodelay: {e}")))?;
            let io = |e: std::io::Error| unavailable(format!("begin on {addr}: {e}"));
            stream
                .write_all(&Request::Begin.to_frame())
                .await
                .map_err(io)?;
            stream.flush().await.map_err(io)?;
            let frame = read_frame(&mut stream)
                .await
                .map_err(io)?
                .ok_or_else(|| unavailable("closed during begin"))?;
            match Reply::decode(&frame) {
                Ok(Reply::Ok) => Ok(stream),
                Ok(Reply::Error(error)) => Err(error),
                Ok(other) => Err(unavailable(format!("protocol: begin answered {other:?}"))),
                Err(error) => Err(unavailable(format!("protocol: {error}"))),
            }
        };
        tokio::time::timeout(self.options.begin_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(unavailable(format!("begin on {addr} timed out"))))
    }
}

#[async_trait]
impl Kv for SimFdbKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        let stream = self.handshake().await;
        let mut counts = lock(&self.counts);
        counts.record(&stream);
        let stream = stream?;
        counts.begun += 1;
        drop(counts);
        Ok(Tx::new(Arc::new(SimFdbTx::start(
            stream,
            self.options,
            self.counts.clone(),
        ))))
    }
}

fn unavailable(why: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(format!("sim fdb: {why}"))
}

/// One transaction on the store node.
struct SimFdbTx {
    requests: mpsc::Sender<Queued>,
    state: Arc<Mutex<TxState>>,
    tasks: [JoinHandle<()>; 2],
    counts: Counts,
}

#[derive(Default)]
struct TxState {
    /// The first failed mutation (size limits): every later read and the commit report it,
    /// as FoundationDB (and `MemoryKv`) do.
    error: Option<KvError>,
    /// Why the connection is unusable; nothing more is sent.
    broken: Option<String>,
    /// Bytes of mutations, counted as FoundationDB counts them against its limit.
    mutation_bytes: usize,
    /// Mutations queued: without any, the commit is answered here, as FoundationDB's client
    /// answers a read-only commit without asking the cluster.
    mutations: u64,
    /// The commit's outcome once known; a second `commit` answers it again.
    committed: Option<Result<(), KvError>>,
}

impl TxState {
    fn break_with(&mut self, why: String) {
        self.broken.get_or_insert(why);
    }

    fn usable(&self) -> Result<(), KvError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if let Some(why) = &self.broken {
            return Err(unavailable(why));
        }
        Ok(())
    }
}

/// A request in the writer's queue.
enum Queued {
    Mutation(Vec<u8>),
    Call(Vec<u8>, Waiter),
}

/// Someone waiting for the reply to a request.
struct Waiter {
    commit: bool,
    reply: oneshot::Sender<Result<Reply, KvError>>,
}

impl Waiter {
    /// The request left (or may have) but its reply will never come.
    fn lost(self, why: &str) {
        let error = if self.commit {
            KvError::CommitUnknownResult
        } else {
            unavailable(why)
        };
        // The caller may have given up already; nothing to tell then.
        let _ = self.reply.send(Err(error));
    }

    /// The request never left.
    fn unsent(self, why: &str) {
        let _ = self.reply.send(Err(unavailable(why)));
    }
}

impl SimFdbTx {
    fn start(stream: TcpStream, options: ClientOptions, counts: Counts) -> SimFdbTx {
        let (reader, writer) = tokio::io::split(stream);
        let (requests, queue) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let (waiters_tx, waiters_rx) = mpsc::channel(REPLIES_AWAITED_MAX);
        let state = Arc::new(Mutex::new(TxState::default()));
        let tasks = [
            tokio::spawn(write_requests(
                writer,
                queue,
                waiters_tx,
                state.clone(),
                options,
            )),
            tokio::spawn(read_replies(reader, waiters_rx, state.clone(), options)),
        ];
        SimFdbTx {
            requests,
            state,
            tasks,
            counts,
        }
    }

    fn state(&self) -> MutexGuard<'_, TxState> {
        lock(&self.state)
    }

    /// Sends a request and waits for its reply.
    async fn call(&self, request: Request<'_>) -> Result<Reply, KvError> {
        let commit = request == Request::Commit;
        self.state().usable()?;
        let (reply, answer) = oneshot::channel();
        let queued = Queued::Call(request.to_frame(), Waiter { commit, reply });
        let wait = async {
            if self.requests.send(queued).await.is_err() {
                // The writer is gone: the request never left.
                return Err(self
                    .state()
                    .usable()
                    .err()
                    .unwrap_or_else(|| unavailable("connection closed")));
            }
            match answer.await {
                Ok(result) => result,
                // Dropped unanswered: still queued when the writer stopped, so never sent.
                Err(_) => Err(self
                    .state()
                    .usable()
                    .err()
                    .unwrap_or_else(|| unavailable("connection closed"))),
            }
        };
        match tokio::time::timeout(CALL_WAIT_MAX, wait).await {
            Ok(result) => result,
            Err(_) => {
                self.state()
                    .break_with("a reply took longer than any bound".into());
                Err(if commit {
                    KvError::CommitUnknownResult
                } else {
                    unavailable("reply overdue")
                })
            }
        }
    }

    /// Counts what a call returns to its caller.
    fn counted<T>(&self, result: Result<T, KvError>) -> Result<T, KvError> {
        lock(&self.counts).record(&result);
        result
    }

    /// Queues a mutation, or records why the transaction cannot take it.
    fn mutate(&self, bytes: usize, request: Request<'_>) {
        let mut state = self.state();
        debug_assert!(state.committed.is_none(), "mutation after commit");
        if state.usable().is_err() {
            return; // It fails anyway; nothing more goes out.
        }
        state.mutation_bytes = state.mutation_bytes.saturating_add(bytes);
        if state.mutation_bytes > TX_BYTES_MAX {
            state.error = Some(KvError::TransactionTooLarge);
            return;
        }
        match self.requests.try_send(Queued::Mutation(request.to_frame())) {
            Ok(()) => state.mutations += 1,
            Err(mpsc::error::TrySendError::Full(_)) => {
                state.error = Some(KvError::TransactionTooLarge)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                state.break_with("connection closed".into())
            }
        }
    }

    fn fail(&self, error: KvError) {
        self.state().error.get_or_insert(error);
    }
}

impl Drop for SimFdbTx {
    fn drop(&mut self) {
        // Nobody can wait for anything any more: close the connection now, which drops the
        // server's transaction (uncommitted, unless its commit already applied).
        for task in &self.tasks {
            task.abort();
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
        self.state().break_with(why.clone());
        unavailable(why)
    }
}

/// Writes queued requests in order. Mutations are flushed once the queue runs dry (madsim
/// sends nothing before a flush); a call is flushed at once and handed to the reader.
async fn write_requests(
    mut writer: impl AsyncWrite + Unpin,
    mut queue: mpsc::Receiver<Queued>,
    waiters: mpsc::Sender<Waiter>,
    state: Arc<Mutex<TxState>>,
    options: ClientOptions,
) {
    let write_max = options.request_timeout;
    while let Some(queued) = queue.recv().await {
        if let Some(why) = lock(&state).broken.clone() {
            if let Queued::Call(_, waiter) = queued {
                waiter.unsent(&why);
            }
            return; // Dropping the queue drops the waiters behind: never sent.
        }
        match queued {
            Queued::Mutation(frame) => {
                let write = async {
                    writer.write_all(&frame).await?;
                    if queue.is_empty() {
                        writer.flush().await?;
                    }
                    Ok::<_, std::io::Error>(())
                };
                if let Err(why) = bounded(write_max, write).await {
                    lock(&state).break_with(why);
                    return;
                }
            }
            Queued::Call(frame, waiter) => {
                let write = async {
                    writer.write_all(&frame).await?;
                    writer.flush().await
                };
                if let Err(why) = bounded(write_max, write).await {
                    lock(&state).break_with(why.clone());
                    waiter.lost(&why);
                    return;
                }
                if let Err(mpsc::error::SendError(waiter)) = waiters.send(waiter).await {
                    // The reader stopped: the connection broke while this went out.
                    let why = lock(&state)
                        .broken
                        .clone()
                        .unwrap_or_else(|| "connection closed".into());
                    waiter.lost(&why);
                    return;
                }
            }
        }
    }
}

async fn bounded(
    limit: Duration,
    io: impl Future<Output = std::io::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(limit, io).await {
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
    state: Arc<Mutex<TxState>>,
    options: ClientOptions,
) {
    while let Some(waiter) = waiters.recv().await {
        let limit = if waiter.commit {
            options.commit_timeout
        } else {
            options.request_timeout
        };
        let why = match tokio::time::timeout(limit, read_reply(&mut reader)).await {
            Ok(Ok(reply)) => {
                let _ = waiter.reply.send(Ok(reply));
                continue;
            }
            Ok(Err(why)) => why,
            Err(_) => format!("no reply within {limit:?}"),
        };
        lock(&state).break_with(why.clone());
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
