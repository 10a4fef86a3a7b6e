//! Sticky placement of WebSockets on connection servers.
//!
//! Policy: rendezvous hashing ([`chat_net::rendezvous`]) of the username over the connection
//! servers that are healthy. A user's devices land on one server, so a message to them
//! touches one server; when that server is down its users spread over the others (only
//! they move), and come back when it returns. Health: a TCP connect every
//! `check_interval`, and a failed splice marks a server down at once.

use chat_net::rendezvous;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Placement {
    servers: Vec<Server>,
    check_interval: Duration,
    connect_timeout: Duration,
}

struct Server {
    addr: SocketAddr,
    /// Its name in the rendezvous ranking: the address, formatted once.
    name: String,
    healthy: AtomicBool,
}

impl Placement {
    /// Health checks connect every `check_interval`, giving up after `connect_timeout`.
    pub fn new(
        addrs: Vec<SocketAddr>,
        check_interval: Duration,
        connect_timeout: Duration,
    ) -> Placement {
        let servers = addrs
            .into_iter()
            .map(|addr| Server {
                addr,
                name: addr.to_string(),
                healthy: AtomicBool::new(true),
            })
            .collect();
        Placement {
            servers,
            check_interval,
            connect_timeout,
        }
    }

    /// The servers to try for `user`, best first, healthy ones before the rest.
    pub fn candidates(&self, user: &str) -> Vec<SocketAddr> {
        let key = rendezvous::key(0, user.as_bytes());
        let mut ranked: Vec<(bool, u64, SocketAddr)> = self
            .servers
            .iter()
            .map(|s| {
                (
                    s.healthy.load(Ordering::Relaxed),
                    rendezvous::weight(key, &s.name),
                    s.addr,
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        ranked.into_iter().map(|(_, _, addr)| addr).collect()
    }

    pub fn mark(&self, addr: SocketAddr, healthy: bool) {
        if let Some(server) = self.servers.iter().find(|s| s.addr == addr)
            && server.healthy.swap(healthy, Ordering::Relaxed) != healthy
        {
            tracing::info!(%addr, healthy, "connection server health changed");
        }
    }

    /// Checks every server every `check_interval`, forever.
    pub async fn run_health_checks(self: std::sync::Arc<Self>) {
        loop {
            for server in &self.servers {
                let up = matches!(
                    tokio::time::timeout(
                        self.connect_timeout,
                        tokio::net::TcpStream::connect(server.addr)
                    )
                    .await,
                    Ok(Ok(_))
                );
                self.mark(server.addr, up);
            }
            tokio::time::sleep(self.check_interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_with_fallback() {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("127.0.0.1:900{i}").parse().unwrap())
            .collect();
        let placement = Placement::new(
            addrs.clone(),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let first = placement.candidates("alice")[0];
        assert_eq!(placement.candidates("alice")[0], first, "sticky");
        let spread: std::collections::HashSet<SocketAddr> = (0..100)
            .map(|i| placement.candidates(&format!("user{i}"))[0])
            .collect();
        assert_eq!(spread.len(), 3, "users spread over every server");
        placement.mark(first, false);
        let fallback = placement.candidates("alice");
        assert_ne!(fallback[0], first);
        assert_eq!(
            *fallback.last().unwrap(),
            first,
            "an unhealthy server is tried last"
        );
        placement.mark(first, true);
        assert_eq!(
            placement.candidates("alice")[0],
            first,
            "and returns when healthy"
        );
    }
}
