//! Property tests: every store backend against a trivially-correct model.
//!
//! # Layout
//! - [`kv_model`]: the key-value model (a `BTreeMap`), the operations, their proptest
//!   strategies, a model transaction (snapshot plus own writes, read and write sets) and the
//!   conflict rule.
//! - [`chat_model`]: the chat model: gapless logs, idempotent client ids, membership,
//!   cursors, recency.
//! - [`backend`]: each backend opened fresh for one case, a wrapper that makes concurrent
//!   transactions interleave, the runtime and the proptest configuration.
//!
//! The properties are in `tests/`: `kv_model.rs` (every read and the final contents equal
//! the model's), `kv_serializable.rs` (concurrent transactions commit exactly as the
//! conflict rule says and the result is their serial application in commit order) and
//! `chat_model.rs` (concurrent `ChatStore::append` batches match a serial model).
//!
//! The models live here, apart from the system they check, and know nothing of its code.

pub mod backend;
pub mod chat_model;
pub mod kv_model;
