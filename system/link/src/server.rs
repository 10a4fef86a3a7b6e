//! The app server's end of the link.

use crate::LinkConfig;
use crate::auth::{self, LinkKey, Side};
use crate::client::write_loop;
use crate::frame::{
    Frames, HELLO_BYTES_MAX, LINK_VERSION, LinkFrame, Peer, read_frame_within, write_frame,
};
use chat_net::accept::{ConnectionLimits, Listener, accept_loop};
use chat_proto::api::{AppApi, Call};
use chat_proto::link::{Delivery, Receipt, Target};
use chat_proto::rest::ConversationView;
use chat_proto::{ApiError, Message, ServerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// The connection servers linked to this app server; delivers over their connections.
#[derive(Default)]
pub struct LinkRoutes {
    // A std Mutex: held for a lookup or a try_send, never across an await.
    routes: Mutex<HashMap<ServerId, (u64, mpsc::Sender<LinkFrame>)>>,
    generation: AtomicU64,
}

impl LinkRoutes {
    pub fn new() -> Arc<LinkRoutes> {
        Arc::new(LinkRoutes::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, (u64, mpsc::Sender<LinkFrame>)>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LinkRoutes {
    /// Sends each connection server the frame `frame` makes of its own targets; `dropped`
    /// is told of each server whose queue did not take it (unlinked, or full).
    fn each_server(
        &self,
        targets: &[Target],
        frame: impl Fn(Vec<Target>) -> LinkFrame,
        mut dropped: impl FnMut(ServerId),
    ) {
        let mut by_server: HashMap<ServerId, Vec<Target>> = HashMap::new();
        for target in targets {
            by_server
                .entry(target.addr.server)
                .or_default()
                .push(target.clone());
        }
        let routes = self.lock();
        for (server, targets) in by_server {
            let sent = routes
                .get(&server)
                .is_some_and(|(_, queue)| queue.try_send(frame(targets)).is_ok());
            if !sent {
                dropped(server);
            }
        }
    }
}

impl Delivery for LinkRoutes {
    fn deliver(&self, targets: &[Target], message: Arc<Message>) {
        let frame = |targets| LinkFrame::Deliver {
            targets,
            message: (*message).clone(),
        };
        self.each_server(targets, frame, |server| {
            // The message is durable; the recipients catch up with `sync`.
            tracing::debug!(
                server,
                conv = message.conv,
                seq = message.seq,
                "delivery dropped"
            );
        });
    }

    fn announce(&self, targets: &[Target], conversation: Arc<ConversationView>) {
        let frame = |targets| LinkFrame::Announce {
            targets,
            conversation: (*conversation).clone(),
        };
        self.each_server(targets, frame, |server| {
            // Its event is in the `seq` stream; clients see it when they sync.
            tracing::debug!(server, conv = conversation.conv_id, "announcement dropped");
        });
    }

    fn typing(&self, targets: &[Target], conv: chat_proto::ConvId, user: &str) {
        let frame = |targets| LinkFrame::Typing {
            targets,
            conv,
            user: user.to_owned(),
        };
        // Typing is best-effort: a dropped notice is never missed for long.
        self.each_server(targets, frame, |_| {});
    }

    fn receipt(&self, targets: &[Target], receipt: Receipt) {
        let frame = |targets| LinkFrame::Receipt {
            targets,
            receipt: receipt.clone(),
        };
        self.each_server(targets, frame, |server| {
            // The cursor is stored; clients read it with `GET .../reads`.
            tracing::debug!(server, conv = receipt.conv, "receipt dropped");
        });
    }
}

/// Serves link connections on `listener` with `app`, forever, to peers that prove they hold
/// `key` ([`crate::auth`]). Each connection serves up to
/// `requests_in_flight_max` requests at once and answers more with `overloaded`.
pub async fn serve(
    listener: impl Listener,
    app: Arc<dyn AppApi>,
    routes: Arc<LinkRoutes>,
    config: LinkConfig,
    connections_max: usize,
    key: LinkKey,
) {
    // Link peers are a few cluster processes, each with many requests on one connection.
    let limits = ConnectionLimits {
        total_max: connections_max,
        per_address_max: None,
        exempt: Default::default(),
    };
    accept_loop(listener, limits, |stream, peer, permit| {
        let (app, routes, config, key) = (app.clone(), routes.clone(), config.clone(), key.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, routes, config, key).await;
            tracing::debug!(%peer, "link connection closed");
            drop(permit);
        });
    })
    .await
}

async fn serve_connection(
    stream: impl AsyncRead + AsyncWrite + Send + 'static,
    app: Arc<dyn AppApi>,
    routes: Arc<LinkRoutes>,
    config: LinkConfig,
    key: LinkKey,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let Some(peer) = authenticate(&key, &mut reader, &mut writer, &config).await else {
        return;
    };
    let (outbound, queue) = mpsc::channel(config.outbound_queue_len_max);
    let writer_task = tokio::spawn(write_loop(writer, queue, config.heartbeat_interval));
    let generation = routes.generation.fetch_add(1, Ordering::Relaxed);
    if let Peer::Conn(server) = peer {
        routes.lock().insert(server, (generation, outbound.clone()));
        tracing::info!(server, "connection server linked");
    }
    let in_flight = Arc::new(Semaphore::new(config.requests_in_flight_max));
    let mut frames = Frames::new(reader, config.idle_timeout);
    while let Some(frame) = frames.next(&peer).await {
        match frame {
            LinkFrame::Request { id, request } => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    // Full: refuse at once rather than stop reading, so heartbeats and other
                    // requests still flow and the caller gets a clear, retryable answer.
                    let refusal =
                        ApiError::new(chat_proto::ErrorCode::Overloaded, "app server busy; retry");
                    let answer = LinkFrame::Response {
                        id,
                        result: Err(refusal),
                    };
                    if outbound.try_send(answer).is_err() {
                        tracing::warn!(?peer, "link outbound queue full; dropping a refusal");
                    }
                    continue;
                };
                // Ordered now (sends keep the order they arrived in); answered in a task.
                let call = app.call(request);
                tokio::spawn(answer(
                    id,
                    call,
                    outbound.clone(),
                    config.request_timeout,
                    permit,
                ));
            }
            LinkFrame::Ping => {
                let _ = outbound.try_send(LinkFrame::Pong);
            }
            LinkFrame::Pong => {}
            LinkFrame::Hello { .. }
            | LinkFrame::Challenge { .. }
            | LinkFrame::Proof { .. }
            | LinkFrame::Response { .. }
            | LinkFrame::Deliver { .. }
            | LinkFrame::Announce { .. }
            | LinkFrame::Receipt { .. }
            | LinkFrame::Typing { .. } => {
                tracing::warn!(?peer, "unexpected link frame");
                break;
            }
        }
    }
    if let Peer::Conn(server) = peer {
        let mut map = routes.lock();
        if map.get(&server).is_some_and(|(g, _)| *g == generation) {
            map.remove(&server);
        }
    }
    writer_task.abort();
}

