//! [`LinkClient`]: one persistent, multiplexed connection to one app server.
//!
//! A supervisor task owns the connection: connect (bounded), `Hello`, then a writer task
//! (queue -> socket, heartbeats) and a reader loop (responses -> waiting callers,
//! deliveries -> the local [`Delivery`]). When the connection dies (error, or silence past
//! `idle_timeout`), every request in flight fails with `unavailable` and the supervisor
//! reconnects with jittered exponential backoff.
//!
//! Requests are queued synchronously when made, so requests made one after another reach
//! the app server in that order (what [`AppApi::call`] promises).

use crate::LinkConfig;
use crate::auth::{self, LinkKey, Side};
use crate::frame::{
    CodecError, Frames, HELLO_BYTES_MAX, LINK_VERSION, LinkFrame, Peer, read_frame_within,
    write_frame,
};
use chat_proto::api::{AppApi, Call, Request, Response};
use chat_proto::link::Delivery;
use chat_proto::{ApiError, ErrorCode};
use futures::FutureExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

type Reply = oneshot::Sender<Result<Response, ApiError>>;

/// A connection to one app server. Cheap to clone; the connection closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct LinkClient {
    shared: Arc<Shared>,
    _supervisor: Arc<AbortOnDrop>,
}

struct Shared {
    addr: SocketAddr,
    config: LinkConfig,
    key: LinkKey,
    next_id: AtomicU64,
    // A std Mutex: held for a map operation or a try_send, never across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The live connection's queue; `None` while disconnected.
    outbound: Option<mpsc::Sender<LinkFrame>>,
    pending: HashMap<u64, Reply>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LinkClient {
    /// Starts connecting to the app server at `addr` in the background. `delivery`, for a
    /// connection server, receives the messages the app server routes to it.
    pub fn new(
        addr: SocketAddr,
        peer: Peer,
        delivery: Option<Arc<dyn Delivery>>,
        config: LinkConfig,
        key: LinkKey,
    ) -> LinkClient {
        let shared = Arc::new(Shared {
            addr,
            config,
            key,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
        });
        let supervisor = tokio::spawn(supervise(shared.clone(), peer, delivery));
        LinkClient {
            shared,
            _supervisor: Arc::new(AbortOnDrop(supervisor)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Whether a connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().outbound.is_some()
    }

    /// Queues `request` now; the future resolves with its answer or a retryable error.
    fn request(&self, request: Request) -> Call {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            let Some(outbound) = state.outbound.clone() else {
                return futures::future::ready(Err(ApiError::unavailable(
                    "app server not connected; retry",
                )))
                .boxed();
            };
            // Registered before it is queued, so an answer cannot overtake its waiter.
            state.pending.insert(id, reply);
            if let Err(err) = outbound.try_send(LinkFrame::Request { id, request }) {
                state.pending.remove(&id);
                let error = match err {
                    mpsc::error::TrySendError::Full(_) => ApiError::new(
                        ErrorCode::Overloaded,
                        "link to the app server is full; retry",
                    ),
                    mpsc::error::TrySendError::Closed(_) => {
                        ApiError::unavailable("app server connection lost; retry")
                    }
                };
                return futures::future::ready(Err(error)).boxed();
            }
        }
        let shared = self.shared.clone();
        let timeout = self.shared.config.request_timeout;
        async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(ApiError::unavailable("app server connection lost; retry")),
                Err(_) => {
                    shared.lock().pending.remove(&id);
                    Err(ApiError::unavailable(
                        "app server did not answer in time; retry",
                    ))
                }
            }
        }
        .boxed()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the connection and fails every request waiting on it.
    fn disconnected(&self) {
        let pending = {
            let mut state = self.lock();
            state.outbound = None;
            std::mem::take(&mut state.pending)
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(ApiError::unavailable(
                "app server connection lost; retry",
            )));
        }
    }
}

