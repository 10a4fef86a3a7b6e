//! The chat system under madsim's deterministic simulator.
//!
//! Built only with `RUSTFLAGS="--cfg madsim"` (see `ci/test`); otherwise this crate is empty.
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

#![cfg(madsim)]

pub mod seeds;
pub mod smoke;
pub mod trace;
