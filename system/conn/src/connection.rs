//! One WebSocket: a reader loop for client frames and a writer task for everything sent.
//!
//! Ordering rules kept here:
//! - sends are submitted to the app server in the order they were read (the submit is
//!   synchronous, the acks are awaited concurrently, up to `sends_in_flight_max`);
//! - per conversation, `message` frames leave in increasing `seq`: the writer asks its
//!   [`PushOrder`] what to send for each push and sync, and only writes what it answers.

use crate::ConnServer;
use crate::hub::Outbound;
use crate::order::{PushOrder, Write};
use chat_auth::Verified;
use chat_proto::api::{AppApiExt, SendRequest};
use chat_proto::deadline::Deadline;
use chat_proto::frame::{ClientFrame, FrameOp, ServerFrame};
use chat_proto::model::now_ms;
use chat_proto::{Amend, ApiError, ConnAddr, ConvId, ErrorCode, Seq};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tracing::Instrument;

/// How long a connection the server closes may still be read, for the client's close reply.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    /// 1009: a frame over the size limit.
    TooBig,
    /// 1013: the client fell behind its pushes.
    TryAgainLater,
    /// 1008: too many devices for this user.
    Policy,
    /// 1001: no frame from the client within the idle timeout.
    Idle,
    /// 1007: a text frame that is not UTF-8.
    NotUtf8,
    /// 4001: the session's token expired; log in again, then reconnect.
    TokenExpired,
}

impl CloseReason {
    fn frame(self) -> CloseFrame {
        let (code, reason) = match self {
            CloseReason::TooBig => (CloseCode::Size, "frame too large"),
            CloseReason::TryAgainLater => {
                (CloseCode::Again, "try again later; sync after reconnecting")
            }
            CloseReason::Policy => (CloseCode::Policy, "too many connections for this user"),
            CloseReason::Idle => (CloseCode::Away, "idle timeout"),
            CloseReason::NotUtf8 => (CloseCode::Invalid, "a text frame must be UTF-8"),
            CloseReason::TokenExpired => (
                CloseCode::Library(TOKEN_EXPIRED_CLOSE_CODE),
                "token expired; log in again",
            ),
        };
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }
}

/// The close code of a session whose token expired (4000-4999 are the application's).
pub const TOKEN_EXPIRED_CLOSE_CODE: u16 = 4001;

pub(crate) async fn run<S>(server: Arc<ConnServer>, session: Verified, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Entered only while this connection's futures are polled (`instrument`), never held
    // across an await: a guard held across one stays entered on the worker thread while
    // other tasks run there, and every span they open becomes its child. Thousands of
    // connections then chain into one tree whose recursive close overflows the stack.
    let span = tracing::info_span!(parent: None, "conn", conn_id = tracing::field::Empty, user = %session.user);
    serve(server, session, ws).instrument(span).await
}

