//! The REST routes of the v1 protocol (see docs/protocol.md).

use crate::Gateway;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chat_net::error::{
    ConvPath, HttpError, JsonBody, MemberPath, QueryParams, error, with_fallbacks,
};
use chat_net::http::PeerAddr;
use chat_net::websocket::bearer_token;
use chat_proto::api::{AppApiExt, ConvChange};
use chat_proto::rest::{
    CreateConversation, Credentials, HistoryQuery, InboxQuery, MemberUpdate, SettingsUpdate,
    TitleUpdate,
};
use chat_proto::{ApiError, ErrorCode, Role};

pub fn router(gateway: Gateway) -> Router {
    with_fallbacks(
        Router::new()
            .route("/", get(index))
            .route("/favicon.ico", get(favicon))
            .route("/healthz", get(|| async { "ok" }))
            .route("/v1/users", post(register))
            .route("/v1/sessions", post(login))
            .route("/v1/conversations", post(create_conversation))
            .route(
                "/v1/conversations/{conv_id}",
                get(conversation).patch(set_title),
            )
            .route(
                "/v1/conversations/{conv_id}/members/{user}",
                put(set_member).delete(remove_member),
            )
            .route("/v1/conversations/{conv_id}/messages", get(history))
            .route("/v1/conversations/{conv_id}/reads", get(reads))
            .route("/v1/settings", get(settings).patch(update_settings))
            .route("/v1/inbox", get(inbox))
            .route("/v1/ws", get(crate::ws::upgrade)),
    )
    .with_state(gateway)
}

/// The authenticated caller of a REST route: a valid `Authorization: Bearer` token, within
/// the caller's rate limit.
pub struct Caller(pub String);

impl FromRequestParts<Gateway> for Caller {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Gateway,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| error(ErrorCode::Unauthorized, "missing bearer token"))?;
        let user = gateway
            .tokens
            .verify(token)
            .map_err(|_| error(ErrorCode::Unauthorized, "invalid or expired token"))?;
        gateway.limits.check_user(&user).map_err(rate_limited)?;
        Ok(Caller(user))
    }
}

/// A registration or login, within its client address's limits (every request's, and the
/// stricter one of requests that cost a password hash).
pub struct CredentialsWithinLimit;

impl FromRequestParts<Gateway> for CredentialsWithinLimit {
    type Rejection = HttpError;

    async fn from_request_parts(
        parts: &mut Parts,
        gateway: &Gateway,
    ) -> Result<Self, Self::Rejection> {
        if let Some(PeerAddr(peer)) = parts.extensions.get::<PeerAddr>() {
            gateway.limits.check_ip(peer.ip()).map_err(rate_limited)?;
            gateway
                .limits
                .check_credentials(peer.ip())
                .map_err(rate_limited)?;
        }
        Ok(CredentialsWithinLimit)
    }
}

/// 429 with the wait (`retry_after_ms`, and `Retry-After` in whole seconds rounded up).
pub fn rate_limited(wait: std::time::Duration) -> HttpError {
    ApiError::new(ErrorCode::RateLimited, "too many requests; retry later")
        .retry_after(wait)
        .into()
}

async fn index() -> Html<&'static str> {
    Html(include_str!("../assets/index.html"))
}

/// A speech bubble, so browsers asking for an icon get one (not a 404 in every log).
async fn favicon() -> Response {
    const ICON: &str = concat!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">"##,
        r##"<path fill="#2f6fde" d="M4 6h24v15H13l-6 5v-5H4z"/></svg>"##
    );
    (
        [
            (axum::http::header::CONTENT_TYPE, "image/svg+xml"),
            (axum::http::header::CACHE_CONTROL, "max-age=86400"),
        ],
        ICON,
    )
        .into_response()
}

async fn register(
    State(gw): State<Gateway>,
    _: CredentialsWithinLimit,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Response, HttpError> {
    let created = gw.app.register(body).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn login(
    State(gw): State<Gateway>,
    _: CredentialsWithinLimit,
    JsonBody(body): JsonBody<Credentials>,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.login(body).await?).into_response())
}

async fn create_conversation(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateConversation>,
) -> Result<Response, HttpError> {
    let (conversation, created) = gw.app.create_conversation(&caller, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(conversation)).into_response())
}

async fn history(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    ConvPath(conv): ConvPath,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.history(&caller, conv, query).await?).into_response())
}

async fn inbox(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    QueryParams(query): QueryParams<InboxQuery>,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.inbox(&caller, query).await?).into_response())
}

async fn conversation(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    ConvPath(conv): ConvPath,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.conversation(&caller, conv).await?).into_response())
}

async fn set_title(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    ConvPath(conv): ConvPath,
    JsonBody(body): JsonBody<TitleUpdate>,
) -> Result<Response, HttpError> {
    let change = ConvChange::SetTitle { title: body.title };
    Ok(Json(gw.app.change(&caller, conv, change).await?).into_response())
}

/// `{}` adds a member; `{"role": "owner"}` adds an owner or makes a member one.
async fn set_member(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    MemberPath(conv, user): MemberPath,
    JsonBody(body): JsonBody<MemberUpdate>,
) -> Result<Response, HttpError> {
    let role = body.role.unwrap_or(Role::Member);
    let change = ConvChange::SetMember { user, role };
    Ok(Json(gw.app.change(&caller, conv, change).await?).into_response())
}

async fn remove_member(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    MemberPath(conv, user): MemberPath,
) -> Result<Response, HttpError> {
    let change = ConvChange::RemoveMember { user };
    Ok(Json(gw.app.change(&caller, conv, change).await?).into_response())
}

async fn reads(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    ConvPath(conv): ConvPath,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.reads(&caller, conv).await?).into_response())
}

async fn settings(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.settings(&caller, None).await?).into_response())
}

async fn update_settings(
    State(gw): State<Gateway>,
    Caller(caller): Caller,
    JsonBody(update): JsonBody<SettingsUpdate>,
) -> Result<Response, HttpError> {
    Ok(Json(gw.app.settings(&caller, Some(update)).await?).into_response())
}
