//! The API gateway: authenticates, rate-limits, serves REST, and places WebSockets on a
//! connection server, after which it does no frame processing.
//!
//! # Layout
//! - [`http`]: the accept loop (ours, not `axum::serve`, so it runs under madsim) and the
//!   hyper timer on the runtime alias.
//! - [`routes`]: the REST routes of the v1 protocol and the browser page.
//! - [`ws`]: the WebSocket upgrade: token check, then either a connection server in this
//!   process takes the socket, or the bytes are spliced to a remote connection server.
//! - [`placement`]: sticky placement of users on connection servers, with health checks.
//! - [`ratelimit`]: per-user and per-IP limits (`governor`).
//! - [`error`]: protocol errors as HTTP responses, and extractors whose rejections use them.
//!
//! The same router serves three roles: the gateway of `chat serve` (REST and WebSockets in
//! process), the gateway of a cluster (REST over the link to app servers, WebSockets spliced
//! to connection servers), and a connection server's own WebSocket endpoint.

pub mod error;
pub mod http;
pub mod placement;
pub mod ratelimit;
pub mod routes;
pub mod ws;

use chat_auth::Tokens;
use chat_conn::ConnServer;
use chat_proto::link::AppApi;
use placement::Placement;
use ratelimit::RateLimits;
use std::sync::Arc;

/// Where WebSockets go after the upgrade.
#[derive(Clone)]
pub enum WsBackend {
    /// A connection server in this process takes the socket.
    Local(Arc<ConnServer>),
    /// The upgrade is forwarded to a connection server chosen by placement, and the bytes
    /// of the upgraded connection are copied both ways without being parsed.
    Splice(Arc<Placement>),
}

/// What every request handler can reach.
#[derive(Clone)]
pub struct Gateway {
    pub app: Arc<dyn AppApi>,
    pub tokens: Tokens,
    pub ws: WsBackend,
    pub limits: Arc<RateLimits>,
}

impl Gateway {
    pub fn new(
        app: Arc<dyn AppApi>,
        tokens: Tokens,
        ws: WsBackend,
        limits: Arc<RateLimits>,
    ) -> Gateway {
        Gateway {
            app,
            tokens,
            ws,
            limits,
        }
    }

    /// Every route of the v1 protocol.
    pub fn router(self) -> axum::Router {
        routes::router(self)
    }

    /// Only the WebSocket endpoint and the health check: a connection server's listener.
    pub fn websocket_router(self) -> axum::Router {
        routes::websocket_router(self)
    }
}
