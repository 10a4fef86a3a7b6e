//! The seam: a FoundationDB-shaped transactional ordered key-value store.
//!
//! Everything above this module (the chat data model) is written once against [`Kv`] and
//! [`Tx`]; the in-memory backend, the redb backend and the FoundationDB backend (`FdbKv`, in
//! the `chat-fdb` crate under `fdb/`) sit below it. The contract is FoundationDB's:
//! serializable optimistic transactions with read-your-writes, the same size limits and the
//! same 5 s lifetime, and the same error classes (1020 conflict, 1021 unknown result, 1007 too
//! old), so code that is correct over [`crate::MemoryKv`] in the simulator stays correct over
//! FoundationDB.

use async_trait::async_trait;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

/// FoundationDB's key size limit.
pub const KEY_BYTES_MAX: usize = 10_000;
/// FoundationDB's value size limit.
pub const VALUE_BYTES_MAX: usize = 100_000;
/// FoundationDB's limit on the bytes of mutations in one transaction.
pub const TX_BYTES_MAX: usize = 10_000_000;
/// FoundationDB's transaction lifetime: reads and commits after this fail with
/// [`KvError::TransactionTooOld`].
pub const TX_LIFETIME: Duration = Duration::from_secs(5);

const _: () = assert!(KEY_BYTES_MAX < VALUE_BYTES_MAX && VALUE_BYTES_MAX < TX_BYTES_MAX);

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Another transaction wrote something this one read (FoundationDB 1020). Retryable.
    #[error("transaction conflicted with a concurrent commit (not_committed, 1020)")]
    NotCommitted,
    /// The commit may or may not have happened (FoundationDB 1021). Retryable only by
    /// idempotent transactions.
    #[error("commit outcome unknown (commit_unknown_result, 1021)")]
    CommitUnknownResult,
    /// The transaction outlived [`TX_LIFETIME`] or the conflict history (FoundationDB 1007).
    /// Retryable.
    #[error("transaction too old (transaction_too_old, 1007)")]
    TransactionTooOld,
    #[error("key larger than {KEY_BYTES_MAX} bytes")]
    KeyTooLarge,
    #[error("value larger than {VALUE_BYTES_MAX} bytes")]
    ValueTooLarge,
    #[error("transaction mutations larger than {TX_BYTES_MAX} bytes")]
    TransactionTooLarge,
    /// The store cannot be reached or is shutting down. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The storage engine failed (disk, file). The transaction was not applied.
    #[error("store I/O error: {0}")]
    Io(String),
    /// Stored data could not be decoded: a bug or a damaged store, never retried.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl KvError {
    /// Whether running the transaction again may succeed (FoundationDB's `on_error` set).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::NotCommitted
                | KvError::CommitUnknownResult
                | KvError::TransactionTooOld
                | KvError::Unavailable(_)
        )
    }

    /// Whether the failed transaction may nevertheless have been committed.
    pub fn maybe_committed(&self) -> bool {
        matches!(self, KvError::CommitUnknownResult)
    }
}

/// A transactional ordered key-value database.
#[async_trait]
pub trait Kv: Send + Sync + 'static {
    /// Starts a transaction reading a consistent snapshot.
    async fn begin(&self) -> Result<Tx, KvError>;
}

/// One transaction. Methods take `&self` so a [`Tx`] handle can be shared by the futures of
/// one attempt (for example reads issued concurrently with `try_join_all`).
///
/// Reads see the transaction's own earlier writes (read-your-writes). Mutations are buffered
/// and applied atomically by [`KvTx::commit`]; errors of a mutation (size limits) are
/// reported by the next read and by the commit, as FoundationDB does.
#[async_trait]
pub trait KvTx: Send + Sync + 'static {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;

    /// Key-value pairs with `begin <= key < end`, ascending, or descending from `end` when
    /// `reverse`. `limit == 0` means no limit.
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError>;

    fn set(&self, key: &[u8], value: &[u8]);
    fn clear(&self, key: &[u8]);
    /// Clears every key with `begin <= key < end`.
    fn clear_range(&self, begin: &[u8], end: &[u8]);

    /// Commits the buffered mutations. Called once, by [`run`]; a second call answers the
    /// first call's result again.
    async fn commit(&self) -> Result<(), KvError>;
}

/// A cheap cloneable handle on a transaction, so a [`run`] closure can take it by value and
/// return a `Send + 'static` future.
#[derive(Clone)]
pub struct Tx(Arc<dyn KvTx>);

impl Tx {
    pub fn new(tx: Arc<dyn KvTx>) -> Tx {
        Tx(tx)
    }
}

