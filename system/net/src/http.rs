//! HTTP/1 serving of an axum router, on the runtime alias.
//!
//! `axum::serve` and hyper-util's executor and timer call the real tokio and panic under
//! madsim, so connections come from [`crate::accept::accept_loop`] and each is driven by
//! hyper's http1 builder, which needs neither an executor nor (with [`AliasTimer`]) a real
//! timer.

use crate::accept::{Listener, accept_loop};
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
    /// A client must send a request's headers within this long.
    pub header_read_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connections_max: 10_000,
            header_read_timeout: Duration::from_secs(10),
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
    let header_read_timeout = config.header_read_timeout;
    let accepting = accept_loop(listener, config.connections_max, |stream, peer, permit| {
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    // For per-IP rate limits and logs.
                    request.extensions_mut().insert(PeerAddr(peer));
                    router.clone().oneshot(request)
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
