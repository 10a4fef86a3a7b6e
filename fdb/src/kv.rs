//! [`FdbKv`]: [`Kv`] over a FoundationDB database, and [`FdbTx`]: [`KvTx`] over one
//! `foundationdb::Transaction`.
//!
//! The client library does read-your-writes, conflict ranges, snapshot reads and the size
//! limits itself, so each method is one client call plus an error mapping
//! ([`crate::errors::classify`]). The few checks of our own are listed in the crate docs.

use crate::errors::{self, Phase, Predicates};
use async_trait::async_trait;
use chat_store::kv::{KEY_BYTES_MAX, TX_BYTES_MAX, TX_LIFETIME};
use chat_store::{Kv, KvError, KvTx, Tx};
use foundationdb::options::{DatabaseOption, StreamingMode};
use foundationdb::{Database, FdbError, RangeOption, Transaction};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// FoundationDB cancels a transaction this long after it was created, failing whatever it
/// is waiting for with `transaction_timed_out` (1031). Without it a read waits forever while
/// the cluster is unreachable; with it that read fails as [`KvError::Unavailable`] and the
/// run loop's own limits apply. One second past [`TX_LIFETIME`], so a commit sent just
/// before the lifetime ends still has time to answer.
pub const TX_TIMEOUT: Duration = Duration::from_secs(6);

const _: () = assert!(TX_TIMEOUT.as_millis() > TX_LIFETIME.as_millis());
const _: () = assert!(
    TX_TIMEOUT.as_millis() <= i32::MAX as u128,
    "the timeout option is an i32 of ms"
);
const _: () = assert!(
    TX_BYTES_MAX <= i32::MAX as usize,
    "the size limit option is an i32"
);

/// The FoundationDB client's network thread. Keep it until every [`FdbKv`] is dropped, then
/// drop it before the process exits (dropping stops and joins the thread). The network
/// cannot be started again in the same process.
#[must_use = "dropping the guard stops the FoundationDB network"]
pub struct NetworkGuard {
    _network: foundationdb::api::NetworkAutoStop,
}

/// A FoundationDB database as a [`Kv`].
pub struct FdbKv {
    db: Database,
}

impl FdbKv {
    /// Selects API version 7.3 and starts the client's network thread: once per process,
    /// before [`FdbKv::open`]. Panics when called a second time, or when the installed
    /// `libfdb_c` does not support API 7.3.
    ///
    /// # Safety
    ///
    /// As `foundationdb::boot`: the returned guard must be dropped before the process exits
    /// (an abort is fine), after every [`FdbKv`] and transaction. So hold it in `main` (or
    /// the one test that uses the cluster), never in a `static`.
    pub unsafe fn boot() -> NetworkGuard {
        // SAFETY: forwarded to our caller, above.
        NetworkGuard {
            _network: unsafe { foundationdb::boot() },
        }
    }

    /// Opens the database named by `cluster_file`, or by the client's default (the
    /// `FDB_CLUSTER_FILE` variable, then `fdb.cluster` in the working directory, then
    /// `/etc/foundationdb/fdb.cluster`). Needs [`FdbKv::boot`]
    /// first. Connecting is lazy: an unreachable cluster shows up as
    /// [`KvError::Unavailable`] from the first transaction, not here.
    pub fn open(cluster_file: Option<&Path>) -> Result<FdbKv, KvError> {
        let path = match cluster_file {
            None => None,
            Some(path) => match path.to_str() {
                // `Database::new` panics on an interior NUL; refuse it here instead.
                Some(s) if !s.contains('\0') => Some(s),
                _ => {
                    let why = format!(
                        "cluster file path {} is not UTF-8 or contains a NUL",
                        path.display()
                    );
                    return Err(KvError::Io(why));
                }
            },
        };
        let db = Database::new(path).map_err(|e| fdb_error(e, Phase::Open))?;
        db.set_option(DatabaseOption::TransactionTimeout(
            TX_TIMEOUT.as_millis() as i32
        ))
        .map_err(|e| fdb_error(e, Phase::Open))?;
        // The trait's limit, whatever the client's default is.
        db.set_option(DatabaseOption::TransactionSizeLimit(TX_BYTES_MAX as i32))
            .map_err(|e| fdb_error(e, Phase::Open))?;
        Ok(FdbKv { db })
    }

    /// The underlying database, for what the [`Kv`] trait does not cover (status, options).
    pub fn database(&self) -> &Database {
        &self.db
    }
}

#[async_trait]
impl Kv for FdbKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        let trx = self
            .db
            .create_trx()
            .map_err(|e| fdb_error(e, Phase::Open))?;
        Ok(Tx::new(Arc::new(FdbTx {
            began: Instant::now(),
            state: Mutex::new(TxState {
                trx: Some(trx),
                committed: None,
            }),
        })))
    }
}