impl Deref for Tx {
    type Target = dyn KvTx;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// The error type of a [`run`] closure: it can carry a [`KvError`] (so `?` works on store
/// calls), and tells the run loop which [`KvError`], if any, it carries (so the loop knows
/// whether to retry). Errors of the application's own (`UsernameTaken`) end the loop at once.
pub trait TxError: From<KvError> {
    fn as_kv(&self) -> Option<&KvError>;
}

impl TxError for KvError {
    fn as_kv(&self) -> Option<&KvError> {
        Some(self)
    }
}

/// Bounds of the [`run`] retry loop. FoundationDB's `db.run` retries forever by default;
/// we never do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Attempts after the first one.
    pub retries_max: u32,
    /// Back-off before the first retry; doubled on each further retry.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// No retry starts after this much time since the first attempt began.
    pub run_duration_max: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            retries_max: 20,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
            run_duration_max: Duration::from_secs(10),
        }
    }
}

/// Runs `f` in a transaction and commits it, retrying retryable errors with
/// [`RunOptions::default`].
/// See [`run_with`].
pub async fn run<T, E, F, Fut>(db: &dyn Kv, f: F) -> Result<T, E>
where
    F: FnMut(Tx, bool) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: TxError,
{
    run_with(db, &RunOptions::default(), f).await
}

/// FoundationDB's `db.run`: begins a transaction, calls `f(tx, maybe_committed)`, commits.
///
/// On a retryable [`KvError`] (from `begin`, from inside `f`, or from the commit) it backs off
/// (exponential, with jitter so contenders spread out) and calls `f` again on a new
/// transaction, up to `options.retries_max` retries and `options.run_duration_max`; then it
/// returns the last error. Any other error is returned at once, without committing.
///
/// `maybe_committed` is true once an earlier attempt failed with
/// [`KvError::CommitUnknownResult`]: that attempt may have been applied, so `f` must be
/// idempotent (check a marker it writes, as the chat store's `idem` keys do). It stays true
/// for later attempts, since the unknown attempt may still be the one that landed.
pub async fn run_with<T, E, F, Fut>(db: &dyn Kv, options: &RunOptions, mut f: F) -> Result<T, E>
where
    F: FnMut(Tx, bool) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: TxError,
{
    // std Instant: simulated under madsim, so the deadline follows simulated time there.
    let started = std::time::Instant::now();
    let mut maybe_committed = false;
    let mut backoff = options.backoff_initial;
    let mut attempt: u32 = 0;
    loop {
        let error: E = match attempt_once(db, &mut f, maybe_committed).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let Some(kv_error) = error.as_kv() else {
            return Err(error);
        };
        if !kv_error.is_retryable() {
            return Err(error);
        }
        maybe_committed |= kv_error.maybe_committed();
        if attempt >= options.retries_max {
            tracing::warn!(attempts = attempt + 1, error = %kv_error, "transaction gave up after its retry limit");
            return Err(error);
        }
        let sleep = jittered(backoff);
        if started.elapsed() + sleep > options.run_duration_max {
            tracing::warn!(attempts = attempt + 1, error = %kv_error, "transaction gave up at its deadline");
            return Err(error);
        }
        tracing::debug!(attempt, error = %kv_error, backoff_ms = sleep.as_millis() as u64, "retrying transaction");
        tokio::time::sleep(sleep).await;
        backoff = (backoff * 2).min(options.backoff_max);
        attempt += 1;
    }
}

async fn attempt_once<T, E, F, Fut>(db: &dyn Kv, f: &mut F, maybe_committed: bool) -> Result<T, E>
where
    F: FnMut(Tx, bool) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: TxError,
{
    let tx = db.begin().await?;
    let value = f(tx.clone(), maybe_committed).await?;
    tx.commit().await?;
    Ok(value)
}

/// A duration drawn uniformly from `[backoff / 2, backoff]`. rand 0.9 draws from getrandom
/// 0.3, which madsim intercepts, so simulations stay deterministic.
fn jittered(backoff: Duration) -> Duration {
    let micros = backoff.as_micros().min(u64::MAX as u128) as u64;
    Duration::from_micros(rand::random_range(micros / 2..=micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes_match_foundationdb() {
        assert!(KvError::NotCommitted.is_retryable());
        assert!(KvError::CommitUnknownResult.is_retryable());
        assert!(KvError::TransactionTooOld.is_retryable());
        assert!(KvError::Unavailable("x".into()).is_retryable());
        for e in [
            KvError::KeyTooLarge,
            KvError::ValueTooLarge,
            KvError::TransactionTooLarge,
            KvError::Io("x".into()),
            KvError::Corrupt("x".into()),
        ] {
            assert!(!e.is_retryable(), "{e}");
            assert!(!e.maybe_committed(), "{e}");
        }
        assert!(KvError::CommitUnknownResult.maybe_committed());
        assert!(!KvError::NotCommitted.maybe_committed());
    }

    #[test]
    fn jitter_stays_within_half_to_full_backoff() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(10));
            assert!(
                d >= Duration::from_millis(5) && d <= Duration::from_millis(10),
                "{d:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
