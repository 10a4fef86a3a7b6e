//! The WebSocket upgrade.
//!
//! The token is checked before the upgrade (401 otherwise). The handshake is done here by
//! hand rather than with axum's `WebSocketUpgrade`, whose `on_upgrade` spawns on the real
//! tokio; the upgraded socket is then handed to the connection server, and the gateway
//! does nothing more with it.

use crate::Gateway;
use crate::error::{HttpError, QueryParams, error};
use crate::routes::bearer_token;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_conn::ConnServer;
use chat_proto::ErrorCode;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Debug, Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

pub async fn upgrade(State(gw): State<Gateway>, QueryParams(query): QueryParams<WsQuery>, mut request: Request) -> Result<Response, HttpError> {
    let (parts, body) = request.into_parts();
    let token = query.token.as_deref().or_else(|| bearer_token(&parts)).map(str::to_owned);
    request = Request::from_parts(parts, body);
    let token = token.ok_or_else(|| error(ErrorCode::Unauthorized, "missing token"))?;
    let user = gw.tokens.verify(&token).map_err(|_| error(ErrorCode::Unauthorized, "invalid or expired token"))?;

    let headers = request.headers();
    let has_token = |name: header::HeaderName, wanted: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(wanted))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(error(ErrorCode::BadRequest, "expected a WebSocket upgrade request"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(error(ErrorCode::BadRequest, "Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(error(ErrorCode::BadRequest, "missing Sec-WebSocket-Key"));
    };
    let accept = derive_accept_key(key.as_bytes());
    if !gw.conn.has_capacity() {
        return Err(error(ErrorCode::Unavailable, "no connection capacity; retry later"));
    }

    let on_upgrade = hyper::upgrade::on(&mut request);
    let conn = gw.conn.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ConnServer::websocket_config())).await;
                conn.serve(user, ws).await;
            }
            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
        }
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    Ok(response)
}
