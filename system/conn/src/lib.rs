//! The connection server: holds WebSockets, forwards client frames to app servers, and
//! pushes outgoing frames.
//!
//! # Layout
//! - [`ConnServer`]: configuration and entry point: [`ConnServer::upgrade`] accepts an
//!   authenticated upgrade within the connection limit, [`ConnServer::serve`] runs one
//!   WebSocket until it closes; [`ConnServer::run_heartbeat`] refreshes the registry.
//! - [`endpoint`]: the server's own HTTP listener (`/v1/ws`, `/healthz`) for gateways to
//!   splice to, and the token check it shares with the gateway.
//! - [`hub`]: the table of live connections on this server; implements
//!   [`chat_proto::link::Delivery`] for app servers.
//! - [`connection`]: one connection: a reader loop (client frames) and a writer task (acks,
//!   pushes, syncs, heartbeats) joined by a bounded queue.
//! - [`order`]: the writer's per-conversation order of `message` frames (pushes held during
//!   a sync, older ones skipped), without I/O.
//!
//! The server does no business logic: every frame goes to an app server through
//! [`chat_proto::api::AppApi`].

pub mod connection;
pub mod endpoint;
pub mod hub;
pub mod order;

use chat_net::error::{HttpError, error};
use chat_net::ratelimit::{KeyedLimit, Rate};
use chat_proto::ErrorCode;
use chat_proto::api::AppApi;
use chat_proto::limits::FRAME_BYTES_MAX;
use chat_registry::Registry;
use hub::ConnHub;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Tunables of a connection server. Every queue is bounded.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    /// WebSockets this server holds at most; the gateway answers 503 beyond.
    pub connections_max: usize,
    /// Frames queued for one connection; a client that falls this far behind is closed
    /// with 1013 and catches up with `sync` after reconnecting.
    pub outbound_queue_len_max: usize,
    /// Sends of one connection awaiting their ack; beyond, the server stops reading it.
    pub sends_in_flight_max: usize,
    /// Live pushes held back while a `sync` of the same conversation is streaming.
    pub sync_held_messages_max: usize,
    /// Messages asked of the app server per page of a `sync`.
    pub sync_page_messages_max: u32,
    /// The server pings every connection this often...
    pub heartbeat_interval: Duration,
    /// ...and closes it after this long without any frame from the client.
    pub idle_timeout: Duration,
    /// A write to the socket (a burst of frames, a ping, the close frame) gives up after
    /// this long, and the connection is dropped: a client that stops reading holds no
    /// socket, queue or task past it.
    pub write_timeout: Duration,
    /// How often the connections are re-asserted in the registry.
    pub registry_refresh_interval: Duration,
    /// Every call to an app server or the registry gives up after this long.
    pub request_timeout: Duration,
    /// `send`, `read` and `sync` frames allowed per user on this server (a user's devices
    /// share one server while it is up); beyond, each is answered `rate_limited` with
    /// `retry_after_ms` and not carried out. `None`: no limit.
    pub frame_rate: Option<Rate>,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            connections_max: 10_000,
            outbound_queue_len_max: 1024,
            sends_in_flight_max: 256,
            sync_held_messages_max: 4096,
            sync_page_messages_max: chat_proto::limits::SYNC_PAGE_MESSAGES_MAX,
            heartbeat_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            registry_refresh_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            // A person types a few frames a second; a reconnecting device resends and syncs in
            // a burst. A script is held to 50 durable writes a second instead of thousands.
            frame_rate: Some(Rate {
                per_second: 50,
                burst: 500,
            }),
        }
    }
}

pub struct ConnServer {
    hub: Arc<ConnHub>,
    app: Arc<dyn AppApi>,
    registry: Arc<dyn Registry>,
    config: ConnConfig,
    /// Per user: see [`ConnConfig::frame_rate`].
    frame_limits: Option<KeyedLimit<String>>,
}

impl ConnServer {
    pub fn new(
        hub: Arc<ConnHub>,
        app: Arc<dyn AppApi>,
        registry: Arc<dyn Registry>,
        config: ConnConfig,
    ) -> Arc<ConnServer> {
        Arc::new(ConnServer {
            frame_limits: config.frame_rate.map(KeyedLimit::new),
            hub,
            app,
            registry,
            config,
        })
    }

    /// Accepts the WebSocket upgrade `request` of an authenticated session: 101, and the
    /// socket served until it closes (at the latest when the session's token expires); 503
    /// when the server holds `connections_max` already.
    pub fn upgrade(
        self: &Arc<Self>,
        session: chat_auth::Verified,
        request: &mut axum::extract::Request,
    ) -> Result<axum::response::Response, HttpError> {
        chat_net::websocket::check_handshake(request.headers())?;
        if self.hub.len() >= self.config.connections_max {
            return Err(error(
                ErrorCode::Unavailable,
                "no connection capacity; retry later",
            ));
        }
        let conn = self.clone();
        chat_net::websocket::accept(request, Self::websocket_config(), move |ws| {
            conn.serve(session, ws)
        })
    }

    /// The WebSocket limits: frames and messages over [`FRAME_BYTES_MAX`] are refused.
    pub fn websocket_config() -> WebSocketConfig {
        WebSocketConfig::default()
            // tungstenite's default is 128 KiB per connection, held by idle connections too;
            // chat frames are a few hundred bytes, and a server holds tens of thousands of
            // connections. Larger frames still fit (the buffer grows up to the frame limit,
            // in reads of this size). tungstenite zero-fills this much before every socket
            // read, so it is also CPU: 16 KiB cost the simulator 4% in memset. 1 KiB instead
            // of 4 saved 3 KiB per idle connection (docs/performance.md).
            .read_buffer_size(1024)
            .max_message_size(Some(FRAME_BYTES_MAX))
            .max_frame_size(Some(FRAME_BYTES_MAX))
            // Bound what a slow reader can make us buffer beyond the outbound queue.
            .max_write_buffer_size(4 * 1024 * 1024)
    }

    /// Runs one authenticated WebSocket until it closes, or is closed with 4001 when the
    /// session's token expires.
    pub async fn serve<S>(self: Arc<Self>, session: chat_auth::Verified, ws: WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        connection::run(self, session, ws).await
    }

    /// Re-asserts this server's connections in the registry every
    /// `registry_refresh_interval`, forever: entries that expired or were lost (a registry
    /// restart without persistence) come back within one interval.
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.config.registry_refresh_interval);
        loop {
            ticker.tick().await;
            // Idle users' buckets are full again: forget them, so memory follows active users.
            if let Some(limits) = &self.frame_limits {
                limits.forget_idle();
            }
            let entries = self.hub.entries();
            let refresh = self.registry.refresh(self.hub.server_id(), &entries);
            match tokio::time::timeout(self.config.request_timeout, refresh).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "registry refresh failed"),
                Err(_) => tracing::warn!("registry refresh timed out"),
            }
        }
    }
}
