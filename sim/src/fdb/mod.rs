//! A simulated FoundationDB: a store node reached over the (simulated) network, so the
//! production app servers, which take an `Arc<dyn chat_store::Kv>`, run in the simulator
//! against something that behaves like FoundationDB as its clients see it.
//!
//! # Layout
//! - [`wire`]: the protocol. Transactions one at a time on a TCP connection; length-prefixed
//!   binary frames; `Begin`, `Get`, `GetRange`, the fire-and-forget mutations `Set`,
//!   `Clear`, `ClearRange`, `Commit`, and the fire-and-forget `End`; FoundationDB's error
//!   codes on the wire.
//! - [`server`]: [`SimFdbServer`], the store node. Its data is a [`chat_store::MemoryKv`]
//!   created by the harness outside the node and handed in, so a killed and restarted node
//!   keeps every committed write and loses every open transaction.
//! - [`client`]: [`SimFdbKv`], the [`chat_store::Kv`] the app servers are given; it reuses
//!   its connections for later transactions, as FoundationDB's client keeps its connections.
//! - [`faults`]: [`SimFdbFaults`], the faults the server injects, shared with the harness
//!   and changeable while the simulation runs, and [`SimFdbCounts`], what it injected.
//!
//! Everything runs on the runtime alias (`tokio` is madsim's under `--cfg madsim`), so it
//! also compiles, and its unit tests run, on real sockets.
//!
//! # What it models (the client's view of FoundationDB)
//! - Optimistic serializable transactions with read-your-writes: every request runs on a
//!   real `MemoryKv` transaction on the server, so snapshot reads, conflict ranges
//!   (limited range reads included) and commit-order serializability are `MemoryKv`'s.
//! - `not_committed` (1020): real conflicts, plus spurious ones injected with
//!   [`FaultConfig::not_committed_probability`].
//! - `commit_unknown_result` (1021), with the commit applied or not: injected with
//!   [`FaultConfig::unknown_result_probability`] (applied on a fair coin), and whenever a
//!   commit's reply is lost: the node killed or partitioned after the commit frame left
//!   (the server applies a commit between two latency draws, so both sides of the kill
//!   happen), a reply later than [`ClientOptions::commit_timeout`]. A commit held by a
//!   partition may still apply after its client saw 1021, but never after the
//!   transaction's 5 s lifetime.
//! - `transaction_too_old` (1007) after 5 s of simulated time, from `MemoryKv`.
//! - Size limits (keys 10 KB, values 100 KB, 10 MB of mutations per transaction),
//!   reported by the next read and the commit.
//! - Latency: madsim's network latency plus a per-reply server delay drawn from
//!   [`FaultConfig::latency_min`]..=[`FaultConfig::latency_max`]. Concurrent reads of one
//!   transaction overlap (replies are computed at once and sent when due, in order).
//! - Unavailability: new transactions refused with `Unavailable`, by probability or for an
//!   outage ([`SimFdbFaults::unavailable_for`]); a killed node (connection reset, connect
//!   refused) or partition (connects refused at once, requests time out) does the same.
//!   Connections are reused from one transaction to the next, as FoundationDB's client
//!   keeps its connections: across a partition a `begin` on a kept connection times out
//!   (after [`ClientOptions::begin_timeout`]) instead of being refused at once, and the
//!   client then drops its kept connections, so the next `begin` is refused at once again.
//! - Durability across restarts: the `MemoryKv` outlives the node.
//! - Read-only commits are answered by the client without a round trip, as FoundationDB's
//!   client does: they never fail with 1020 or 1021.
//!
//! # What it does not model
//! - Reads at old versions other than a transaction's own snapshot (`MemoryKv` keeps only
//!   the latest map plus each open transaction's snapshot); no snapshot (non-conflicting)
//!   reads, no `set_read_version`.
//! - FoundationDB's roles: no storage servers, logs, resolvers, proxies, coordinators or
//!   recoveries; one node holds everything. No process classes, no ratekeeper (so no
//!   throttling under load), no data distribution, no `process_behind`.
//! - No atomic operations (`add`, `max`), versionstamps, watches, or the `\xff` system
//!   keyspace; no client-side retry of reads across proxies; no range-read streaming modes
//!   (a range reply is at most [`wire::RANGE_REPLY_BYTES_MAX`] bytes).
//! - Durability is perfect: FoundationDB loses nothing acknowledged, and neither does this.
//!
//! # Using it
//! ```ignore
//! let kv = chat_store::MemoryKv::new();             // kept by the harness: survives kills
//! let faults = SimFdbFaults::new(FaultConfig::NOISY);
//! let node = SimFdbServer::new(kv.clone(), faults.clone()).start_node("fdb", ip, 4500);
//! let store: Arc<dyn chat_store::Kv> = Arc::new(SimFdbKv::new(SocketAddr::new(ip, 4500)));
//! // ... Handle::current().kill(node.id()); ... restart(node.id()); ... faults.quiet();
//! ```

pub mod client;
pub mod faults;
pub mod server;
pub mod wire;

pub use client::{ClientOptions, SimFdbClientCounts, SimFdbKv};
pub use faults::{FaultConfig, SimFdbCounts, SimFdbFaults};
pub use server::SimFdbServer;