async fn supervise(shared: Arc<Shared>, peer: Peer, delivery: Option<Arc<dyn Delivery>>) {
    let config = shared.config.clone();
    let mut backoff = config.reconnect_backoff_min;
    loop {
        match tokio::time::timeout(config.connect_timeout, TcpStream::connect(shared.addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                tracing::info!(addr = %shared.addr, "link connected");
                backoff = config.reconnect_backoff_min;
                run_connection(&shared, stream, peer, delivery.as_ref()).await;
                shared.disconnected();
                tracing::warn!(addr = %shared.addr, "link lost");
            }
            Ok(Err(err)) => {
                tracing::debug!(addr = %shared.addr, error = %err, "link connect failed")
            }
            Err(_) => tracing::debug!(addr = %shared.addr, "link connect timed out"),
        }
        // Jitter keeps a fleet of connection servers from reconnecting in lockstep.
        let jitter = rand::random::<f64>() * 0.5 + 0.5;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(config.reconnect_backoff_max);
    }
}

async fn run_connection(
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: Peer,
    delivery: Option<&Arc<dyn Delivery>>,
) {
    let config = &shared.config;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let handshake = authenticate(&shared.key, &mut reader, &mut writer, peer);
    match tokio::time::timeout(config.connect_timeout, handshake).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            tracing::error!(addr = %shared.addr, reason, "link authentication failed");
            return;
        }
        Err(_) => {
            tracing::warn!(addr = %shared.addr, "link authentication timed out");
            return;
        }
    }
    let (outbound, queue) = mpsc::channel(config.outbound_queue_len_max);
    shared.lock().outbound = Some(outbound);
    let writer_task = tokio::spawn(write_loop(writer, queue, config.heartbeat_interval));
    let mut frames = Frames::new(reader, config.idle_timeout);
    while let Some(frame) = frames.next(&shared.addr).await {
        match frame {
            LinkFrame::Response { id, result } => {
                if let Some(reply) = shared.lock().pending.remove(&id) {
                    let _ = reply.send(result);
                }
            }
            LinkFrame::Deliver { targets, message } => {
                if let Some(delivery) = delivery {
                    delivery.deliver(&targets, Arc::new(message));
                }
            }
            LinkFrame::Announce {
                targets,
                conversation,
            } => {
                if let Some(delivery) = delivery {
                    delivery.announce(&targets, Arc::new(conversation));
                }
            }
            LinkFrame::Receipt { targets, receipt } => {
                if let Some(delivery) = delivery {
                    delivery.receipt(&targets, receipt);
                }
            }
            LinkFrame::Typing {
                targets,
                conv,
                user,
            } => {
                if let Some(delivery) = delivery {
                    delivery.typing(&targets, conv, &user);
                }
            }
            LinkFrame::Pong | LinkFrame::Ping => {}
            LinkFrame::Hello { .. }
            | LinkFrame::Challenge { .. }
            | LinkFrame::Proof { .. }
            | LinkFrame::Request { .. } => {
                tracing::warn!(addr = %shared.addr, "unexpected frame from app server");
                break;
            }
        }
    }
    writer_task.abort();
}

/// The client's side of [`crate::auth`]: `Hello`, the server's `Challenge` checked, `Proof`.
async fn authenticate<R, W>(
    key: &LinkKey,
    reader: &mut R,
    writer: &mut W,
    peer: Peer,
) -> Result<(), &'static str>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let client = auth::nonce();
    let hello = LinkFrame::Hello {
        version: LINK_VERSION,
        peer,
        nonce: client.clone(),
    };
    let sent = write_frame(writer, &hello).await.is_ok() && writer.flush().await.is_ok();
    if !sent {
        return Err("could not send hello");
    }
    let (server, proof) = match read_frame_within(reader, HELLO_BYTES_MAX).await {
        Ok(LinkFrame::Challenge { nonce, proof }) => (nonce, proof),
        Ok(_) => return Err("the app server answered hello with something else"),
        Err(_) => return Err("no challenge (another link version, or connection lost)"),
    };
    if !auth::is_nonce(&server) || !key.verify(Side::Server, &client, &server, peer, &proof) {
        return Err("the app server does not hold the cluster secret");
    }
    let proof = LinkFrame::Proof {
        proof: key.client_proof(&client, &server, peer),
    };
    let sent = write_frame(writer, &proof).await.is_ok() && writer.flush().await.is_ok();
    if sent {
        Ok(())
    } else {
        Err("could not send the proof")
    }
}

