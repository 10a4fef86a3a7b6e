//! The store node: an accept loop on the runtime alias's TCP, a task per connection (and a
//! reply writer once a reply must wait for its injected latency), serving the connection's
//! transactions one after another, each on a real [`MemoryKv`] transaction.

use super::faults::{CommitFault, SimFdbFaults};
use super::wire::{
    RANGE_CHUNK_BYTES, RANGE_REPLY_BYTES_MAX, Reply, Request, WireError, read_frame,
};
use super::{Deadline, deadline, timeout};
use chat_store::{Kv, KvError, MemoryKv, Tx};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Connections (each with at most one open transaction) served at once per client process
/// of the cluster; more wait in the listener's backlog. Per client, since a connection is a
/// transaction here (a real FoundationDB client multiplexes them over one), and each app
/// server keeps up to `POOLED_CONNECTIONS_MAX` idle: ten app servers sharing a fixed 1,024
/// would leave little for the transactions themselves.
pub const CONNECTIONS_PER_CLIENT_MAX: usize = 1024;
/// Accept loops sharing the listener (see [`SimFdbServer::serve`]).
const ACCEPTORS: usize = 64;
/// Replies computed but not yet sent, per connection; the request reader waits beyond it.
const REPLIES_QUEUED_MAX: usize = 256;
/// A connection with no request for this long is closed, between transactions too (a
/// transaction cannot commit after [`chat_store::kv::TX_LIFETIME`] anyway; twice that
/// leaves room to report 1007).
const REQUEST_WAIT_MAX: Duration = Duration::from_secs(10);
/// A reply not written within this is abandoned with its connection (a partitioned peer
/// holds our data without error, so writes never block in the simulator; kept as a bound).
const REPLY_WRITE_MAX: Duration = Duration::from_secs(10);
/// Waits after a failed accept or bind, doubling up to the max (never a tight loop).
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The simulated FoundationDB server: its data lives in a [`MemoryKv`] owned by the
/// harness, so killing the node loses open transactions but no committed data.
#[derive(Clone)]
pub struct SimFdbServer {
    kv: MemoryKv,
    faults: SimFdbFaults,
    connections_max: usize,
}

impl SimFdbServer {
    /// A server over `kv` (a clone sharing the harness's data) injecting `faults`.
    pub fn new(kv: MemoryKv, faults: SimFdbFaults) -> SimFdbServer {
        SimFdbServer {
            kv,
            faults,
            connections_max: CONNECTIONS_PER_CLIENT_MAX,
        }
    }

    /// Serves [`CONNECTIONS_PER_CLIENT_MAX`] connections at once for each of `clients`.
    pub fn with_clients(mut self, clients: usize) -> SimFdbServer {
        self.connections_max = CONNECTIONS_PER_CLIENT_MAX * clients.max(1);
        self
    }

    /// Binds `0.0.0.0:port` (retrying while a killed incarnation still holds the port) and
    /// serves until the node is killed. The entry point of a store node's `init`.
    pub async fn run(self, port: u16) {
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        let mut backoff = BACKOFF_MIN;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "sim fdb: bind failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
        self.serve(listener).await;
    }

    /// Serves `listener` until this future is dropped (or its node killed).
    ///
    /// [`ACCEPTORS`] accept loops share the listener: madsim delays every `accept` by a
    /// timer (at least a millisecond of simulated time, and seconds under buggify), so one
    /// loop starts at most about 1,000 transactions a simulated second, each one a
    /// connection here. The scale scenario's app servers queued behind that for a minute
    /// after the faults stopped (begins timing out after 1 s), which no FoundationDB
    /// cluster would do.
    pub async fn serve(self, listener: TcpListener) {
        let permits = Arc::new(Semaphore::new(self.connections_max));
        let acceptors = (0..ACCEPTORS).map(|_| self.accept_loop(&listener, &permits));
        futures::future::join_all(acceptors).await;
    }

