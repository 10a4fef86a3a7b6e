//! The backends under test, opened fresh for each case, and the harness around them.

use async_trait::async_trait;
use chat_store::{Kv, KvError, KvTx, MemoryKv, RedbKv, Tx};
use proptest::test_runner::Config;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every store backend the properties run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    /// Durable: every commit fsyncs, so its properties run fewer cases.
    Redb,
}

/// A freshly opened, empty store. Dropping it closes the store, then removes its files.
pub struct Opened {
    // Field order matters: the store closes before its directory is removed.
    pub kv: Arc<dyn Kv>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    pub fn open(self) -> Opened {
        match self {
            Backend::Memory => Opened {
                kv: Arc::new(MemoryKv::new()),
                _dir: None,
            },
            Backend::Redb => {
                let dir = tempfile::tempdir().expect("a temporary directory for the redb store");
                let kv = RedbKv::open(dir.path().join("kv.redb")).expect("open a fresh redb store");
                Opened {
                    kv: Arc::new(kv),
                    _dir: Some(dir),
                }
            }
        }
    }
}

/// Runs `future` to completion on a fresh single-threaded runtime (with timers, for the run
/// loop's back-off). One thread keeps a case's interleaving a function of its input, apart
/// from the run loop's random back-off.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// The proptest configuration: `cases` unless `PROPTEST_CASES` asks for another number (to
/// run longer by hand), and no regression files.
///
/// Failure persistence is off on purpose: a failing case prints its shrunk input (turn it
/// into a plain unit test to keep it), and `PROPTEST_RNG_SEED=<u64>` makes a whole run
/// repeatable; a regressions directory would be written into the source tree by every
/// failing local run and replayed nowhere else.
pub fn config(cases: u32) -> Config {
    let defaults = Config::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        defaults.cases
    } else {
        cases
    };
    Config {
        cases,
        failure_persistence: None,
        ..defaults
    }
}

/// A [`Kv`] whose transactions yield to the scheduler before every read and commit, so
/// transactions run concurrently on one thread really interleave. (Over [`MemoryKv`] every
/// call completes at once, so without this a `join_all` of transactions would run them one
/// after the other.)
pub struct YieldingKv {
    inner: Arc<dyn Kv>,
    conflicts: Arc<AtomicU64>,
}

impl YieldingKv {
    pub fn new(inner: Arc<dyn Kv>) -> YieldingKv {
        YieldingKv {
            inner,
            conflicts: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Commits that failed with [`KvError::NotCommitted`]: evidence that transactions
    /// really overlapped.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Kv for YieldingKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        tokio::task::yield_now().await;
        let tx = self.inner.begin().await?;
        Ok(Tx::new(Arc::new(YieldingTx {
            inner: tx,
            conflicts: self.conflicts.clone(),
        })))
    }
}

struct YieldingTx {
    inner: Tx,
    conflicts: Arc<AtomicU64>,
}

#[async_trait]
impl KvTx for YieldingTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        tokio::task::yield_now().await;
        self.inner.get(key).await
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        tokio::task::yield_now().await;
        self.inner.get_range(begin, end, limit, reverse).await
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value)
    }

    fn clear(&self, key: &[u8]) {
        self.inner.clear(key)
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.inner.clear_range(begin, end)
    }

    async fn commit(&self) -> Result<(), KvError> {
        tokio::task::yield_now().await;
        let outcome = self.inner.commit().await;
        if outcome == Err(KvError::NotCommitted) {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}