pub(crate) async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<LinkFrame>,
    heartbeat_interval: Duration,
) {
    let mut heartbeat = tokio::time::interval(heartbeat_interval);
    loop {
        let frame = tokio::select! {
            frame = queue.recv() => match frame { Some(frame) => frame, None => return },
            _ = heartbeat.tick() => LinkFrame::Ping,
        };
        if write_or_refuse(&mut writer, frame).await.is_err() {
            return;
        }
        // Write the rest of a burst before one flush.
        while let Ok(frame) = queue.try_recv() {
            if write_or_refuse(&mut writer, frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

/// Writes `frame`; one over the frame limit (nothing is written of it) fails only itself: an
/// answer becomes an error answer to that one request, anything else is dropped. Errors are
/// the socket's.
async fn write_or_refuse<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    frame: LinkFrame,
) -> Result<(), CodecError> {
    let bytes = match write_frame(writer, &frame).await {
        Err(CodecError::TooLarge(bytes)) => bytes,
        written => return written,
    };
    match frame {
        LinkFrame::Response { id, .. } => {
            tracing::error!(id, bytes, "an answer is over the link's frame limit");
            let refusal = LinkFrame::Response {
                id,
                result: Err(ApiError::internal(
                    "the answer is too large for the internal link",
                )),
            };
            write_frame(writer, &refusal).await
        }
        _ => {
            tracing::error!(bytes, "a link frame over the limit was dropped");
            Ok(())
        }
    }
}

impl AppApi for LinkClient {
    fn call(&self, request: Request) -> Call {
        self.request(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::read_frame;
    use chat_proto::api::{Response, SyncPage};
    use chat_proto::link::Target;
    use chat_proto::{ConnAddr, Message};

    fn message(body: String) -> Message {
        Message {
            conv: 1,
            seq: 1,
            sender: "ann".into(),
            body,
            client_msg_id: "m1".into(),
            ts: 0,
            event: None,
            edited: false,
            deleted: false,
        }
    }

    /// A frame over the limit fails only itself: an answer becomes an error answer to that
    /// request, a delivery is dropped, and the frames after it still go out.
    #[tokio::test]
    async fn a_frame_over_the_limit_fails_only_itself() {
        let huge = message("x".repeat(crate::frame::FRAME_BYTES_MAX));
        let page = SyncPage {
            messages: vec![huge.clone()],
            last_seq: 1,
        };
        let frames = [
            LinkFrame::Response {
                id: 7,
                result: Ok(Response::Synced { page }),
            },
            LinkFrame::Deliver {
                targets: vec![Target {
                    user: "bob".into(),
                    addr: ConnAddr { server: 1, conn: 1 },
                }],
                message: huge,
            },
            LinkFrame::Pong,
        ];
        let mut written = Vec::new();
        for frame in frames {
            write_or_refuse(&mut written, frame).await.expect("written");
        }
        let mut reader = &written[..];
        match read_frame(&mut reader).await.expect("the refusal") {
            LinkFrame::Response {
                id: 7,
                result: Err(err),
            } => {
                assert_eq!(err.code, ErrorCode::Internal)
            }
            other => panic!("expected an error answer to request 7, got {other:?}"),
        }
        assert_eq!(
            read_frame(&mut reader).await.expect("the pong"),
            LinkFrame::Pong
        );
        assert!(reader.is_empty(), "the delivery was dropped");
    }
}
