//! The `chat` binary's library: everything `main.rs` starts, so tests and the simulator
//! start the very same code.
//!
//! # Layout
//! - [`serve`]: `chat serve`: gateway, connection server and app server in one process over
//!   one store and an in-process registry.
//! - [`roles`]: `chat app`, `chat conn`, `chat gateway`: the cluster roles, one process each.
//! - [`client_cmd`]: `chat client`: the terminal client.
//! - [`store`]: `chat app --store redb:PATH | fdb:CLUSTER_FILE`: which message store to open.

pub mod cli;
pub mod client_cmd;
pub mod roles;
pub mod serve;
pub mod store;
