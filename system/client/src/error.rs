//! The one error type of the client library.

use chat_proto::{ApiError, ErrorCode};
use std::time::Duration;

/// Everything that can go wrong talking to a chat server.
///
/// Whatever the server sends, the client answers with one of these, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to [`crate::Client::new`] cannot be used.
    #[error("invalid server URL: {0}")]
    InvalidUrl(String),
    /// A non-2xx REST answer (or a non-101 answer to a WebSocket upgrade) carrying the
    /// protocol's JSON error body `{"error":{"code","message"}}`.
    #[error("server answered {status}: {error}")]
    Api { status: u16, error: ApiError },
    /// A non-2xx (or non-101) answer whose body is not the protocol's error body.
    #[error("server answered {status}: {body}")]
    UnexpectedStatus { status: u16, body: String },
    /// An HTTP-level failure: malformed response, connection closed mid-request, bad request
    /// built by the caller (e.g. an invalid method or header in [`crate::Client::raw`]).
    #[error("http: {0}")]
    Http(String),
    /// A WebSocket protocol failure (not a clean close).
    #[error("websocket: {0}")]
    WebSocket(String),
    /// Connecting, reading or writing the socket failed. (Shown in the message, not chained
    /// as a source, so error reports do not repeat it.)
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The server did not answer within the client's timeout.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The server sent something that is not what the protocol promises.
    #[error("cannot decode server data: {0}")]
    Decode(String),
    /// The WebSocket is closed; `code` is the close code the server sent, if any
    /// (1009: a frame over 64 KiB; 1013: the connection could not keep up; try again later).
    #[error("websocket closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The HTTP status of a rejected REST call or WebSocket upgrade.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The protocol error code of a rejected REST call or WebSocket upgrade.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// How long the server asked to wait before the request is sent again (`rate_limited`,
    /// `overloaded`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Api { error, .. } => {
                error.retry_after_ms.map(std::time::Duration::from_millis)
            }
            _ => None,
        }
    }

    /// Whether sending the same request again later may succeed: transport failures,
    /// timeouts, closed sockets and the protocol's retryable codes (`overloaded`,
    /// `unavailable`). Resending a WebSocket `send` with the same id is always safe; a
    /// retried REST call that creates a group may create a second one.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Timeout { .. } | ClientError::Closed { .. } => true,
            ClientError::Http(_) | ClientError::WebSocket(_) => true,
            ClientError::Api { error, .. } => error.code.is_retryable(),
            ClientError::UnexpectedStatus { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ClientError::InvalidUrl(_) | ClientError::Decode(_) => false,
        }
    }
}

/// Bytes of a non-JSON error body kept in [`ClientError::UnexpectedStatus`].
const UNEXPECTED_BODY_CHARS_MAX: usize = 512;

/// Turns a rejected answer into an error: the protocol's error body when it parses,
/// else the status with (the start of) the body as text.
pub(crate) fn error_from_answer(status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<chat_proto::error::ErrorBody>(body) {
        Ok(parsed) => ClientError::Api {
            status,
            error: parsed.error,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .take(UNEXPECTED_BODY_CHARS_MAX)
                .collect();
            ClientError::UnexpectedStatus { status, body: text }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_protocol_error_body() {
        let err = error_from_answer(
            409,
            br#"{"error":{"code":"username_taken","message":"taken"}}"#,
        );
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.code(), Some(ErrorCode::UsernameTaken));
        assert!(!err.is_retryable());
        match err {
            ClientError::Api { error, .. } => assert_eq!(error.message, "taken"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn retryable_codes_are_retryable() {
        let err = error_from_answer(
            503,
            br#"{"error":{"code":"unavailable","message":"store down"}}"#,
        );
        assert!(err.is_retryable());
    }

    #[test]
    fn keeps_status_of_other_bodies() {
        for body in [
            &b""[..],
            b"<html>oops</html>",
            b"{\"error\":\"nope\"}",
            b"\xff\xfe",
            br#"{"error":{"code":"made_up","message":"x"}}"#,
        ] {
            let err = error_from_answer(502, body);
            assert!(
                matches!(err, ClientError::UnexpectedStatus { status: 502, .. }),
                "{err:?}"
            );
            assert_eq!(err.code(), None);
            assert!(err.is_retryable());
        }
        let long = vec![b'x'; 10_000];
        match error_from_answer(500, &long) {
            ClientError::UnexpectedStatus { body, .. } => {
                assert_eq!(body.len(), UNEXPECTED_BODY_CHARS_MAX)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
