//! Errors from the store mapped to protocol errors: the one place that decides what a
//! client is told. Internal failures are logged here, once; client errors are not logged.

use chat_proto::{ApiError, ErrorCode};
use chat_store::StoreError;

pub fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::UsernameTaken => ApiError::new(ErrorCode::UsernameTaken, "username is taken"),
        StoreError::UnknownUser(name) => ApiError::new(ErrorCode::UnknownUser, format!("no user `{name}`")),
        StoreError::UnknownConversation => ApiError::unknown_conversation(),
        other if other.is_retryable() => {
            tracing::warn!(error = %other, "store unavailable");
            ApiError::unavailable("the message store is unavailable; retry")
        }
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::internal("internal error")
        }
    }
}
