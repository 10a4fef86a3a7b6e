//! Protocol errors as HTTP responses, in one place: `{"error":{"code","message"}}` with the
//! code's status. Extractor rejections (bad JSON, bad query, oversized body) come out the
//! same way instead of axum's plain-text defaults.

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use chat_proto::error::ErrorBody;
use chat_proto::limits::REST_BODY_BYTES_MAX;
use chat_proto::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;

/// An [`ApiError`] on its way to becoming a response.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(err: ApiError) -> Self {
        HttpError(err)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        // Whoever may retry learns when, in whole seconds rounded up: the error's own wait,
        // else a second for an overloaded server.
        let retry_after = match self.0.retry_after_ms {
            Some(ms) => Some(ms.div_ceil(1000).max(1)),
            None => (self.0.code == ErrorCode::Overloaded).then_some(1),
        };
        let mut response = (status, axum::Json(ErrorBody { error: self.0 })).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> HttpError {
    HttpError(ApiError::new(code, message))
}

/// A JSON body. Unlike axum's `Json`, it does not insist on a `Content-Type`, and every
/// failure is a protocol error: 413 over the body limit, 400 otherwise.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection: BytesRejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    error(
                        ErrorCode::PayloadTooLarge,
                        format!("body over {REST_BODY_BYTES_MAX} bytes"),
                    )
                } else {
                    error(ErrorCode::BadRequest, rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Err(error(ErrorCode::BadRequest, "missing JSON body"));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| error(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
    }
}

/// Query parameters; a malformed query is a 400.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|rejection: QueryRejection| {
                error(ErrorCode::BadRequest, rejection.body_text())
            })
    }
}

/// A conversation id from the path; one that is not a number names no conversation.
pub struct ConvPath(pub chat_proto::ConvId);

impl<S: Send + Sync> FromRequestParts<S> for ConvPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<chat_proto::ConvId>::from_request_parts(parts, state)
            .await
            .map(|p| ConvPath(p.0))
            .map_err(|_: PathRejection| HttpError::from(ApiError::unknown_conversation()))
    }
}

/// `/v1/conversations/{conv_id}/members/{user}`: a conversation id and a username.
pub struct MemberPath(pub chat_proto::ConvId, pub String);

impl<S: Send + Sync> FromRequestParts<S> for MemberPath {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<(chat_proto::ConvId, String)>::from_request_parts(parts, state)
            .await
            .map(|p| MemberPath(p.0.0, p.0.1))
            .map_err(|_: PathRejection| HttpError::from(ApiError::unknown_conversation()))
    }
}

/// The fallbacks every router of ours shares: 404 and 405 as protocol errors, and the REST
/// body limit.
pub fn with_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { error(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            let mut response =
                error(ErrorCode::BadRequest, "method not allowed on this route").into_response();
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
        })
        .layer(DefaultBodyLimit::max(REST_BODY_BYTES_MAX))
}
