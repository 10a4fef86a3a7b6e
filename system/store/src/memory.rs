//! The in-memory backend: tests, property tests and the simulator.
//!
//! It uses no threads and no real time (std `Instant` is simulated under madsim), so it runs
//! unchanged inside the deterministic simulator.

use crate::kv::{Kv, KvError, Tx};
use crate::occ::{CommitPath, CommitRequest, KeyValue, LiveReads, OccTx, Resolver, Snapshot};
use async_trait::async_trait;
use imbl::OrdMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A transactional ordered map in memory, with FoundationDB's semantics (see [`crate::occ`]).
#[derive(Clone)]
pub struct MemoryKv {
    shared: Arc<Shared>,
}

struct Shared {
    // A std Mutex: held only for map clones and commits, never across an `.await`.
    state: Mutex<State>,
    /// Entered under `state`'s lock (lock order: `state`, then `live`).
    live: Arc<LiveReads>,
}

/// Keys and values are shared, immutable byte strings: a commit after a snapshot copies the
/// map's nodes on its path (copy-on-write), and copying a node then only bumps reference
/// counts instead of copying every key and value the node holds.
type Bytes = Arc<[u8]>;

struct State {
    /// A persistent map: `clone` is O(1) and shares structure, which makes every
    /// transaction's snapshot free.
    map: OrdMap<Bytes, Bytes>,
    /// The version of the last commit.
    version: u64,
    resolver: Resolver,
}

impl MemoryKv {
    pub fn new() -> MemoryKv {
        MemoryKv::with_resolver_commits_max(Resolver::COMMITS_MAX_DEFAULT)
    }

    /// A store whose conflict history keeps at most `commits_max` commits (older read
    /// versions get [`KvError::TransactionTooOld`]).
    pub fn with_resolver_commits_max(commits_max: usize) -> MemoryKv {
        MemoryKv {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    map: OrdMap::new(),
                    version: 0,
                    resolver: Resolver::new(commits_max),
                }),
                live: Arc::default(),
            }),
        }
    }

    /// The number of keys stored (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shared.state().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryKv {
    fn default() -> Self {
        MemoryKv::new()
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Commits apply to the map only after validation succeeded and cannot panic halfway
        // in a way that breaks the map's own invariants, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Kv for MemoryKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        let (map, live) = {
            let state = self.shared.state();
            (state.map.clone(), self.shared.live.enter(|| state.version))
        };
        let commit_path: Arc<dyn CommitPath> = self.shared.clone();
        Ok(Tx::new(Arc::new(OccTx::new(
            Box::new(MemorySnapshot(map)),
            commit_path,
            live,
        ))))
    }
}

#[async_trait]
impl CommitPath for Shared {
    async fn commit(&self, request: CommitRequest) -> Result<(), KvError> {
        let mut state = self.state();
        let now = Instant::now();
        // Under the state lock, which `begin` holds while it enters: no transaction can slip
        // in below the version read here.
        let oldest_read = self.live.oldest().unwrap_or(state.version);
        state.resolver.prune(now, oldest_read);
        state.resolver.check(request.read_version, &request.reads)?;
        state.version += 1;
        let version = state.version;
        state.resolver.record(version, now, &request.mutations);
        let map = &mut state.map;
        for (begin, end) in &request.mutations.cleared {
            let doomed: Vec<Bytes> = map
                .range::<_, [u8]>(bounds(begin, end))
                .map(|(k, _)| k.clone())
                .collect();
            for key in doomed {
                map.remove::<[u8]>(&key);
            }
        }
        for (key, value) in request.mutations.points {
            match value {
                Some(value) => {
                    map.insert(key.into(), value.into());
                }
                None => {
                    map.remove::<[u8]>(&key);
                }
            }
        }
        Ok(())
    }
}

fn bounds<'a>(begin: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(begin), Bound::Excluded(end))
}

struct MemorySnapshot(OrdMap<Bytes, Bytes>);

impl Snapshot for MemorySnapshot {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.0.get(key).map(|value| value.to_vec()))
    }

    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        let take = if limit == 0 { usize::MAX } else { limit };
        let range = self.0.range::<_, [u8]>(bounds(begin, end));
        let pairs = |(k, v): (&Bytes, &Bytes)| (k.to_vec(), v.to_vec());
        Ok(if reverse {
            range.rev().take(take).map(pairs).collect()
        } else {
            range.take(take).map(pairs).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn write(kv: &MemoryKv, key: &[u8]) {
        let tx = kv.begin().await.expect("begin");
        tx.set(key, b"v");
        tx.commit().await.expect("commit");
    }

    /// The resolver keeps a commit only while a live transaction could conflict with it.
    #[tokio::test]
    async fn commits_are_forgotten_once_no_live_transaction_reads_below_them() {
        let kv = MemoryKv::new();
        for i in 0..100u8 {
            write(&kv, &[i]).await;
        }
        // Each commit pruned everything before it: nobody was reading.
        assert!(kv.shared.state().resolver.commits_held() <= 1);

        let old = kv.begin().await.expect("begin");
        let _ = old.get(b"k").await.expect("read");
        for i in 0..100u8 {
            write(&kv, &[i]).await;
        }
        // `old` reads below all of them: they stay, and its conflict is still found.
        assert!(kv.shared.state().resolver.commits_held() >= 100);
        write(&kv, b"k").await;
        old.set(b"x", b"y");
        assert_eq!(old.commit().await, Err(KvError::NotCommitted));
        drop(old);
        write(&kv, b"z").await;
        assert!(kv.shared.state().resolver.commits_held() <= 1);
    }
}
