//! The one accept loop.
//!
//! A permit is taken before each accept, so at most `connections_max` connections are served
//! at once; beyond, the loop waits for one to close (the kernel's backlog holds the rest).
//! Accept errors (usually out of file descriptors) back off from 10 ms to 1 s instead of
//! spinning or exiting.

use crate::proxy::TrustedProxies;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
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

/// How many connections an accept loop serves at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In all; beyond, the loop waits for one to close (the kernel's backlog holds the rest).
    pub total_max: usize,
    /// From one IP address; beyond, a new one is closed at once, so one address cannot hold
    /// every permit (and stop the loop for everyone). `None` where the peers are a few known
    /// processes (a connection server's gateways, an app server's link peers).
    pub per_address_max: Option<usize>,
    /// Addresses exempt from `per_address_max`: trusted proxies, whose connections carry
    /// every client behind them.
    pub exempt: TrustedProxies,
}

/// A served connection's place in the limits, given back when dropped.
pub struct Permit {
    _total: OwnedSemaphorePermit,
    _address: Option<AddressPermit>,
}

/// Connections open per address.
type AddressCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

struct AddressPermit {
    counts: AddressCounts,
    ip: IpAddr,
}

impl AddressPermit {
    fn take(counts: &AddressCounts, ip: IpAddr, max: usize) -> Option<AddressPermit> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections forever and hands each to `serve` with its permit, which the
/// connection's task holds until it ends.
pub async fn accept_loop<L: Listener>(
    mut listener: L,
    limits: ConnectionLimits,
    mut serve: impl FnMut(L::Io, SocketAddr, Permit),
) {
    let permits = Arc::new(Semaphore::new(limits.total_max));
    let per_address: AddressCounts = Arc::default();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let Ok(total) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((io, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let address = match limits.per_address_max {
                    Some(_) if limits.exempt.contains(peer.ip()) => None,
                    None => None,
                    Some(max) => match AddressPermit::take(&per_address, peer.ip(), max) {
                        Some(permit) => Some(permit),
                        None => {
                            // Dropping the socket closes it; its permit returns at once.
                            tracing::debug!(%peer, max, "too many connections from one address");
                            continue;
                        }
                    },
                };
                let permit = Permit {
                    _total: total,
                    _address: address,
                };
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
        let limits = ConnectionLimits {
            total_max: 2,
            per_address_max: None,
            exempt: TrustedProxies::default(),
        };
        let task = tokio::spawn(accept_loop(listener, limits, move |_io, _peer, permit| {
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
