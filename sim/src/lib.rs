//! The chat system under madsim's deterministic simulator.
//!
//! The scenarios build only with `RUSTFLAGS="--cfg madsim"` (see `ci/test`); without it
//! this crate holds only [`resp`], which is tested on real sockets too.
//! The production crates run unchanged: each server node starts [`chat::serve::run`], the
//! same entry point as `chat serve`, and clients use the real `chat-client` library over
//! simulated TCP.
//!
//! # Layout
//! - [`trace`]: the observable event trace of a run and its hash (the determinism check:
//!   madsim's own check misses randomness that does not change timing).
//! - [`smoke`]: the walking-skeleton scenario: one server node, three client nodes,
//!   direct and group conversations, and its checks.
//! - [`seeds`]: running a scenario for a seed on a fresh runtime.
//! - [`resp`]: a Redis model server (the registry's commands over RESP2) for simulated
//!   clusters, checked against a real `redis-server`.
//! - [`fdb`]: the simulated FoundationDB: a store node with FoundationDB's client-visible
//!   behaviour and faults.
//! - [`cluster`]: the simulated cluster (production entry points on every node) and the
//!   tester's verbs: `kill`, `restart`, `partition`, `isolate`, `heal`, `flush_registry`.
//! - [`faults`]: swarm fault schedules drawn from the seed.
//! - [`sockets`]: send windows madsim's TCP lacks, so clients that stop reading make the
//!   servers' writes wait.
//! - [`workload`]: what simulated people do, and what they observe.
//! - [`accounts`]: newcomers who register, log in and start conversations during the faults.
//! - [`membership`]: an owner adding and removing members of a group while it chats in it.
//! - [`checkers`]: the named invariants, apart from everything else.
//! - [`scenario`]: the standard scenario wiring it all together.
//! - [`runner`], [`shrink`]: seeds, trace files, replay commands, schedule shrinking.

#[cfg(madsim)]
pub mod accounts;
#[cfg(madsim)]
pub mod checkers;
#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod disk;
#[cfg(madsim)]
pub mod faults;
pub mod fdb;
#[cfg(madsim)]
pub mod membership;
pub mod resp;
#[cfg(madsim)]
pub mod runner;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod seeds;
#[cfg(madsim)]
pub mod shrink;
#[cfg(madsim)]
pub mod smoke;
#[cfg(madsim)]
pub mod sockets;
#[cfg(madsim)]
pub mod trace;
#[cfg(madsim)]
pub mod workload;
