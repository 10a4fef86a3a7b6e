//! A simulated FoundationDB: a store node reached over the (simulated) network, so the
//! production app servers, which take an `Arc<dyn chat_store::Kv>`, run in the simulator
//! against something that behaves like FoundationDB as its clients see it.
//!
//! # Layout
//! - [`wire`]: the protocol. One TCP connection per transaction; length-prefixed binary
//!   frames; `Begin`, `Get`, `GetRange`, the fire-and-forget mutations `Set`, `Clear`,
//!   `ClearRange`, and `Commit`; FoundationDB's error codes on the wire.
//! - [`server`]: [`SimFdbServer`], the store node. Its data is a [`chat_store::MemoryKv`]
//!   created by the harness outside the node and handed in, so a killed and restarted node
//!   keeps every committed write and loses every open transaction.
//! - [`client`]: [`SimFdbKv`], the [`chat_store::Kv`] the app servers are given.
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

/// The port store nodes listen on (FoundationDB's default).
pub const PORT: u16 = 4500;

#[cfg(madsim)]
impl SimFdbServer {
    /// Creates a simulated node named `name` at `ip` running this server on `port`. A
    /// `restart` of the node re-runs it over the same data and faults.
    pub fn start_node(&self, name: &str, ip: std::net::IpAddr, port: u16) -> madsim::runtime::NodeHandle {
        let server = self.clone();
        madsim::runtime::Handle::current()
            .create_node()
            .name(name)
            .ip(ip)
            .init(move || server.clone().run(port))
            .build()
    }
}
