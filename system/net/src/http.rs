//! HTTP/1 serving of an axum router, on the runtime alias.
//!
//! `axum::serve` and hyper-util's executor and timer call the real tokio and panic under
//! madsim, so connections come from [`crate::accept::accept_loop`] and each is driven by
//! hyper's http1 builder, which needs neither an executor nor (with [`AliasTimer`]) a real
//! timer.

use crate::accept::{ConnectionLimits, Listener, accept_loop};
use crate::error::error;
use crate::proxy::TrustedProxies;
use axum::response::IntoResponse;
use chat_proto::ErrorCode;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// The client's socket address, in every request's extensions (axum's `ConnectInfo` needs
/// its tokio feature, which this crate does without).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// HTTP connections served at once (upgraded WebSockets are bounded by the connection server).
    pub connections_max: usize,
    /// Connections from one IP address at once (`None`: no such bound, for a listener whose
    /// clients are a few known processes). Behind a proxy every client has its address.
    pub connections_per_address_max: Option<usize>,
    /// A client must send a request's headers within this long.
    pub header_read_timeout: Duration,
    /// A whole request (headers, body, and the answer) must be done within this long, or it is
    /// answered 408: a client that trickles a body cannot hold a connection for ever.
    pub request_timeout: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for per-address limits and
    /// logs), and whose connections are not bounded per address. None by default.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connections_max: 10_000,
            connections_per_address_max: Some(1024),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: impl Listener,
    router: axum::Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let (header_read_timeout, request_timeout) =
        (config.header_read_timeout, config.request_timeout);
    let limits = ConnectionLimits {
        total_max: config.connections_max,
        per_address_max: config.connections_per_address_max,
        exempt: config.trusted_proxies.clone(),
    };
    let trusted = config.trusted_proxies;
    let accepting = accept_loop(listener, limits, |stream, peer, permit| {
        let router = router.clone();
        let trusted = trusted.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    // For per-address rate limits and logs: the client, behind a trusted proxy.
                    let client = trusted.client(peer.ip(), request.headers());
                    let port = if client == peer.ip() { peer.port() } else { 0 };
                    request
                        .extensions_mut()
                        .insert(PeerAddr(std::net::SocketAddr::new(client, port)));
                    let answer = router.clone().oneshot(request);
                    async move {
                        match tokio::time::timeout(request_timeout, answer).await {
                            Ok(answered) => answered,
                            Err(_) => Ok(too_slow()),
                        }
                    }
                },
            );
            let served = hyper::server::conn::http1::Builder::new()
                .timer(AliasTimer)
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "http connection ended with an error");
            }
            drop(permit);
        });
    });
    tokio::select! {
        _ = accepting => {}
        _ = shutdown => {}
    }
}

/// The answer to a request not done within the request timeout: 408, and hyper closes the
/// connection (its body was not read to the end).
fn too_slow() -> axum::response::Response {
    let mut response =
        error(ErrorCode::BadRequest, "the request took too long to arrive").into_response();
    *response.status_mut() = axum::http::StatusCode::REQUEST_TIMEOUT;
    response
}

/// hyper's timer on the runtime alias, so header timeouts run on simulated time under madsim.
#[derive(Debug, Clone, Copy)]
pub struct AliasTimer;

struct AliasSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for AliasSleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Sleep for AliasSleep {}

impl Timer for AliasTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(AliasSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(AliasSleep(Box::pin(tokio::time::sleep_until(
            deadline.into(),
        ))))
    }
}
