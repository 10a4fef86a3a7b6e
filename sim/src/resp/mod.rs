//! A model of Redis for the simulator: the commands the registry sends
//! (`chat_registry::redis`), with Redis's semantics, over RESP2 on the runtime alias's TCP.
//! It runs on real sockets (checked there against a real `redis-server` by
//! `sim/tests/resp_model.rs`, with the registry's conformance suite) and on madsim's.
//!
//! # Layout
//! - [`frame`]: RESP2 request parsing with limits ([`frame::BULK_BYTES_MAX`],
//!   [`frame::ARRAY_LEN_MAX`]), reply encoding. Garbage is answered `-ERR Protocol error`
//!   and the connection closed, as Redis does.
//! - [`state`]: [`RespState`], the keyspace: hashes, key expiry (`PEXPIRE`, lazy, on the
//!   simulated clock), and the commands with Redis 7.0's replies.
//! - [`server`]: [`RespServer::serve`], the accept loop (at most
//!   [`server::CONNECTIONS_MAX`] connections) and one task per connection.
//!
//! # Commands
//! `HSET`, `HDEL`, `HGETALL`, `HLEN`, `PEXPIRE` (without NX/XX/GT/LT), `PING`, `FLUSHALL`,
//! `DBSIZE`, `INFO` (clients, memory, keyspace), and `CLIENT SETINFO LIB-NAME|LIB-VER`,
//! which redis-rs 1.8 sends on connect (with RESP2 and database 0 it sends no `HELLO`, `AUTH`
//! or `SELECT`). Anything else is `-ERR unknown command`.
//!
//! Data loss: there is no persistence. A simulated Redis restart is a new [`RespState`] (or
//! [`RespState::flush_all`]).

pub mod frame;
pub mod server;
pub mod state;

pub use server::RespServer;
pub use state::RespState;
