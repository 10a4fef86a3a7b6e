//! The API gateway: authenticates, serves REST, and upgrades WebSockets onto a connection
//! server, after which it is out of the frame path.
//!
//! # Layout
//! - [`http`]: the accept loop (ours, not `axum::serve`, so it runs under madsim) and the
//!   hyper timer on the runtime alias.
//! - [`routes`]: the REST routes of the v1 protocol and the browser page.
//! - [`ws`]: the WebSocket upgrade: token check, handshake, hand-off to the connection server.
//! - [`error`]: protocol errors as HTTP responses, and extractors whose rejections use them.

pub mod error;
pub mod http;
pub mod routes;
pub mod ws;

use chat_auth::Tokens;
use chat_conn::ConnServer;
use chat_proto::link::AppApi;
use std::sync::Arc;

/// What every request handler can reach.
#[derive(Clone)]
pub struct Gateway {
    pub app: Arc<dyn AppApi>,
    pub tokens: Tokens,
    pub conn: Arc<ConnServer>,
}

impl Gateway {
    pub fn new(app: Arc<dyn AppApi>, tokens: Tokens, conn: Arc<ConnServer>) -> Gateway {
        Gateway { app, tokens, conn }
    }

    /// The axum router with every route of the v1 protocol.
    pub fn router(self) -> axum::Router {
        routes::router(self)
    }
}
