//! The API gateway: authenticates, rate-limits, serves REST, and places WebSockets on a
//! connection server, after which it does no frame processing.
//!
//! # Layout
//! - [`routes`]: the REST routes of the v1 protocol and the browser page.
//! - [`ws`]: the WebSocket upgrade: token check and rate limits, then either a connection
//!   server in this process takes the socket, or the bytes are spliced to a remote one.
//! - [`placement`]: sticky placement of users on connection servers, with health checks.
//! - [`ratelimit`]: per-user and per-IP limits (`governor`).
//!
//! Serving (the accept loop, HTTP, the handshake, errors as responses) is `chat_net`'s. The
//! same router serves two roles: the gateway of `chat serve` (REST and WebSockets in
//! process) and the gateway of a cluster (REST over the link to app servers, WebSockets
//! spliced to connection servers).

pub mod placement;
pub mod ratelimit;
pub mod routes;
pub mod ws;

use chat_auth::Tokens;
use chat_conn::ConnServer;
use chat_proto::api::AppApi;
use placement::Placement;
use ratelimit::RateLimits;
use std::sync::Arc;
use std::time::Duration;

/// Where WebSockets go after the upgrade.
#[derive(Clone)]
pub enum WsBackend {
    /// A connection server in this process takes the socket.
    Local(Arc<ConnServer>),
    /// The upgrade is forwarded to a connection server chosen by placement, and the bytes
    /// of the upgraded connection are copied both ways without being parsed.
    Splice(Arc<Placement>, SpliceConfig),
}

/// Bounds of a spliced WebSocket.
#[derive(Debug, Clone)]
pub struct SpliceConfig {
    /// Connecting to a connection server, and its answer to the forwarded upgrade, give up
    /// after this long (the next candidate is tried).
    pub connect_timeout: Duration,
    /// A write of a spliced connection, either way, gives up after this long: a client (or
    /// server) that stops reading cannot hold the connection, or the server's, forever.
    pub write_timeout: Duration,
}

impl Default for SpliceConfig {
    fn default() -> Self {
        SpliceConfig {
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
        }
    }
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
}