/// The server's side of [`crate::auth`], within the idle timeout: the peer's `Hello`, our
/// `Challenge`, its `Proof` checked. `None` (the connection is dropped) for anything else.
async fn authenticate<R, W>(
    key: &LinkKey,
    reader: &mut R,
    writer: &mut W,
    config: &LinkConfig,
) -> Option<Peer>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let handshake = async {
        let (peer, client) = match read_frame_within(reader, HELLO_BYTES_MAX).await {
            Ok(LinkFrame::Hello {
                version: LINK_VERSION,
                peer,
                nonce,
            }) if auth::is_nonce(&nonce) => (peer, nonce),
            Ok(LinkFrame::Hello { version, .. }) => {
                return Err(format!(
                    "a hello of link version {version} or with a bad nonce"
                ));
            }
            Ok(_) => return Err("a first frame that is not hello".to_owned()),
            Err(err) => return Err(format!("no hello: {err}")),
        };
        let server = auth::nonce();
        let challenge = LinkFrame::Challenge {
            proof: key.server_proof(&client, &server, peer),
            nonce: server.clone(),
        };
        write_frame(writer, &challenge)
            .await
            .map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())?;
        match read_frame_within(reader, HELLO_BYTES_MAX).await {
            Ok(LinkFrame::Proof { proof })
                if key.verify(Side::Client, &client, &server, peer, &proof) =>
            {
                Ok(peer)
            }
            Ok(_) => Err(format!("{peer:?} does not hold the cluster secret")),
            Err(err) => Err(format!("no proof: {err}")),
        }
    };
    match tokio::time::timeout(config.idle_timeout, handshake).await {
        Ok(Ok(peer)) => Some(peer),
        Ok(Err(reason)) => {
            tracing::warn!(reason, "link peer refused");
            None
        }
        Err(_) => {
            tracing::warn!("link peer did not authenticate in time");
            None
        }
    }
}

/// Sends the answer of request `id` back, holding its in-flight `permit` until then.
async fn answer(
    id: u64,
    call: Call,
    outbound: mpsc::Sender<LinkFrame>,
    timeout: std::time::Duration,
    permit: OwnedSemaphorePermit,
) {
    // The caller gives up after the same bound; past it, dropping the work frees the permit
    // and tells the app server nobody waits (a sequencer then skips the send).
    let result = tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(ApiError::unavailable("no answer in time; retry")));
    let _ = outbound.send(LinkFrame::Response { id, result }).await;
    drop(permit);
}
