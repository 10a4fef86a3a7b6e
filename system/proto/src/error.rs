//! Error codes shared by REST (`{"error":{"code","message"}}`) and WebSocket `error` frames.

use serde::{Deserialize, Serialize};

/// A snake_case error code of the v1 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// REST: malformed or invalid request (400).
    BadRequest,
    /// REST: body over [`crate::limits::REST_BODY_BYTES_MAX`] (413).
    PayloadTooLarge,
    /// Missing, forged or expired token (401).
    Unauthorized,
    /// Wrong username or password (401).
    InvalidCredentials,
    /// Registration of a taken username (409).
    UsernameTaken,
    /// WS: a message id the sender already used in another conversation (ids are the
    /// sender's, across conversations); send again with a new id.
    IdConflict,
    /// A member named in a new conversation does not exist (404).
    UnknownUser,
    /// The conversation does not exist or the caller is not a member (404 / WS error).
    UnknownConversation,
    /// A member asked for what only an owner may do (403).
    Forbidden,
    /// No such route (404).
    NotFound,
    /// WS: not JSON, binary, unknown type, missing fields, bad id.
    BadFrame,
    /// WS: body over [`crate::limits::BODY_BYTES_MAX`].
    BodyTooLarge,
    /// Too many requests in flight; retry later (503 / WS error).
    Overloaded,
    /// Over the caller's rate limit; retry after the `Retry-After` seconds (429).
    RateLimited,
    /// A dependency (store, registry, peer) is unavailable; retrying the same request is safe
    /// (503).
    Unavailable,
    /// A bug or unexpected failure (500).
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::IdConflict => "id_conflict",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownConversation => "unknown_conversation",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status a REST answer with this code carries.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadFrame | ErrorCode::BodyTooLarge => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unauthorized | ErrorCode::InvalidCredentials => 401,
            ErrorCode::UsernameTaken | ErrorCode::IdConflict => 409,
            ErrorCode::UnknownUser | ErrorCode::UnknownConversation | ErrorCode::NotFound => 404,
            ErrorCode::Forbidden => 403,
            ErrorCode::RateLimited => 429,
            ErrorCode::Overloaded | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded | ErrorCode::RateLimited | ErrorCode::Unavailable
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client: a code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// For `rate_limited` and `overloaded`: how long to wait before sending the request
    /// again (REST also says it in `Retry-After`, in whole seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
    /// With the wait before a retry (see [`retry_after_ms`]).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(retry_after_ms(wait));
        self
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn unknown_conversation() -> Self {
        // Same text for "does not exist" and "not a member", so membership does not leak.
        Self::new(ErrorCode::UnknownConversation, "no such conversation")
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// A wait before a retry as the protocol says it: whole milliseconds rounded up, at least 1,
/// so a client that waits exactly that long is not refused again for a fraction of one.
pub fn retry_after_ms(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The REST error body: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}
