//! The one accept loop.
//!
//! A permit is taken before each accept, so at most `connections_max` connections are served
//! at once; beyond, the loop waits for one to close (the kernel's backlog holds the rest).
//! Accept errors (usually out of file descriptors) back off from 10 ms to 1 s instead of
//! spinning or exiting.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where an accept loop gets its connections: a TCP listener. The simulator wraps one to
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
        // Small frames both ways: waiting to coalesce them only adds latency.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// Accepts connections forever and hands each to `serve` with its permit, which the
/// connection's task holds until it ends.
pub async fn accept_loop<L: Listener>(
    mut listener: L,
    connections_max: usize,
    mut serve: impl FnMut(L::Io, SocketAddr, OwnedSemaphorePermit),
) {
    let permits = Arc::new(Semaphore::new(connections_max));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((io, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                serve(io, peer, permit);
            }
            Err(err) => {
                tracing::warn!(error = %err, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener that fails `failures` times, then hands out connected pairs.
    struct Flaky {
        failures: usize,
        attempts: Arc<AtomicUsize>,
    }

    impl Listener for Flaky {
        type Io = tokio::io::DuplexStream;

        async fn accept(&mut self) -> std::io::Result<(Self::Io, SocketAddr)> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if self.failures > 0 {
                self.failures -= 1;
                return Err(std::io::Error::other("too many open files"));
            }
            let (io, _other_end) = tokio::io::duplex(64);
            Ok((io, "127.0.0.1:1".parse().expect("address")))
        }
    }

    /// Waits (a bounded while) until `done` holds.
    async fn eventually(done: impl Fn() -> bool) {
        for _ in 0..1000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("not reached in 5 s");
    }

    /// Errors back off and do not stop the loop; no more than `connections_max` are served
    /// at once: the loop waits for a permit before it accepts again.
    #[tokio::test]
    async fn errors_do_not_stop_the_loop_and_the_limit_holds() {
        let attempts = Arc::new(AtomicUsize::new(0));
        let listener = Flaky {
            failures: 3,
            attempts: attempts.clone(),
        };
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let served = held.clone();
        let task = tokio::spawn(accept_loop(listener, 2, move |_io, _peer, permit| {
            served.lock().expect("lock").push(permit);
        }));
        let count = || held.lock().expect("lock").len();
        eventually(|| count() == 2).await;
        // Three failures, then two connections; the third accept waits for a permit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            5,
            "no accept without a permit"
        );
        held.lock().expect("lock").pop();
        eventually(|| count() == 2).await;
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            6,
            "a freed permit admits one more"
        );
        task.abort();
    }
}
