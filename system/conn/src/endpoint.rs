//! A connection server's own HTTP listener: `/v1/ws` and `/healthz`, where gateways splice
//! WebSockets to.
//!
//! The token is checked here again: this listener is reachable by whoever can reach the
//! gateway's network, and a forged upgrade must not become a session. Rate limits are the
//! gateway's job.

use crate::ConnServer;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use chat_auth::{Tokens, Verified};
use chat_net::error::{HttpError, error, with_fallbacks};
use chat_proto::ErrorCode;
use std::sync::Arc;

/// The session and token of an upgrade request: 401 without a valid token. The gateway
/// calls this too, so the two checks cannot drift apart.
pub fn authenticate(tokens: &Tokens, request: &Request) -> Result<(Verified, String), HttpError> {
    let token = chat_net::websocket::token(request)
        .ok_or_else(|| error(ErrorCode::Unauthorized, "missing token"))?;
    let session = tokens
        .verify_session(&token)
        .map_err(|_| error(ErrorCode::Unauthorized, "invalid or expired token"))?;
    Ok((session, token))
}

#[derive(Clone)]
struct Endpoint {
    conn: Arc<ConnServer>,
    tokens: Tokens,
}

/// The connection server's routes.
pub fn router(conn: Arc<ConnServer>, tokens: Tokens) -> Router {
    with_fallbacks(
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/ws", get(upgrade)),
    )
    .with_state(Endpoint { conn, tokens })
}

async fn upgrade(
    State(endpoint): State<Endpoint>,
    mut request: Request,
) -> Result<Response, HttpError> {
    let (session, _token) = authenticate(&endpoint.tokens, &request)?;
    endpoint.conn.upgrade(session, &mut request)
}
