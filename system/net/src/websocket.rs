//! The server side of the WebSocket handshake, by hand: axum's `WebSocketUpgrade` spawns on
//! the real tokio, which panics under madsim.
//!
//! [`accept`] answers a checked upgrade request with 101 and hands the upgraded socket, as a
//! [`WebSocketStream`], to a task on the runtime alias. The gateway's splice uses
//! [`check_handshake`] and [`switching_protocols`] to forward an upgrade instead.

use crate::error::{HttpError, error};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat_proto::ErrorCode;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::future::Future;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// An accepted WebSocket, over the upgraded HTTP connection.
pub type ServerSocket = WebSocketStream<TokioIo<Upgraded>>;

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The session token of an upgrade request: `?token=` (a browser cannot set headers on a
/// WebSocket) or else `Authorization: Bearer`.
pub fn token(request: &Request) -> Option<String> {
    let from_query = axum::extract::Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.token);
    from_query.or_else(|| bearer_token(request.headers()).map(str::to_owned))
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the upgrade headers; returns the client's `Sec-WebSocket-Key`.
pub fn check_handshake(headers: &HeaderMap) -> Result<String, HttpError> {
    let has_token = |name: header::HeaderName, wanted: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(wanted))
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(error(
            ErrorCode::BadRequest,
            "expected a WebSocket upgrade request",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(error(
            ErrorCode::BadRequest,
            "Sec-WebSocket-Version must be 13",
        ));
    }
    headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| error(ErrorCode::BadRequest, "missing Sec-WebSocket-Key"))
}

/// The 101 answer, with `accept` as `Sec-WebSocket-Accept`.
pub fn switching_protocols(accept: &str) -> Response {
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Accepts the upgrade `request` asks for: answers 101 now, and once the client's side of the
/// upgrade completes, runs `on_socket` with the WebSocket in a task of its own.
pub fn accept<F, Fut>(
    request: &mut Request,
    config: WebSocketConfig,
    on_socket: F,
) -> Result<Response, HttpError>
where
    F: FnOnce(ServerSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let key = check_handshake(request.headers())?;
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                on_socket(ws).await;
            }
            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
        }
    });
    Ok(switching_protocols(&derive_accept_key(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(headers: &[(&str, &str)], uri: &str) -> Request {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(axum::body::Body::empty()).expect("request")
    }

    const VALID: [(&str, &str); 4] = [
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_valid_handshake_gives_its_key_and_bad_ones_a_clear_400() {
        let ok = upgrade(&VALID, "/v1/ws");
        assert_eq!(
            check_handshake(ok.headers()).expect("valid"),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        for (drop, missing) in VALID.iter().enumerate() {
            let headers: Vec<_> = VALID
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != drop)
                .map(|(_, h)| *h)
                .collect();
            let err = check_handshake(upgrade(&headers, "/").headers()).expect_err("invalid");
            assert_eq!(err.0.code, ErrorCode::BadRequest, "without {missing:?}");
        }
        let old = [VALID[0], VALID[1], ("sec-websocket-version", "8"), VALID[3]];
        assert!(check_handshake(upgrade(&old, "/").headers()).is_err());
    }

    #[test]
    fn the_token_comes_from_the_query_or_the_bearer_header() {
        assert_eq!(
            token(&upgrade(&[], "/v1/ws?token=abc")).as_deref(),
            Some("abc")
        );
        let bearer = [("authorization", "Bearer xyz")];
        assert_eq!(token(&upgrade(&bearer, "/v1/ws")).as_deref(), Some("xyz"));
        assert_eq!(
            token(&upgrade(&[("authorization", "Basic xyz")], "/v1/ws")),
            None
        );
        assert_eq!(token(&upgrade(&[], "/v1/ws?other=1")), None);
    }
}
