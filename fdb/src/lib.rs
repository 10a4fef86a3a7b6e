//! The FoundationDB backend of the chat store: [`chat_store::Kv`] over a FoundationDB
//! cluster, behind the cargo feature `fdb` (off by default).
//!
//! # Layout
//! - [`errors`]: FoundationDB error codes and their [`chat_store::KvError`] classes. Plain
//!   code, built and unit-tested with or without the feature.
//! - `FdbKv` (feature `fdb`): [`chat_store::Kv`] over `foundationdb::Database`, and
//!   `FdbTx`, [`chat_store::KvTx`] over `foundationdb::Transaction`; `NetworkGuard`, the
//!   client's network thread, started once per process by `FdbKv::boot`.
//! - `disabled` (without the feature): a stub saying why there is nothing else.
//!
//! The FoundationDB client already does what the other backends implement themselves
//! (read-your-writes, conflict ranges, snapshot isolation, the size limits, the 5 s MVCC
//! window), so this is a thin mapping. What it adds, and why:
//! - Transactions are retried by the store's own [`chat_store::run`] loop, not by
//!   `db.run`: one code path for every backend. That stays correct under
//!   `commit_unknown_result` because every chat transaction is idempotent (see
//!   `docs/fdb.md` and `system/store/KEYS.md`).
//! - The trait's contract is checked where FoundationDB is laxer, so the conformance suite
//!   means the same on every backend: a read of a key over 10,000 bytes is
//!   [`chat_store::KvError::KeyTooLarge`] (FoundationDB answers "absent"); the 5 s lifetime
//!   counts from `begin` and also applies to blind writes (FoundationDB only ages the read
//!   version, and a transaction without reads takes one at commit); an empty or inverted
//!   `clear_range` is a no-op (FoundationDB fails the commit with `inverted_range`).
//! - Every transaction gets a timeout, so an unreachable cluster surfaces as
//!   [`chat_store::KvError::Unavailable`] instead of a read that waits forever.
//!
//! Building with the feature needs libclang (bindgen); linking needs `libfdb_c` 7.3.
//! `docs/fdb.md` says how to run the tests against a cluster.

pub mod errors;

#[cfg(feature = "fdb")]
mod kv;

#[cfg(feature = "fdb")]
pub use kv::{FdbKv, FdbTx, NetworkGuard, TX_TIMEOUT};

/// Built without the `fdb` feature: no FoundationDB client here.
#[cfg(not(feature = "fdb"))]
pub mod disabled {
    /// Why this build has no FoundationDB backend. Printed by the tests when they skip.
    pub const WHY: &str = "chat-fdb was built without the `fdb` feature: the FoundationDB client needs libclang \
         to build and libfdb_c (7.3) to link, which most machines lack, so it is opt-in \
         (`--features fdb`)";
}
