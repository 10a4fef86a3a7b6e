//! The HTTP accept loop.
//!
//! `axum::serve` and hyper-util's executor and timer call the real tokio and panic under
//! madsim, so this loop accepts on the runtime alias and drives each connection with hyper's
//! http1 builder, which needs neither an executor nor (with [`AliasTimer`]) a real timer.

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    /// A write to a client of a spliced WebSocket (a gateway's) gives up after this long:
    /// a client that stops reading cannot hold the connection, or the server's, forever.
    pub write_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connections_max: 10_000,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the accept loop gets its connections: a TCP listener. The simulator wraps one to
/// give its sockets a bounded send window, which madsim's never fill (so a client that
/// stops reading can block the server's writes there as it does on a real network).
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    mut listener: impl Listener,
    router: axum::Router,
    config: HttpConfig,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let accept_loop = async {
        let mut backoff = Duration::from_millis(10);
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => {
                    backoff = Duration::from_millis(10);
                    accepted
                }
                Err(err) => {
                    // Usually out of file descriptors: wait for connections to close, do not exit.
                    tracing::warn!(error = %err, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let router = router.clone();
            let header_read_timeout = config.header_read_timeout;
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
        }
    };
    tokio::select! {
        _ = accept_loop => {}
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