async fn serve<S>(server: Arc<ConnServer>, session: Verified, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Verified { user, valid_until } = session;
    // The token's expiry as a time of this runtime's clock (madsim's in the simulator).
    let expires = tokio::time::Instant::now()
        + std::time::Duration::from_millis(
            valid_until.saturating_mul(1000).saturating_sub(now_ms()),
        );
    let config = &server.config;
    let (outbound, outbound_rx) = mpsc::channel(config.outbound_queue_len_max);
    let overflow = Arc::new(Notify::new());
    let addr = server.hub.add(&user, outbound.clone(), overflow.clone());
    tracing::Span::current().record("conn_id", addr.conn);
    tracing::debug!("connected");

    let (sink, mut stream) = ws.split();
    let (close_tx, close_rx) = watch::channel(None::<CloseReason>);
    let (done_tx, done_rx) = watch::channel(false);
    let writer = Writer {
        sink,
        write_timeout: config.write_timeout,
        order: PushOrder::new(config.sync_held_messages_max),
    };
    let writer = tokio::spawn(
        writer
            .run(
                outbound_rx,
                overflow,
                close_rx,
                done_tx,
                config.heartbeat_interval,
            )
            .in_current_span(),
    );

    // Fault point: a slow registration, so pushes race a reconnecting client's sync.
    if let Some(delay) = chat_proto::sim::buggify_delay(0.05, std::time::Duration::from_secs(3)) {
        tokio::time::sleep(delay).await;
    }
    let registered = tokio::time::timeout(
        config.request_timeout,
        server.registry.register(&user, addr),
    )
    .await;
    let refused = match registered {
        Ok(Ok(())) => None,
        Ok(Err(chat_registry::RegistryError::TooManyConnections)) => Some(CloseReason::Policy),
        // The registry is down or slow: serve the connection anyway. Sends work (they need
        // the store, not the registry), and the next registry refresh adds this connection
        // so pushes resume; until then the client catches up with `sync`.
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "registry unavailable; connection registered at the next refresh");
            None
        }
        Err(_) => {
            tracing::warn!("registry timed out; connection registered at the next refresh");
            None
        }
    };
    let reason = match refused {
        Some(reason) => Some(reason),
        None => {
            let reader = Reader {
                server: server.clone(),
                user: user.clone(),
                addr,
                outbound,
                sends: Arc::new(Semaphore::new(config.sends_in_flight_max)),
            };
            reader.run(&mut stream, done_rx, expires).await
        }
    };
    let _ = close_tx.send(reason);
    let writer = match reason {
        // Boxed: its read buffer would otherwise sit inline in every connection's future.
        Some(_) => Box::pin(linger(stream, writer)).await,
        None => Some(writer),
    };
    // The connection counts (against `connections_max`) until its socket is closed, and the
    // writer holds the socket: wait for it. Each of its socket operations is bounded by the
    // write timeout, so this ends; the abort is for a bug, not a client.
    if let Some(mut writer) = writer
        && tokio::time::timeout(config.write_timeout * 3, &mut writer)
            .await
            .is_err()
    {
        tracing::warn!("the writer outlived its write timeouts; aborted");
        writer.abort();
    }
    server.hub.remove(addr.conn);
    let unregister = server.registry.unregister(&user, addr);
    if !matches!(
        tokio::time::timeout(config.request_timeout, unregister).await,
        Ok(Ok(()))
    ) {
        // The entry is stale now; deliveries to it are dropped, and it expires or is
        // overwritten by the next refresh of whichever server holds the id.
        tracing::warn!("could not unregister the connection");
    }
    tracing::debug!(?reason, "disconnected");
}

/// Closes a connection the server chose to close without destroying its close frame.
///
/// Closing a socket with unread input makes the kernel send a reset, and a reset can
/// destroy the close frame before the client reads it (a client then sees no close code).
/// After a read error (an oversized frame) tungstenite's stream has ended and reads
/// nothing more, while the rest of that frame is still in the socket. So once the writer
/// has sent the close frame, the raw socket is shut down for writing (the client sees the
/// end after our close frame) and read to its end, bounded by [`CLOSE_LINGER`].
/// Returns the writer if it is still running (stuck on a client that does not read).
async fn linger<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    mut writer: tokio::task::JoinHandle<SplitSink<WebSocketStream<S>, WsMessage>>,
) -> Option<tokio::task::JoinHandle<SplitSink<WebSocketStream<S>, WsMessage>>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + CLOSE_LINGER;
    let left = || deadline.saturating_duration_since(std::time::Instant::now());
    // The client's close reply, while tungstenite can still parse frames.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(left(), stream.next()).await {}
    let sink = match tokio::time::timeout(left(), &mut writer).await {
        Ok(Ok(sink)) => sink,
        Ok(Err(_)) => return None,
        // The writer is stuck on a client that does not read: nothing more to save.
        Err(_) => return Some(writer),
    };
    let Ok(mut ws) = stream.reunite(sink) else {
        return None;
    };
    let socket = ws.get_mut();
    if tokio::time::timeout(left(), socket.shutdown())
        .await
        .is_err()
    {
        return None;
    }
    let mut scratch = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(left(), socket.read(&mut scratch)).await {
        if n == 0 {
            break;
        }
    }
    None
}

struct Reader {
    server: Arc<ConnServer>,
    user: String,
    addr: ConnAddr,
    outbound: mpsc::Sender<Outbound>,
    sends: Arc<Semaphore>,
}