    async fn accept_loop(&self, listener: &TcpListener, permits: &Arc<Semaphore>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return; // The semaphore is never closed.
            };
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    backoff = BACKOFF_MIN;
                    let server = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = server.serve_connection(stream).await {
                            tracing::debug!(%error, "sim fdb: connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "sim fdb: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// One connection: transactions one after another (each a `Begin`, requests, `End`)
    /// until the client closes it.
    ///
    /// Reads are answered from the transaction at once but their replies leave after the
    /// injected latency, in request order (see [`Replies`]): so a client's concurrent reads
    /// overlap as they would against FoundationDB's storage servers, while reads issued
    /// after a mutation still see it.
    async fn serve_connection(&self, stream: TcpStream) -> Result<(), ConnectionError> {
        // Replies are small frames written one after another: no Nagle delay (a no-op in the
        // simulator).
        stream.set_nodelay(true)?;
        let (mut reader, writer) = tokio::io::split(stream);
        let mut replies = Replies::new(writer);
        let result = self.serve_transactions(&mut reader, &mut replies).await;
        // Whatever ended the requests, queued replies still go out (bounded by their
        // write timeout).
        result.and(replies.finish().await)
    }

    async fn serve_transactions(
        &self,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        replies: &mut Replies,
    ) -> Result<(), ConnectionError> {
        let mut idle = Idle(deadline());
        loop {
            let Some(first) = idle.next_frame(reader).await? else {
                return Ok(()); // The client closed between transactions.
            };
            if Request::decode(&first)? != Request::Begin {
                return Err(ConnectionError::Protocol(
                    "a transaction must start with Begin",
                ));
            }
            tokio::time::sleep(self.faults.latency()).await;
            if !self.faults.admit() {
                let refused = Reply::Error(KvError::Unavailable(
                    "injected: the store refuses new transactions".into(),
                ));
                replies.send(Instant::now(), vec![refused]).await?;
                continue; // No transaction is open; the client may ask again.
            }
            let tx = self.kv.begin().await?;
            replies.send(Instant::now(), vec![Reply::Ok]).await?;
            if !self.serve_requests(&tx, reader, replies, &mut idle).await? {
                return Ok(());
            }
        }
    }

    /// One transaction's requests, until `End` (true) or the client closes (false).
    async fn serve_requests(
        &self,
        tx: &Tx,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        replies: &mut Replies,
        idle: &mut Idle,
    ) -> Result<bool, ConnectionError> {
        let mut mutated = false;
        let mut committed: Option<Result<(), KvError>> = None;
        loop {
            let Some(frame) = idle.next_frame(reader).await? else {
                return Ok(false); // The client closed: its transaction is dropped, uncommitted.
            };
            let reply = match Request::decode(&frame)? {
                Request::Begin => return Err(ConnectionError::Protocol("a second Begin")),
                Request::End => return Ok(true), // Dropped here unless its commit applied.
                Request::Set { key, value } => {
                    tx.set(key, value);
                    mutated = true;
                    continue;
                }
                Request::Clear { key } => {
                    tx.clear(key);
                    mutated = true;
                    continue;
                }
                Request::ClearRange { begin, end } => {
                    tx.clear_range(begin, end);
                    mutated = true;
                    continue;
                }
                Request::Get { key } => {
                    let value = tx.get(key).await;
                    self.count_error(&value);
                    vec![value.map_or_else(Reply::Error, Reply::Value)]
                }
                Request::GetRange {
                    begin,
                    end,
                    limit,
                    reverse,
                } => {
                    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
                    let pairs = tx.get_range(begin, end, limit, reverse).await;
                    self.count_error(&pairs);
                    match pairs {
                        Ok(pairs) => range_chunks(pairs),
                        Err(error) => vec![Reply::Error(error)],
                    }
                }
                Request::Commit => {
                    let outcome = match &committed {
                        Some(outcome) => outcome.clone(),
                        None => {
                            let outcome = self.commit(tx, mutated).await;
                            committed = Some(outcome.clone());
                            outcome
                        }
                    };
                    vec![outcome.map_or_else(Reply::Error, |()| Reply::Ok)]
                }
            };
            let due = Instant::now() + self.faults.latency();
            replies.send(due, reply).await?;
        }
    }

    /// Commits with the injected faults. A delay (half a latency draw) passes before the
    /// commit applies and the caller adds a full draw before the reply: a kill in either
    /// leaves the client with 1021, the commit applied or not.
    async fn commit(&self, tx: &Tx, mutated: bool) -> Result<(), KvError> {
        tokio::time::sleep(self.faults.latency() / 2).await;
        // Read-only commits never reach FoundationDB's proxies: nothing to inject.
        let fault = if mutated {
            self.faults.commit_fault()
        } else {
            CommitFault::None
        };
        match fault {
            CommitFault::None => {
                let outcome = tx.commit().await;
                self.count_commit(mutated, &outcome);
                outcome
            }
            CommitFault::NotCommitted => Err(KvError::NotCommitted),
            CommitFault::UnknownResult { apply } => {
                let applied = apply && {
                    let outcome = tx.commit().await;
                    self.count_commit(mutated, &outcome);
                    outcome.is_ok()
                };
                self.faults.count(|c| {
                    if applied {
                        c.injected_unknown_applied += 1;
                    } else {
                        c.injected_unknown_not_applied += 1;
                    }
                });
                Err(KvError::CommitUnknownResult)
            }
        }
    }

    fn count_commit(&self, mutated: bool, outcome: &Result<(), KvError>) {
        match outcome {
            Ok(()) if mutated => self.faults.count(|c| c.commits_applied += 1),
            Ok(()) => {}
            Err(KvError::NotCommitted) => self.faults.count(|c| c.conflicts += 1),
            Err(error) => self.count_error::<()>(&Err(error.clone())),
        }
    }

    fn count_error<T>(&self, result: &Result<T, KvError>) {
        if let Err(KvError::TransactionTooOld) = result {
            self.faults.count(|c| c.too_old += 1);
        }
    }
}

/// The bound on a connection's silence: renewed before each request is read, so a
/// connection with no request for [`REQUEST_WAIT_MAX`] is closed, between transactions too.
struct Idle(Deadline);

impl Idle {
    /// The next request's frame; `None` when the client closed the connection between frames.
    async fn next_frame(
        &mut self,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<Option<Vec<u8>>, ConnectionError> {
        Ok(self
            .0
            .within(REQUEST_WAIT_MAX, read_frame(reader))
            .await
            .map_err(|_| ConnectionError::Idle)??)
    }
}

/// Where a connection's replies go, in order, each no earlier than its due time: written at
/// once when it is due and nothing waits before it (no injected latency: the usual case), or
/// else queued for a writer task spawned on first need, which writes each when due.
struct Replies {
    writer: Arc<tokio::sync::Mutex<WriteHalf<TcpStream>>>,
    /// Replies queued for the writer task and not yet written.
    queued: Arc<AtomicUsize>,
    /// The writer task's queue and the task, once spawned.
    delayed: Option<(mpsc::Sender<Outgoing>, ReplyWriter)>,
}

type ReplyWriter = JoinHandle<Result<(), ConnectionError>>;

/// Replies due at one time (a range reply's chunks leave together).
struct Outgoing {
    due: Instant,
    replies: Vec<Reply>,
}

impl Replies {
    fn new(writer: WriteHalf<TcpStream>) -> Replies {
        Replies {
            writer: Arc::new(tokio::sync::Mutex::new(writer)),
            queued: Arc::new(AtomicUsize::new(0)),
            delayed: None,
        }
    }

    /// Sends `replies` when `due`, after every reply sent before.
    async fn send(&mut self, due: Instant, replies: Vec<Reply>) -> Result<(), ConnectionError> {
        if self.queued.load(Ordering::SeqCst) == 0 && due <= Instant::now() {
            // Nothing before it (this task alone queues): write it now.
            let mut writer = self.writer.lock().await;
            return write_replies(&mut *writer, &replies).await;
        }
        let (queue, _) = self.delayed.get_or_insert_with(|| {
            let (queue, outgoing) = mpsc::channel(REPLIES_QUEUED_MAX);
            let writer = tokio::spawn(send_replies(
                self.writer.clone(),
                outgoing,
                self.queued.clone(),
            ));
            (queue, writer)
        });
        self.queued.fetch_add(1, Ordering::SeqCst);
        queue
            .send(Outgoing { due, replies })
            .await
            .map_err(|_| ConnectionError::Closed)
    }

    /// Waits until every queued reply is written (or failed).
    async fn finish(self) -> Result<(), ConnectionError> {
        let Some((queue, writer)) = self.delayed else {
            return Ok(());
        };
        drop(queue); // Ends the writer once it has written what is queued.
        writer
            .await
            .map_err(|_| ConnectionError::Protocol("reply writer failed"))?
    }
}

/// Writes queued replies in order, each no earlier than its due time.
async fn send_replies(
    writer: Arc<tokio::sync::Mutex<WriteHalf<TcpStream>>>,
    mut queue: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
) -> Result<(), ConnectionError> {
    while let Some(Outgoing { due, replies }) = queue.recv().await {
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        }
        let mut writer = writer.lock().await;
        let written = write_replies(&mut *writer, &replies).await;
        queued.fetch_sub(1, Ordering::SeqCst);
        written?;
    }
    Ok(())
}

/// Writes `replies` and flushes, within [`REPLY_WRITE_MAX`].
async fn write_replies(
    writer: &mut (impl AsyncWrite + Unpin),
    replies: &[Reply],
) -> Result<(), ConnectionError> {
    let mut bytes = Vec::new();
    for reply in replies {
        reply.write_frame(&mut bytes);
    }
    let write = async {
        writer.write_all(&bytes).await?;
        writer.flush().await
    };
    timeout(REPLY_WRITE_MAX, write)
        .await
        .map_err(|_| ConnectionError::Idle)??;
    Ok(())
}

/// A range reply cut into frames of about [`RANGE_CHUNK_BYTES`]; refused with
/// [`KvError::Io`] beyond [`RANGE_REPLY_BYTES_MAX`] in total.
fn range_chunks(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Reply> {
    let total: usize = pairs.iter().map(|(k, v)| Reply::pair_bytes(k, v)).sum();
    if total > RANGE_REPLY_BYTES_MAX {
        return vec![Reply::Error(KvError::Io(format!(
            "range reply of {total} bytes exceeds {RANGE_REPLY_BYTES_MAX}; read it in pages"
        )))];
    }
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for (key, value) in pairs {
        let bytes = Reply::pair_bytes(&key, &value);
        if !chunk.is_empty() && chunk_bytes + bytes > RANGE_CHUNK_BYTES {
            chunks.push(Reply::Range {
                pairs: std::mem::take(&mut chunk),
                more: true,
            });
            chunk_bytes = 0;
        }
        chunk_bytes += bytes;
        chunk.push((key, value));
    }
    chunks.push(Reply::Range {
        pairs: chunk,
        more: false,
    });
    chunks
}

/// Why a connection ended early (logged at debug: clients come and go).
#[derive(Debug)]
enum ConnectionError {
    Io(std::io::Error),
    Wire(WireError),
    Protocol(&'static str),
    Store(KvError),
    Closed,
    Idle,
}

impl std::fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionError::Io(error) => write!(f, "i/o: {error}"),
            ConnectionError::Wire(error) => write!(f, "{error}"),
            ConnectionError::Protocol(why) => write!(f, "protocol: {why}"),
            ConnectionError::Store(error) => write!(f, "store: {error}"),
            ConnectionError::Closed => write!(f, "closed by the client"),
            ConnectionError::Idle => write!(f, "idle or stuck past its bound"),
        }
    }
}

impl From<std::io::Error> for ConnectionError {
    fn from(error: std::io::Error) -> Self {
        ConnectionError::Io(error)
    }
}

impl From<WireError> for ConnectionError {
    fn from(error: WireError) -> Self {
        ConnectionError::Wire(error)
    }
}

impl From<KvError> for ConnectionError {
    fn from(error: KvError) -> Self {
        ConnectionError::Store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_replies_are_chunked_within_the_frame_limit() {
        let value = vec![b'v'; 100_000];
        let pairs: Vec<_> = (0..10u8).map(|i| (vec![i], value.clone())).collect();
        let chunks = range_chunks(pairs.clone());
        assert!(chunks.len() > 1);
        let mut joined = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let Reply::Range { pairs, more } = chunk else {
                panic!("{chunk:?}")
            };
            assert_eq!(*more, i + 1 < chunks.len());
            assert!(chunk.to_frame().len() <= super::super::wire::FRAME_BYTES_MAX);
            joined.extend(pairs.iter().cloned());
        }
        assert_eq!(joined, pairs);
        assert_eq!(
            range_chunks(Vec::new()),
            vec![Reply::Range {
                pairs: vec![],
                more: false
            }]
        );
    }
}