/// One FoundationDB transaction behind the `&self` methods of [`KvTx`].
pub struct FdbTx {
    began: Instant,
    // A std Mutex: held only to start a client call (which returns a future that does not
    // borrow the transaction) or to take the transaction for its commit, never across an
    // await.
    state: Mutex<TxState>,
}

struct TxState {
    /// Taken by the commit, which consumes it.
    trx: Option<Transaction>,
    /// The commit's outcome once it ran; a second `commit` answers it again.
    committed: Option<Result<(), KvError>>,
}

impl FdbTx {
    fn state(&self) -> MutexGuard<'_, TxState> {
        // Nothing is left half-updated by a panic while the lock is held.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// FoundationDB ages only the read version (taken lazily, at the first read or at the
    /// commit of a blind write); the trait counts [`TX_LIFETIME`] from `begin`, as the other
    /// backends do.
    fn check_age(&self) -> Result<(), KvError> {
        if self.began.elapsed() > TX_LIFETIME {
            Err(KvError::TransactionTooOld)
        } else {
            Ok(())
        }
    }

    /// Starts a read on the live transaction.
    fn read<F>(&self, start: impl FnOnce(&Transaction) -> F) -> Result<F, KvError> {
        let state = self.state();
        let trx = state
            .trx
            .as_ref()
            .ok_or_else(|| KvError::Io("transaction used after its commit".into()))?;
        self.check_age()?;
        Ok(start(trx))
    }

    /// Buffers a mutation. Size errors are deferred by the client to the next read and the
    /// commit, as the trait wants.
    fn mutate(&self, apply: impl FnOnce(&Transaction)) {
        let state = self.state();
        match &state.trx {
            Some(trx) => apply(trx),
            None => debug_assert!(false, "mutation after commit"),
        }
    }
}

#[async_trait]
impl KvTx for FdbTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        // FoundationDB answers "absent" for a key over the limit (no such key can exist);
        // the trait calls it an error, like a write of that key.
        if key.len() > KEY_BYTES_MAX {
            return Err(KvError::KeyTooLarge);
        }
        let value = self
            .read(|trx| trx.get(key, false))?
            .await
            .map_err(|e| fdb_error(e, Phase::Read))?;
        Ok(value.map(|slice| slice.to_vec()))
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        if begin >= end {
            self.read(|_| ())?;
            return Ok(Vec::new());
        }
        let mut option = RangeOption {
            limit: (limit != 0).then_some(limit),
            // The caller wants the whole (limited) range now: no small first batches.
            mode: StreamingMode::WantAll,
            reverse,
            ..RangeOption::from((begin, end))
        };
        let mut pairs = Vec::new();
        // Only the Iterator mode reads `iteration`; counted anyway, as the API asks.
        let mut iteration = 1;
        loop {
            let batch = self
                .read(|trx| trx.get_range(&option, iteration, false))?
                .await
                .map_err(|e| fdb_error(e, Phase::Read))?;
            pairs.extend(
                batch
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            // None once the client says there is no more, or the limit is reached.
            match option.next_range(&batch) {
                Some(next) => option = next,
                None => break,
            }
            iteration += 1;
        }
        Ok(pairs)
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.mutate(|trx| trx.set(key, value));
    }

    fn clear(&self, key: &[u8]) {
        self.mutate(|trx| trx.clear(key));
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        // The client fails the whole transaction with `inverted_range` when begin > end; the
        // trait says an empty or inverted range clears nothing.
        if begin >= end {
            return;
        }
        self.mutate(|trx| trx.clear_range(begin, end));
    }

    async fn commit(&self) -> Result<(), KvError> {
        let trx = {
            let mut state = self.state();
            if let Some(outcome) = &state.committed {
                return outcome.clone();
            }
            let Some(trx) = state.trx.take() else {
                return Err(KvError::Io(
                    "commit called while the first commit is in flight".into(),
                ));
            };
            if let Err(error) = self.check_age() {
                // Dropping `trx` cancels it; nothing was sent.
                state.committed = Some(Err(error.clone()));
                return Err(error);
            }
            trx
        };
        let outcome = match trx.commit().await {
            Ok(_committed) => Ok(()),
            Err(error) => Err(fdb_error(FdbError::from(error), Phase::Commit)),
        };
        self.state().committed = Some(outcome.clone());
        outcome
    }
}

fn fdb_error(error: FdbError, phase: Phase) -> KvError {
    let predicates = Predicates {
        retryable: error.is_retryable(),
        maybe_committed: error.is_maybe_committed(),
    };
    errors::classify(error.code(), error.message(), phase, predicates)
}