impl Reader {
    /// Reads frames until the client leaves or the connection must close; returns why the
    /// server closes it, if it does.
    async fn run<S>(
        &self,
        stream: &mut SplitStream<WebSocketStream<S>>,
        mut writer_done: watch::Receiver<bool>,
        expires: tokio::time::Instant,
    ) -> Option<CloseReason>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let idle_timeout = self.server.config.idle_timeout;
        // One timer for the whole loop rather than one per frame.
        let mut idle = Deadline::new(tokio::time::Instant::now, tokio::time::sleep_until);
        // Idle counts from the client's last frame, not from when this loop last waited: a
        // long `sync` handled in between must not give a silent client more time (the
        // simulator's `slow_consumers` checker saw one held 30 s past the bound, seed 148).
        // Frames that arrived meanwhile are read before the bound is looked at.
        let mut last_frame = tokio::time::Instant::now();
        // One timer for the connection's life: a session ends with its token.
        let expired = tokio::time::sleep_until(expires);
        tokio::pin!(expired);
        loop {
            let left = idle_timeout.saturating_sub(last_frame.elapsed());
            let next = tokio::select! {
                next = idle.within(left, stream.next()) => next,
                _ = writer_done.changed() => return None,
                _ = &mut expired => return Some(CloseReason::TokenExpired),
            };
            let message = match next {
                Err(_) => return Some(CloseReason::Idle),
                Ok(None) => return None,
                Ok(Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))) => {
                    return Some(CloseReason::TooBig);
                }
                Ok(Some(Err(WsError::Utf8(_)))) => return Some(CloseReason::NotUtf8),
                Ok(Some(Err(err))) => {
                    tracing::debug!(error = %err, "read failed");
                    return None;
                }
                Ok(Some(Ok(message))) => {
                    last_frame = tokio::time::Instant::now();
                    message
                }
            };
            match message {
                WsMessage::Text(text) => {
                    if !self.handle_text(text.as_str()).await {
                        return None;
                    }
                }
                WsMessage::Binary(_) => {
                    let err = ApiError::new(
                        ErrorCode::BadFrame,
                        "binary frames are not part of the protocol; send JSON text",
                    );
                    if !self.reply(ServerFrame::error(&err, None)).await {
                        return None;
                    }
                }
                // tungstenite answers pings itself on the next read; pongs only prove liveness.
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                WsMessage::Close(_) => return None,
            }
        }
    }

    /// Handles one text frame; false when the connection is gone.
    /// The refusal of `frame` when its user is over their frame rate. Every frame but a ping
    /// is a durable write or a store read: one user's script must not fill the disk or busy
    /// the app servers. Pings (heartbeats) are never limited.
    fn over_rate(&self, frame: &ClientFrame) -> Option<ServerFrame> {
        let limits = self.server.frame_limits.as_ref()?;
        let (id, op, conv) = match frame {
            ClientFrame::Ping => return None,
            ClientFrame::Send { id, .. }
            | ClientFrame::Edit { id, .. }
            | ClientFrame::Delete { id, .. } => (Some(id.clone()), None, None),
            ClientFrame::Read { conv, .. } => (None, Some(FrameOp::Read), Some(*conv)),
            ClientFrame::Typing { conv } => (None, Some(FrameOp::Typing), Some(*conv)),
            ClientFrame::Sync { conv, .. } => (None, Some(FrameOp::Sync), Some(*conv)),
        };
        let wait = limits.check(&self.user).err()?;
        Some(ServerFrame::rate_limited(wait, id, op, conv))
    }

    async fn handle_text(&self, text: &str) -> bool {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(err) => return self.reply(err.to_frame()).await,
        };
        if let Some(refusal) = self.over_rate(&frame) {
            return self.reply(refusal).await;
        }
        match frame {
            ClientFrame::Ping => self.reply(ServerFrame::Pong).await,
            ClientFrame::Send { id, conv, body } => self.send(id, conv, body, None).await,
            ClientFrame::Edit {
                id,
                conv,
                seq,
                body,
            } => self.send(id, conv, body, Some(Amend::Edit(seq))).await,
            ClientFrame::Delete { id, conv, seq } => {
                self.send(id, conv, String::new(), Some(Amend::Delete(seq)))
                    .await
            }
            ClientFrame::Read { conv, seq } => {
                let read = self.server.app.read(&self.user, conv, seq);
                match self.with_timeout(read).await {
                    Ok(()) => true,
                    Err(err) => {
                        self.reply(ServerFrame::error_for(&err, FrameOp::Read, conv))
                            .await
                    }
                }
            }
            ClientFrame::Sync { conv, after } => self.sync(conv, after).await,
            ClientFrame::Typing { conv } => {
                let typing = self.server.app.typing(&self.user, conv);
                match self.with_timeout(typing).await {
                    Ok(()) => true,
                    Err(err) => {
                        self.reply(ServerFrame::error_for(&err, FrameOp::Typing, conv))
                            .await
                    }
                }
            }
        }
    }

    /// A send, or (`amend`) an edit or delete: the same path, acked with `sent`.
    async fn send(&self, id: String, conv: ConvId, body: String, amend: Option<Amend>) -> bool {
        // Waiting here stops reading the socket: backpressure on a client that outruns the store.
        let Ok(permit) = self.sends.clone().acquire_owned().await else {
            return false;
        };
        let request = SendRequest {
            sender: self.user.clone(),
            origin: self.addr,
            conv,
            client_msg_id: id.clone(),
            body,
            amend,
        };
        // Submitted now, in read order; only the ack is awaited off the read loop.
        let ack = self.server.app.send(request);
        let timeout = self.server.config.request_timeout;
        let outbound = self.outbound.clone();
        tokio::spawn(async move {
            let frame = match tokio::time::timeout(timeout, ack).await {
                Ok(Ok(ack)) => ServerFrame::Sent {
                    id,
                    conv: ack.conv,
                    seq: ack.seq,
                    ts: ack.ts,
                },
                Ok(Err(err)) => ServerFrame::error(&err, Some(id)),
                // Maybe durable, maybe not: a resend with the same id answers the same seq.
                Err(_) => ServerFrame::error(
                    &ApiError::unavailable("no answer in time; resend with the same id"),
                    Some(id),
                ),
            };
            let _ = outbound.send(Outbound::Frame(Box::new(frame))).await;
            drop(permit);
        });
        true
    }

    /// Streams every message with `seq > after`, then `synced`. Frames of this connection
    /// are not read meanwhile; a sync is bounded by what the store holds.
    async fn sync(&self, conv: ConvId, after: Seq) -> bool {
        if self.outbound.send(Outbound::SyncStart(conv)).await.is_err() {
            return false;
        }
        let mut after = after;
        loop {
            let page = self.server.app.sync(
                &self.user,
                conv,
                after,
                self.server.config.sync_page_messages_max,
            );
            let page = match self.with_timeout(page).await {
                Ok(page) => page,
                Err(err) => {
                    return self.outbound.send(Outbound::SyncAbort(conv)).await.is_ok()
                        && self
                            .reply(ServerFrame::error_for(&err, FrameOp::Sync, conv))
                            .await;
                }
            };
            let last_seq = page.last_seq;
            let caught_up = page.messages.last().is_none_or(|m| m.seq >= last_seq);
            if let Some(last) = page.messages.last() {
                after = last.seq;
            }
            if !page.messages.is_empty()
                && self
                    .outbound
                    .send(Outbound::SyncPage(page.messages))
                    .await
                    .is_err()
            {
                return false;
            }
            // Fault point: the connection drops in the middle of a sync.
            if chat_proto::sim::buggify(0.02) {
                return false;
            }
            if caught_up {
                return self
                    .outbound
                    .send(Outbound::SyncEnd { conv, last_seq })
                    .await
                    .is_ok();
            }
        }
    }

    async fn with_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.server.config.request_timeout, call)
            .await
            .unwrap_or_else(|_| Err(ApiError::unavailable("no answer in time; retry")))
    }

    async fn reply(&self, frame: ServerFrame) -> bool {
        self.outbound
            .send(Outbound::Frame(Box::new(frame)))
            .await
            .is_ok()
    }
}

