//! Errors from the store mapped to protocol errors: the one place that decides what a
//! client is told. Internal failures are logged here, once; client errors are not logged.

use chat_proto::{ApiError, ErrorCode};
use chat_store::StoreError;

pub fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::UsernameTaken => ApiError::new(ErrorCode::UsernameTaken, "username is taken"),
        StoreError::UnknownUser(name) => {
            ApiError::new(ErrorCode::UnknownUser, format!("no user `{name}`"))
        }
        StoreError::UnknownConversation => ApiError::unknown_conversation(),
        StoreError::Forbidden(why) => ApiError::new(ErrorCode::Forbidden, why),
        StoreError::NotAllowed(why) => ApiError::bad_request(why),
        other if other.is_retryable() => {
            tracing::warn!(error = %other, "store unavailable");
            ApiError::unavailable("the message store is unavailable; retry")
        }
        // A disk failure: the store stopped accepting writes until it is reopened (it never
        // acknowledges what it could not sync). For the client that is an outage, not a
        // refusal: the same id resent later is stored once (found by the simulator's disk
        // faults, which made clients give up on their messages).
        StoreError::Kv(err @ chat_store::KvError::Io(_)) => {
            tracing::error!(error = %err, "store I/O failure; writes refused until the store is reopened");
            ApiError::unavailable("the message store failed; retry later")
        }
        other => {
            tracing::error!(error = %other, "store failure");
            ApiError::internal("internal error")
        }
    }
}
