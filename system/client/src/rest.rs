//! [`Client`]: the REST calls of the v1 protocol, and the WebSocket upgrade.
//!
//! One TCP connection per request, driven by hyper's HTTP/1 client connection on a task
//! spawned with the `tokio` alias, so the same code runs on real sockets and in the simulator.

use crate::error::{ClientError, error_from_answer};
use crate::io::QuietFlush;
use crate::url::{BaseUrl, encode_query_value};
use crate::ws::WsConnection;
use chat_proto::rest::{
    ConvChanged, ConversationView, CreateConversation, Credentials, HistoryPage, Inbox,
    MemberUpdate, Reads, Session, Settings, SettingsUpdate, TitleUpdate, UserCreated,
};
use chat_proto::{ConvId, Role, Seq};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long one request (connect, send, whole answer) or WebSocket wait may take by default.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// A REST answer larger than this is refused. The largest legitimate answer is a history page
/// of 200 messages of 4 KiB whose bodies JSON may escape up to 6 bytes per byte: about 5 MiB.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A handle on one chat server, optionally logged in. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct Client {
    base: BaseUrl,
    token: Option<String>,
    timeout: Duration,
}

/// A REST answer as received, for contract tests that look at any status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body decoded as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Decode(format!("{e}: {}", self.text())))
    }

    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Ok(self)` for 2xx answers, else the [`ClientError`] the typed calls would return.
    pub fn error_for_status(self) -> Result<RawResponse, ClientError> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(error_from_answer(self.status, &self.body))
        }
    }
}

impl Client {
    /// A client for the server at `base_url` (`http://127.0.0.1:8080`; see [`BaseUrl::parse`]),
    /// without a token and with [`TIMEOUT_DEFAULT`].
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        Ok(Client {
            base: BaseUrl::parse(base_url)?,
            token: None,
            timeout: TIMEOUT_DEFAULT,
        })
    }

    /// The same client, sending `Authorization: Bearer <token>` (and `?token=` on the WebSocket).
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(token.into());
        self
    }

    /// Replaces (or, with `None`, forgets) the token.
    pub fn set_token(&mut self, token: Option<String>) {
        self.token = token;
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The same client with another bound on every network wait.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The bound on every network wait.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server this client talks to.
    pub fn base_url(&self) -> &BaseUrl {
        &self.base
    }

    /// `POST /v1/users`: creates an account. 409 `username_taken`, 400 for a bad username or
    /// password.
    pub async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserCreated, ClientError> {
        let body = Credentials {
            username: username.into(),
            password: password.into(),
        };
        Ok(self
            .call_json(Method::POST, "/v1/users", Some(&body))
            .await?
            .1)
    }

    /// `POST /v1/sessions`: logs in. 401 `invalid_credentials`. Use the returned token with
    /// [`Client::with_token`].
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, ClientError> {
        let body = Credentials {
            username: username.into(),
            password: password.into(),
        };
        Ok(self
            .call_json(Method::POST, "/v1/sessions", Some(&body))
            .await?
            .1)
    }

    /// `POST /v1/conversations`: one other member and no title opens the pair's direct
    /// conversation, anything else creates a group. Returns the conversation and whether this
    /// call created it (201) rather than found it (200).
    pub async fn create_conversation<M: AsRef<str>>(
        &self,
        members: impl IntoIterator<Item = M>,
        title: Option<&str>,
    ) -> Result<(ConversationView, bool), ClientError> {
        let body = CreateConversation {
            members: members.into_iter().map(|m| m.as_ref().to_owned()).collect(),
            title: title.map(str::to_owned),
        };
        let (status, view) = self
            .call_json(Method::POST, "/v1/conversations", Some(&body))
            .await?;
        Ok((view, status == 201))
    }

    /// `GET /v1/conversations/{conv}`: members, owners and title (also for a group the
    /// caller was removed from).
    pub async fn conversation(&self, conv: ConvId) -> Result<ConversationView, ClientError> {
        let path = format!("/v1/conversations/{conv}");
        Ok(self.call_json::<(), _>(Method::GET, &path, None).await?.1)
    }

    /// `PUT /v1/conversations/{conv}/members/{user}`: adds `user` to a group, or gives a
    /// member `role` (owners only). `role` defaults to member.
    pub async fn set_member(
        &self,
        conv: ConvId,
        user: &str,
        role: Option<Role>,
    ) -> Result<ConvChanged, ClientError> {
        let path = format!("/v1/conversations/{conv}/members/{}", path_segment(user)?);
        let body = MemberUpdate { role };
        Ok(self.call_json(Method::PUT, &path, Some(&body)).await?.1)
    }

    /// `DELETE /v1/conversations/{conv}/members/{user}`: removes `user` (owners only), or
    /// leaves when `user` is the caller.
    pub async fn remove_member(
        &self,
        conv: ConvId,
        user: &str,
    ) -> Result<ConvChanged, ClientError> {
        let path = format!("/v1/conversations/{conv}/members/{}", path_segment(user)?);
        Ok(self
            .call_json::<(), _>(Method::DELETE, &path, None)
            .await?
            .1)
    }

    /// `PATCH /v1/conversations/{conv}`: sets or (`None`) removes a group's title.
    pub async fn set_title(
        &self,
        conv: ConvId,
        title: Option<&str>,
    ) -> Result<ConvChanged, ClientError> {
        let path = format!("/v1/conversations/{conv}");
        let body = TitleUpdate {
            title: title.map(str::to_owned),
        };
        Ok(self.call_json(Method::PATCH, &path, Some(&body)).await?.1)
    }

    /// `GET /v1/conversations/{conv}/reads`: the members' read cursors (those who share
    /// them, and the caller's own).
    pub async fn reads(&self, conv: ConvId) -> Result<Reads, ClientError> {
        let path = format!("/v1/conversations/{conv}/reads");
        Ok(self.call_json::<(), _>(Method::GET, &path, None).await?.1)
    }

    /// `GET /v1/settings`.
    pub async fn settings(&self) -> Result<Settings, ClientError> {
        Ok(self
            .call_json::<(), _>(Method::GET, "/v1/settings", None)
            .await?
            .1)
    }

    /// `PATCH /v1/settings`: changes the fields `update` has; answers the settings now.
    pub async fn update_settings(&self, update: &SettingsUpdate) -> Result<Settings, ClientError> {
        Ok(self
            .call_json(Method::PATCH, "/v1/settings", Some(update))
            .await?
            .1)
    }

    /// `GET /v1/conversations/{conv}/messages`: the newest `limit` (default 50, 1-200)
    /// messages with `seq < before`, ascending.
    pub async fn history(
        &self,
        conv: ConvId,
        before: Option<Seq>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ClientError> {
        let mut query = Vec::new();
        if let Some(before) = before {
            query.push(format!("before={before}"));
        }
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        let mut path = format!("/v1/conversations/{conv}/messages");
        if !query.is_empty() {
            path.push('?');
            path.push_str(&query.join("&"));
        }
        Ok(self.call_json::<(), _>(Method::GET, &path, None).await?.1)
    }

    /// `GET /v1/inbox`: the caller's conversations, most recent activity first, with unread
    /// counts; `limit` defaults to 20, 1-100.
    pub async fn inbox(&self, limit: Option<u32>) -> Result<Inbox, ClientError> {
        self.inbox_page(limit, None).await
    }

    /// `GET /v1/inbox?before=`: the page after the one whose `next_before` was `before`.
    pub async fn inbox_page(
        &self,
        limit: Option<u32>,
        before: Option<chat_proto::rest::InboxCursor>,
    ) -> Result<Inbox, ClientError> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(format!("limit={limit}"));
        }
        if let Some(before) = before {
            query.push(format!("before={before}"));
        }
        let path = match query.is_empty() {
            true => "/v1/inbox".to_owned(),
            false => format!("/v1/inbox?{}", query.join("&")),
        };
        Ok(self.call_json::<(), _>(Method::GET, &path, None).await?.1)
    }

    /// Sends any request and returns any answer, for contract tests. Adds `Host`, the token
    /// (unless `headers` has `Authorization`) and `Content-Type: application/json` for a
    /// non-empty body (unless `headers` has `Content-Type`). `headers` replace those defaults.
    pub async fn raw(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<RawResponse, ClientError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Http(format!("bad method `{method}`: {e}")))?;
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(())
            .map_err(|e| {
                ClientError::Http(format!("bad request target `{path_and_query}`: {e}"))
            })?;
        let defaults = request.headers_mut();
        defaults.insert(HOST, header_value(&self.base.authority())?);
        if let Some(token) = &self.token {
            defaults.insert(AUTHORIZATION, header_value(&format!("Bearer {token}"))?);
        }
        if !body.is_empty() {
            defaults.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Http(format!("bad header name `{name}`: {e}")))?;
            request.headers_mut().insert(name, header_value(value)?);
        }
        let (parts, ()) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(Bytes::from(body)));
        self.within("http request", self.send(request)).await?
    }

    /// Upgrades `GET /v1/ws?token=<token>` to a WebSocket. A refused upgrade (401 for a bad or
    /// missing token) is [`ClientError::Api`] (or `UnexpectedStatus`) with the status.
    pub async fn connect_ws(&self) -> Result<WsConnection, ClientError> {
        let path = match &self.token {
            Some(token) => format!("/v1/ws?token={}", encode_query_value(token)),
            None => "/v1/ws".to_owned(),
        };
        self.connect_ws_with(&path, &[]).await
    }

    /// Upgrades any path to a WebSocket with extra headers (they replace the handshake's own),
    /// for contract tests: e.g. the token in `Authorization` instead of the query.
    pub async fn connect_ws_with(
        &self,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsConnection, ClientError> {
        let stream = self.within("connect", self.connect()).await??;
        WsConnection::handshake(stream, &self.base, path_and_query, headers, self.timeout).await
    }

    /// Opens a TCP connection to the server (not under the timeout; callers bound it).
    pub(crate) async fn connect(&self) -> Result<TcpStream, ClientError> {
        let stream = match self.base.ip() {
            Some(ip) => TcpStream::connect(std::net::SocketAddr::new(ip, self.base.port)).await?,
            None => TcpStream::connect((self.base.host.as_str(), self.base.port)).await?,
        };
        // Frames are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A JSON call: the decoded 2xx body and its status, or the error the server answered.
    async fn call_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(u16, T), ClientError> {
        let body = match body {
            Some(body) => serde_json::to_vec(body)
                .map_err(|e| ClientError::Http(format!("cannot encode request: {e}")))?,
            None => Vec::new(),
        };
        let response = self
            .raw(method.as_str(), path, &[], body)
            .await?
            .error_for_status()?;
        let value = response.json()?;
        Ok((response.status, value))
    }

    /// One request on a fresh connection.
    async fn send(&self, request: Request<Full<Bytes>>) -> Result<RawResponse, ClientError> {
        let stream = self.connect().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(QuietFlush::new(stream)))
                .await
                .map_err(|e| ClientError::Http(error_chain(&e)))?;
        // The driver ends by itself once `sender` is dropped after the answer; aborting it on
        // drop also ends it when this request times out (a partition raises no TCP error).
        let _driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        }));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| ClientError::Http(format!("reading the answer: {}", error_chain(&*e))))?
            .to_bytes();
        Ok(RawResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.to_vec(),
        })
    }

    async fn within<T>(
        &self,
        op: &'static str,
        future: impl Future<Output = T>,
    ) -> Result<T, ClientError> {
        tokio::time::timeout(self.timeout, future)
            .await
            .map_err(|_| ClientError::Timeout {
                op,
                after: self.timeout,
            })
    }
}

/// An error and its sources, `outer: inner: innermost`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn header_value(value: &str) -> Result<HeaderValue, ClientError> {
    HeaderValue::from_str(value).map_err(|e| ClientError::Http(format!("bad header value: {e}")))
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A username as a path segment: usernames need no escaping, so anything else is refused
/// here rather than sent somewhere unexpected.
fn path_segment(user: &str) -> Result<&str, ClientError> {
    if !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(user)
    } else {
        Err(ClientError::Http(format!("`{user}` is not a username")))
    }
}