struct Writer<S> {
    sink: SplitSink<WebSocketStream<S>, WsMessage>,
    /// Bounds every socket operation (see [`crate::ConnConfig::write_timeout`]).
    write_timeout: std::time::Duration,
    /// Which `message` frames go, and when.
    order: PushOrder,
}

impl<S> Writer<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn run(
        mut self,
        mut outbound: mpsc::Receiver<Outbound>,
        overflow: Arc<Notify>,
        mut close: watch::Receiver<Option<CloseReason>>,
        done: watch::Sender<bool>,
        heartbeat_interval: std::time::Duration,
    ) -> SplitSink<WebSocketStream<S>, WsMessage> {
        let mut heartbeat = tokio::time::interval(heartbeat_interval);
        heartbeat.tick().await;
        let reason = loop {
            tokio::select! {
                item = outbound.recv() => {
                    let Some(item) = item else { break None };
                    // Raced against overflow and close: a write waiting on a slow client must
                    // not hold off the close for the rest of its write timeout.
                    let stop = tokio::select! {
                        written = self.burst(item, &mut outbound) => written.err(),
                        _ = overflow.notified() => Some(Some(CloseReason::TryAgainLater)),
                        changed = close.changed() => Some(if changed.is_ok() { *close.borrow() } else { None }),
                    };
                    if let Some(reason) = stop { break reason; }
                }
                _ = heartbeat.tick() => {
                    if self.bounded(|sink| sink.send(WsMessage::Ping(Default::default()))).await.is_err() { break None; }
                }
                _ = overflow.notified() => break Some(CloseReason::TryAgainLater),
                changed = close.changed() => {
                    // The reader ended; its reason (if any) is the close code to send.
                    break if changed.is_ok() { *close.borrow() } else { None };
                }
            }
        };
        if let Some(reason) = reason {
            let _ = self
                .bounded(|sink| sink.send(WsMessage::Close(Some(reason.frame()))))
                .await;
        }
        let _ = self.bounded(|sink| sink.close()).await;
        let _ = done.send(true);
        self.sink
    }

    /// Writes `first` and whatever else is queued, then flushes once: one syscall for a
    /// burst. Err: the connection must end, with that close reason if any.
    async fn burst(
        &mut self,
        first: Outbound,
        outbound: &mut mpsc::Receiver<Outbound>,
    ) -> Result<(), Option<CloseReason>> {
        let mut item = first;
        loop {
            match self.write(item).await {
                Ok(true) => {}
                Ok(false) => return Err(Some(CloseReason::TryAgainLater)),
                Err(_) => return Err(None),
            }
            match outbound.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        self.bounded(|sink| sink.flush()).await.map_err(|_| None)
    }

    /// One socket operation, bounded by the write timeout: a client that stops reading
    /// fills the socket's buffers, and then every write would wait for it forever.
    async fn bounded<'a, F>(
        &'a mut self,
        op: impl FnOnce(&'a mut SplitSink<WebSocketStream<S>, WsMessage>) -> F,
    ) -> Result<(), WsError>
    where
        F: Future<Output = Result<(), WsError>> + 'a,
    {
        match tokio::time::timeout(self.write_timeout, op(&mut self.sink)).await {
            Ok(done) => done,
            Err(_) => Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
        }
    }

    /// Buffers one item for the socket. Ok(false): too many held pushes; the connection must close.
    async fn write(&mut self, item: Outbound) -> Result<bool, WsError> {
        let writes = match item {
            Outbound::Frame(frame) => {
                self.feed(&frame).await?;
                Vec::new()
            }
            Outbound::Text(text) => {
                self.feed_text(*text).await?;
                Vec::new()
            }
            Outbound::Push(push) => self.order.push(push),
            Outbound::SyncStart(conv) => {
                self.order.sync_start(conv);
                Vec::new()
            }
            Outbound::SyncPage(messages) => {
                // All of it: the client asked for these (see `PushOrder::sync_page`).
                self.order.sync_page(&messages);
                for message in &messages {
                    self.feed(&ServerFrame::message(message)).await?;
                }
                Vec::new()
            }
            Outbound::SyncEnd { conv, last_seq } => self.order.sync_end(conv, last_seq),
            Outbound::SyncAbort(conv) => self.order.sync_abort(conv),
        };
        for write in writes {
            match write {
                Write::Push(push) => self.feed_text(push.text.clone()).await?,
                Write::Synced { conv, seq } => {
                    self.feed(&ServerFrame::Synced { conv, seq }).await?
                }
                Write::CloseTryAgainLater => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn feed(&mut self, frame: &ServerFrame) -> Result<(), WsError> {
        self.feed_text(frame.to_json().into()).await
    }

    async fn feed_text(&mut self, text: Utf8Bytes) -> Result<(), WsError> {
        // `feed` buffers without flushing (the caller flushes once after a burst), but writes
        // out once tungstenite's buffer is full, so it can wait on the client too.
        self.bounded(|sink| sink.feed(WsMessage::Text(text))).await
    }
}
