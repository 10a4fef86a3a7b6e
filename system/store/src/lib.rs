//! Transactional ordered key-value store (FoundationDB-shaped) with in-memory and redb
//! backends, and the chat data model over it.
//!
//! # Layout
//! - [`kv`]: the seam. The [`Kv`] / [`KvTx`] traits with FoundationDB's semantics and limits,
//!   [`KvError`], and the [`run`] retry loop (FoundationDB's `db.run`).
//! - `occ` (private): optimistic concurrency shared by the local backends: snapshot reads,
//!   read-your-writes, and the resolver that checks commits against recent ones.
//! - [`memory`]: [`MemoryKv`], for tests, property tests and the simulator (no threads, no
//!   real time).
//! - [`redb_kv`]: [`RedbKv`], the durable embedded store: one writer thread doing group
//!   commit, snapshot reads on the caller's thread.
//! - [`keys`]: the chat keyspace as FoundationDB tuples (documented in `KEYS.md`).
//! - [`chat`]: [`ChatStore`], the chat data model written once over [`Kv`].
//! - `testing` (cargo feature `testing`, off by default): the conformance suite every
//!   backend passes.
//!
//! Everything builds under `--cfg madsim`; only [`MemoryKv`] is used there.

pub mod chat;
pub mod keys;
pub mod kv;
pub mod memory;
mod occ;
pub mod redb_kv;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use chat::{
    AppendError, Appended, Changed, ChatStore, InboxItem, NewMessage, ReadMoved, StoreError,
    UserRecord,
};
pub use kv::{Kv, KvError, KvTx, RunOptions, Tx, TxError, run, run_with};
pub use memory::MemoryKv;
pub use redb_kv::{RedbKv, RedbOptions};