/// A [`chat_proto::deadline::Deadline`] on the runtime alias: bounded waits that poll their
/// timer only when they must (madsim adds a timer entry per poll of a pending `Sleep`).
pub(crate) type Deadline = chat_proto::deadline::Deadline<tokio::time::Instant, tokio::time::Sleep>;

pub(crate) fn deadline() -> Deadline {
    Deadline::new(tokio::time::Instant::now, tokio::time::sleep_until)
}

/// `tokio::time::timeout`, with the timer polled only when it must be.
pub(crate) async fn timeout<F: std::future::Future>(
    limit: std::time::Duration,
    future: F,
) -> Result<F::Output, chat_proto::deadline::Elapsed> {
    deadline().within(limit, future).await
}

/// The port store nodes listen on (FoundationDB's default).
pub const PORT: u16 = 4500;

#[cfg(madsim)]
impl SimFdbServer {
    /// Creates a simulated node named `name` at `ip` running this server on `port`. A
    /// `restart` of the node re-runs it over the same data and faults.
    pub fn start_node(
        &self,
        name: &str,
        ip: std::net::IpAddr,
        port: u16,
    ) -> madsim::runtime::NodeHandle {
        let server = self.clone();
        madsim::runtime::Handle::current()
            .create_node()
            .name(name)
            .ip(ip)
            .init(move || server.clone().run(port))
            .build()
    }
}

/// The same code on real sockets and real time (the module runs in both worlds).
#[cfg(all(test, not(madsim)))]
mod real_socket_tests {
    use super::*;
    use chat_store::{Kv, KvError, MemoryKv};
    use std::sync::Arc;

    async fn start(faults: SimFdbFaults) -> (MemoryKv, std::net::SocketAddr) {
        let kv = MemoryKv::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(SimFdbServer::new(kv.clone(), faults).serve(listener));
        (kv, addr)
    }

    #[tokio::test]
    async fn conformance_suite_passes_on_real_sockets() {
        let (kv, addr) = start(SimFdbFaults::default()).await;
        chat_store::testing::conformance(Arc::new(SimFdbKv::new(addr))).await;
        assert!(kv.is_empty());
    }

    #[tokio::test]
    async fn injected_faults_reach_the_client_with_their_codes() {
        let faults = SimFdbFaults::new(FaultConfig {
            unavailable_probability: 1.0,
            ..FaultConfig::QUIET
        });
        let (kv, addr) = start(faults.clone()).await;
        let client = SimFdbKv::new(addr);
        assert!(matches!(
            client.begin().await.err(),
            Some(KvError::Unavailable(_))
        ));

        faults.set(FaultConfig {
            not_committed_probability: 1.0,
            ..FaultConfig::QUIET
        });
        let tx = client.begin().await.expect("begin");
        tx.set(b"k", b"v");
        assert_eq!(tx.commit().await, Err(KvError::NotCommitted));
        assert_eq!(
            tx.commit().await,
            Err(KvError::NotCommitted),
            "a second commit answers the first's result"
        );

        faults.set(FaultConfig {
            unknown_result_probability: 1.0,
            ..FaultConfig::QUIET
        });
        for _ in 0..20 {
            let tx = client.begin().await.expect("begin");
            tx.set(b"k", b"v");
            assert_eq!(tx.commit().await, Err(KvError::CommitUnknownResult));
        }
        let counts = faults.counts();
        assert_eq!(
            counts.injected_unknown_applied + counts.injected_unknown_not_applied,
            20
        );
        assert_eq!(
            kv.len(),
            usize::from(counts.injected_unknown_applied > 0),
            "applied exactly when counted so"
        );

        // Read-only transactions never reach the commit path, so never see injected faults.
        let tx = client.begin().await.expect("begin");
        tx.get(b"k").await.expect("get");
        assert_eq!(tx.commit().await, Ok(()));
        let seen = client.counts();
        assert_eq!(
            (seen.unavailable, seen.not_committed, seen.unknown_result),
            (1, 2, 20),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn a_dead_server_is_unavailable_and_a_lost_commit_reply_is_unknown() {
        let (_kv, addr) = start(SimFdbFaults::default()).await;
        let client = SimFdbKv::with_options(
            addr,
            ClientOptions {
                commit_timeout: std::time::Duration::from_millis(300),
                ..ClientOptions::default()
            },
        );
        // Nothing listens on this port any more.
        let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let dead = unused.local_addr().expect("addr");
        drop(unused);
        assert!(matches!(
            SimFdbKv::new(dead).begin().await.err(),
            Some(KvError::Unavailable(_))
        ));

        // A server that takes the transaction and never answers its commit.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut stream, _) = silent.accept().await.expect("accept");
            let _begin = wire::read_frame(&mut stream).await;
            stream
                .write_all(&wire::Reply::Ok.to_frame())
                .await
                .expect("write");
            stream.flush().await.expect("flush");
            // Read everything, answer nothing, keep the connection open.
            while let Ok(Some(_)) = wire::read_frame(&mut stream).await {}
        });
        let silent_client = SimFdbKv::with_options(
            silent_addr,
            ClientOptions {
                commit_timeout: std::time::Duration::from_millis(300),
                ..ClientOptions::default()
            },
        );
        let tx = silent_client.begin().await.expect("begin");
        tx.set(b"k", b"v");
        assert_eq!(tx.commit().await, Err(KvError::CommitUnknownResult));
        drop(client);
    }
}
