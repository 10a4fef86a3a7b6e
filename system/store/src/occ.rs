//! Optimistic concurrency control shared by the local backends, modelled on FoundationDB.
//!
//! A transaction ([`OccTx`]) reads from a consistent snapshot taken at its *read version*
//! and buffers its writes. At commit it sends its read version, the key ranges it read
//! (read-conflict set) and its mutations to the backend's commit path, which asks a
//! [`Resolver`]: did any transaction that committed *after* our read version write a key we
//! read? If so the commit fails with [`KvError::NotCommitted`] and the run loop retries on a
//! fresh snapshot. That makes every committed transaction serializable in commit order, as
//! in FoundationDB. Transactions without mutations commit trivially: their reads all came
//! from one snapshot, which is a consistent point in the commit order.

use crate::kv::{KEY_BYTES_MAX, KvError, KvTx, TX_BYTES_MAX, TX_LIFETIME, VALUE_BYTES_MAX};
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A half-open key range `[begin, end)`.
pub(crate) type KeyRange = (Vec<u8>, Vec<u8>);
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// Snapshot range reads fetch at least this many pairs per page, so a page that loses a few
/// pairs to the transaction's own clears does not cost a second round trip.
const RANGE_PAGE_LEN_MIN: usize = 64;

/// The smallest key strictly greater than `key`.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// A consistent, immutable view of the committed data at (or after, see the redb backend)
/// the transaction's read version. Calls are synchronous: both local backends read memory or
/// a memory-mapped B-tree.
pub(crate) trait Snapshot: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Like [`KvTx::get_range`]; `begin < end` is guaranteed by the caller.
    fn range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError>;
}

/// A backend's way to validate and apply a transaction.
#[async_trait]
pub(crate) trait CommitPath: Send + Sync + 'static {
    async fn commit(&self, request: CommitRequest) -> Result<(), KvError>;
}

/// The buffered writes of one transaction, in the form a backend applies them: first every
/// cleared range, then every point write. That order reproduces the transaction's own order
/// because [`WriteBuffer::clear_range`] drops point writes it covers: every point write left
/// was issued after every clear covering it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Mutations {
    pub cleared: Vec<KeyRange>,
    /// Sorted by key; `None` clears the key.
    pub points: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Bytes of keys and values, as counted against [`TX_BYTES_MAX`].
    pub bytes: usize,
}

impl Mutations {
    pub fn is_empty(&self) -> bool {
        self.cleared.is_empty() && self.points.is_empty()
    }
}

/// What a transaction sends to its backend's commit path.
#[derive(Debug)]
pub(crate) struct CommitRequest {
    pub read_version: u64,
    pub reads: Vec<KeyRange>,
    pub mutations: Mutations,
}

/// Recent commits' writes, which conflict checks run against.
///
/// A check asks: did a commit newer than this read version write into one of these read
/// ranges? Scanning every newer commit makes that cost grow with the commits in flight
/// (quadratic under load: 66% of `chat serve`'s CPU with 2,000 one-to-one sends in flight).
/// So, like FoundationDB's resolver, this keeps the newest write version *per key* in an
/// ordered map: a point read is one lookup, a range read visits only the keys written in that
/// range. Cleared ranges (rare) are kept apart, in version order.
///
/// Entries are dropped as soon as no live transaction can need them: at or below the oldest
/// read version still in use ([`LiveReads`]). Without that they would stay for all of
/// [`TX_LIFETIME`], and under a one-to-one load the map would hold five seconds of writes
/// (over 100,000 keys) where a few thousand are in play. Entries older than `TX_LIFETIME`,
/// or beyond `commits_max` commits (to bound memory), are dropped even if a transaction
/// still reads below them. `floor` is the newest dropped version:
/// a transaction with an older read version might have missed a dropped conflicting write,
/// so it fails with [`KvError::TransactionTooOld`] and the run loop retries it.
#[derive(Debug)]
pub(crate) struct Resolver {
    /// Per written key, the newest version that wrote it.
    points: BTreeMap<Vec<u8>, u64>,
    /// Cleared ranges with their versions, oldest first.
    ranges: VecDeque<(u64, KeyRange)>,
    /// Every recorded commit, oldest first: what to drop when it expires.
    log: VecDeque<Committed>,
    floor: u64,
    commits_max: usize,
}

#[derive(Debug)]
struct Committed {
    version: u64,
    at: Instant,
    /// Sorted written (set or cleared) keys.
    points: Vec<Vec<u8>>,
}

impl Resolver {
    /// Enough for 5 s of commits at over 3,000 commits a second, a few MB of keys.
    pub const COMMITS_MAX_DEFAULT: usize = 16_384;

    pub fn new(commits_max: usize) -> Resolver {
        assert!(
            commits_max > 0,
            "the resolver must keep at least one commit"
        );
        Resolver {
            points: BTreeMap::new(),
            ranges: VecDeque::new(),
            log: VecDeque::new(),
            floor: 0,
            commits_max,
        }
    }

    /// Drops entries no live transaction can conflict with (at or below `oldest_read`, the
    /// oldest read version in use, see [`LiveReads::oldest`]), and entries too old or beyond
    /// the cap.
    pub fn prune(&mut self, now: Instant, oldest_read: u64) {
        while let Some(front) = self.log.front() {
            let unneeded = front.version <= oldest_read;
            let expired = now.saturating_duration_since(front.at) > TX_LIFETIME;
            if !unneeded && !expired && self.log.len() <= self.commits_max {
                break;
            }
            let Some(dropped) = self.log.pop_front() else {
                break;
            };
            self.floor = dropped.version;
            for key in dropped.points {
                // A newer write of the key keeps its entry.
                if self.points.get(&key) == Some(&dropped.version) {
                    self.points.remove(&key);
                }
            }
            while self
                .ranges
                .front()
                .is_some_and(|(v, _)| *v <= dropped.version)
            {
                self.ranges.pop_front();
            }
        }
    }

    /// Fails if a commit newer than `read_version` wrote into one of `reads`.
    pub fn check(&self, read_version: u64, reads: &[KeyRange]) -> Result<(), KvError> {
        if read_version < self.floor {
            return Err(KvError::TransactionTooOld);
        }
        for (begin, end) in reads {
            let newer = |(_, version): (&Vec<u8>, &u64)| *version > read_version;
            // A point read (`[key, key\0)`, what `get` records) is one lookup.
            let point =
                end.len() == begin.len() + 1 && end.last() == Some(&0) && end.starts_with(begin);
            let written = if point {
                self.points.get_key_value(begin).is_some_and(newer)
            } else {
                self.points.range::<[u8], _>(bounds(begin, end)).any(newer)
            };
            let cleared = || {
                self.ranges
                    .iter()
                    .rev()
                    .take_while(|(v, _)| *v > read_version)
                    .any(|(_, (b, e))| b < end && begin < e)
            };
            if written || cleared() {
                return Err(KvError::NotCommitted);
            }
        }
        Ok(())
    }

    /// Records an accepted commit. Versions must increase.
    pub fn record(&mut self, version: u64, at: Instant, mutations: &Mutations) {
        if let Some(last) = self.log.back() {
            assert!(version > last.version, "commit versions must increase");
        }
        let points: Vec<Vec<u8>> = mutations.points.iter().map(|(k, _)| k.clone()).collect();
        for key in &points {
            self.points.insert(key.clone(), version);
        }
        for range in &mutations.cleared {
            self.ranges.push_back((version, range.clone()));
        }
        self.log.push_back(Committed {
            version,
            at,
            points,
        });
    }

    /// Commits held for conflict checks.
    #[cfg(test)]
    pub fn commits_held(&self) -> usize {
        self.log.len()
    }

    /// Forgets commits newer than `version`: they were accepted but then failed to apply.
    /// Their keys go back to the newest version that still wrote them (a rare path: a scan).
    pub fn forget_after(&mut self, version: u64) {
        let mut forgotten = Vec::new();
        while self.log.back().is_some_and(|c| c.version > version) {
            if let Some(commit) = self.log.pop_back() {
                forgotten.extend(commit.points);
            }
        }
        while self.ranges.back().is_some_and(|(v, _)| *v > version) {
            self.ranges.pop_back();
        }
        for key in forgotten {
            let newest = self
                .log
                .iter()
                .rev()
                .find(|c| c.points.binary_search(&key).is_ok())
                .map(|c| c.version);
            match newest {
                Some(v) => self.points.insert(key, v),
                None => self.points.remove(&key),
            };
        }
    }
}

/// The transaction's own writes, consulted by its reads.
#[derive(Debug, Default)]
struct WriteBuffer {
    points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    cleared: Vec<KeyRange>,
    bytes: usize,
}

enum Own<'a> {
    Set(&'a [u8]),
    Cleared,
    Untouched,
}

impl WriteBuffer {
    fn lookup(&self, key: &[u8]) -> Own<'_> {
        match self.points.get(key) {
            Some(Some(value)) => Own::Set(value),
            Some(None) => Own::Cleared,
            None if self.in_cleared_range(key) => Own::Cleared,
            None => Own::Untouched,
        }
    }

    fn in_cleared_range(&self, key: &[u8]) -> bool {
        self.cleared
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    /// Whether the snapshot's value of `key` is hidden by this transaction's writes.
    fn overrides(&self, key: &[u8]) -> bool {
        !matches!(self.lookup(key), Own::Untouched)
    }

    fn set(&mut self, key: &[u8], value: &[u8]) {
        self.points.insert(key.to_vec(), Some(value.to_vec()));
    }

    fn clear(&mut self, key: &[u8]) {
        self.points.insert(key.to_vec(), None);
    }

    fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        let covered: Vec<Vec<u8>> = self
            .points
            .range::<[u8], _>(bounds(begin, end))
            .map(|(k, _)| k.clone())
            .collect();
        for key in covered {
            self.points.remove(&key);
        }
        self.cleared.push((begin.to_vec(), end.to_vec()));
    }

    /// The transaction's own set values in `[begin, end)`.
    fn sets_in<'a>(
        &'a self,
        begin: &'a [u8],
        end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> {
        self.points
            .range::<[u8], _>(bounds(begin, end))
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }

    fn into_mutations(self) -> Mutations {
        Mutations {
            cleared: self.cleared,
            points: self.points.into_iter().collect(),
            bytes: self.bytes,
        }
    }
}

fn bounds<'a>(begin: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(begin), Bound::Excluded(end))
}

/// The read versions of the transactions alive now (begun and not yet dropped), so the
/// resolver can forget a commit as soon as none of them can conflict with it.
#[derive(Debug, Default)]
pub(crate) struct LiveReads {
    // A std Mutex: one map operation per begin and per drop, never held across an await.
    versions: Mutex<BTreeMap<u64, usize>>,
}

impl LiveReads {
    /// Registers a transaction that reads at `version()`. The version is read under the lock,
    /// so a concurrent [`LiveReads::oldest`] sees either this transaction or a read version
    /// no newer than the one it gets: a prune never drops a commit it needs.
    pub fn enter(self: &Arc<Self>, version: impl FnOnce() -> u64) -> LiveRead {
        let mut versions = self.lock();
        let version = version();
        *versions.entry(version).or_insert(0) += 1;
        LiveRead {
            reads: self.clone(),
            version,
        }
    }

    /// The oldest read version in use; `None` when no transaction is alive, and then every
    /// commit up to the current version may go (later transactions read at or after it).
    pub fn oldest(&self) -> Option<u64> {
        self.lock().keys().next().copied()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, usize>> {
        self.versions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One live transaction's read version; leaves [`LiveReads`] when dropped.
pub(crate) struct LiveRead {
    reads: Arc<LiveReads>,
    version: u64,
}

impl LiveRead {
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for LiveRead {
    fn drop(&mut self) {
        let mut versions = self.reads.lock();
        if let Some(count) = versions.get_mut(&self.version) {
            *count -= 1;
            if *count == 0 {
                versions.remove(&self.version);
            }
        }
    }
}

/// The generic optimistic transaction used by [`crate::MemoryKv`] and [`crate::RedbKv`].
pub(crate) struct OccTx {
    snapshot: Box<dyn Snapshot>,
    commit_path: Arc<dyn CommitPath>,
    read_version: u64,
    /// Keeps the commits this transaction may conflict with in the resolver until it ends.
    _live: LiveRead,
    began: Instant,
    // A std Mutex: it guards plain data and is never held across an `.await`.
    state: Mutex<TxState>,
}

#[derive(Default)]
struct TxState {
    writes: WriteBuffer,
    reads: Vec<KeyRange>,
    /// The first failed mutation (size limits); reported by later reads and by the commit.
    error: Option<KvError>,
    /// The commit's outcome once it ran; a second `commit` answers it again.
    committed: Option<Result<(), KvError>>,
}

impl OccTx {
    pub fn new(
        snapshot: Box<dyn Snapshot>,
        commit_path: Arc<dyn CommitPath>,
        live: LiveRead,
    ) -> OccTx {
        OccTx {
            snapshot,
            commit_path,
            read_version: live.version(),
            _live: live,
            began: Instant::now(),
            state: Mutex::new(TxState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, TxState> {
        // A panic while holding this lock leaves plain buffers behind, still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The checks every read and the commit start with.
    fn check_usable(&self, state: &TxState) -> Result<(), KvError> {
        if let Some(error) = &state.error {
            return Err(error.clone());
        }
        if self.began.elapsed() > TX_LIFETIME {
            return Err(KvError::TransactionTooOld);
        }
        Ok(())
    }

    fn mutate(&self, bytes: usize, apply: impl FnOnce(&mut WriteBuffer)) {
        let mut state = self.state();
        debug_assert!(state.committed.is_none(), "mutation after commit");
        state.writes.bytes = state.writes.bytes.saturating_add(bytes);
        if state.writes.bytes > TX_BYTES_MAX {
            state.error.get_or_insert(KvError::TransactionTooLarge);
            return;
        }
        apply(&mut state.writes);
    }

    fn fail(&self, error: KvError) {
        self.state().error.get_or_insert(error);
    }

    /// Merges the snapshot's pairs in `[begin, end)` with the transaction's own writes.
    /// Returns the pairs and the key range they depend on (the read-conflict range).
    fn merged_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<(Vec<KeyValue>, KeyRange), KvError> {
        let wanted = if limit == 0 { usize::MAX } else { limit };
        let mut state = self.state();
        self.check_usable(&state)?;
        // Holding the lock across the snapshot reads is fine: they are synchronous.

        // 1. Snapshot pairs not hidden by our own writes, page by page until we have enough.
        let mut kept: Vec<KeyValue> = Vec::new();
        let (mut lo, mut hi) = (begin.to_vec(), end.to_vec());
        loop {
            let page_len = if limit == 0 {
                0
            } else {
                (wanted - kept.len()).max(RANGE_PAGE_LEN_MIN)
            };
            let page = self.snapshot.range(&lo, &hi, page_len, reverse)?;
            let page_full = page_len != 0 && page.len() == page_len;
            let last_key = page.last().map(|(k, _)| k.clone());
            for (key, value) in page {
                if !state.writes.overrides(&key) {
                    kept.push((key, value));
                    if kept.len() == wanted {
                        break;
                    }
                }
            }
            let Some(last_key) = last_key else { break };
            if kept.len() >= wanted || !page_full {
                break;
            }
            if reverse {
                hi = last_key;
            } else {
                lo = key_after(&last_key);
            }
            if lo >= hi {
                break;
            }
        }

        // 2. Our own sets in the range. Snapshot pairs beyond the last kept one are never
        // needed: `kept` alone already fills the limit before them.
        let mut merged = kept;
        merged.extend(
            state
                .writes
                .sets_in(begin, end)
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if reverse {
            merged.sort_by(|a, b| b.0.cmp(&a.0));
        } else {
            merged.sort_by(|a, b| a.0.cmp(&b.0));
        }
        merged.truncate(wanted);

        // 3. Like FoundationDB, a limited read only depends on the part of the range it
        // covered: a write past its last key cannot change its answer.
        let conflict = match merged.last() {
            Some((last, _)) if merged.len() == wanted && limit != 0 => {
                if reverse {
                    (last.clone(), end.to_vec())
                } else {
                    (begin.to_vec(), key_after(last))
                }
            }
            _ => (begin.to_vec(), end.to_vec()),
        };
        state.reads.push(conflict.clone());
        Ok((merged, conflict))
    }
}

#[async_trait]
impl KvTx for OccTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(KvError::KeyTooLarge);
        }
        let mut state = self.state();
        self.check_usable(&state)?;
        // Reads answered from our own writes are recorded too: conservative (a spurious
        // conflict at worst) and simpler than FoundationDB's exact rule.
        state.reads.push((key.to_vec(), key_after(key)));
        match state.writes.lookup(key) {
            Own::Set(value) => Ok(Some(value.to_vec())),
            Own::Cleared => Ok(None),
            Own::Untouched => {
                drop(state);
                self.snapshot.get(key)
            }
        }
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        if begin >= end {
            let state = self.state();
            self.check_usable(&state)?;
            return Ok(Vec::new());
        }
        self.merged_range(begin, end, limit, reverse)
            .map(|(pairs, _)| pairs)
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        if key.len() > KEY_BYTES_MAX {
            return self.fail(KvError::KeyTooLarge);
        }
        if value.len() > VALUE_BYTES_MAX {
            return self.fail(KvError::ValueTooLarge);
        }
        self.mutate(key.len() + value.len(), |w| w.set(key, value));
    }

    fn clear(&self, key: &[u8]) {
        if key.len() > KEY_BYTES_MAX {
            return self.fail(KvError::KeyTooLarge);
        }
        self.mutate(key.len(), |w| w.clear(key));
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        if begin >= end {
            return;
        }
        self.mutate(begin.len() + end.len(), |w| w.clear_range(begin, end));
    }

    async fn commit(&self) -> Result<(), KvError> {
        let request = {
            let mut state = self.state();
            if let Some(outcome) = &state.committed {
                return outcome.clone();
            }
            if let Err(error) = self.check_usable(&state) {
                state.committed = Some(Err(error.clone()));
                return Err(error);
            }
            let mutations = std::mem::take(&mut state.writes).into_mutations();
            if mutations.is_empty() {
                // Read-only: every read came from one consistent snapshot.
                state.committed = Some(Ok(()));
                return Ok(());
            }
            CommitRequest {
                read_version: self.read_version,
                reads: std::mem::take(&mut state.reads),
                mutations,
            }
        };
        let outcome = self.commit_path.commit(request).await;
        self.state().committed = Some(outcome.clone());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn muts(points: &[&[u8]], cleared: &[(&[u8], &[u8])]) -> Mutations {
        Mutations {
            points: points.iter().map(|k| (k.to_vec(), Some(vec![]))).collect(),
            cleared: cleared
                .iter()
                .map(|(b, e)| (b.to_vec(), e.to_vec()))
                .collect(),
            bytes: 0,
        }
    }

    fn read(b: &[u8], e: &[u8]) -> KeyRange {
        (b.to_vec(), e.to_vec())
    }

    #[test]
    fn resolver_detects_only_newer_overlapping_writes() {
        let now = Instant::now();
        let mut r = Resolver::new(10);
        r.record(1, now, &muts(&[b"a"], &[]));
        r.record(2, now, &muts(&[b"m"], &[(b"x", b"z")]));
        // Read before version 1: sees both.
        assert_eq!(r.check(0, &[read(b"a", b"b")]), Err(KvError::NotCommitted));
        // Read at version 1: the write of `a` is already in its snapshot.
        assert_eq!(r.check(1, &[read(b"a", b"b")]), Ok(()));
        assert_eq!(r.check(1, &[read(b"l", b"n")]), Err(KvError::NotCommitted));
        assert_eq!(r.check(1, &[read(b"n", b"x")]), Ok(()));
        assert_eq!(
            r.check(1, &[read(b"y", b"y\0")]),
            Err(KvError::NotCommitted)
        );
        assert_eq!(r.check(1, &[]), Ok(()));
        r.forget_after(1);
        assert_eq!(r.check(1, &[read(b"l", b"n")]), Ok(()));
    }

    #[test]
    fn resolver_prunes_by_count_and_age_and_raises_the_floor() {
        let now = Instant::now();
        let mut r = Resolver::new(2);
        for v in 1..=3 {
            r.record(v, now, &muts(&[b"k"], &[]));
        }
        r.prune(now, 0);
        assert_eq!(r.check(0, &[]), Err(KvError::TransactionTooOld));
        assert_eq!(r.check(1, &[read(b"k", b"l")]), Err(KvError::NotCommitted));
        r.prune(now + TX_LIFETIME + std::time::Duration::from_millis(1), 0);
        assert_eq!(r.check(2, &[]), Err(KvError::TransactionTooOld));
        assert_eq!(r.check(3, &[read(b"k", b"l")]), Ok(()));
    }

    #[test]
    fn resolver_forgets_commits_no_live_transaction_can_conflict_with() {
        let now = Instant::now();
        let mut r = Resolver::new(100);
        for v in 1..=4 {
            r.record(v, now, &muts(&[format!("k{v}").as_bytes()], &[]));
        }
        // The oldest transaction alive reads at version 2: commits 1 and 2 go, 3 and 4 stay.
        r.prune(now, 2);
        assert_eq!(r.log.len(), 2);
        assert_eq!(r.points.len(), 2);
        assert_eq!(r.check(1, &[]), Err(KvError::TransactionTooOld));
        assert_eq!(
            r.check(2, &[read(b"k3", b"k3\0")]),
            Err(KvError::NotCommitted)
        );
        assert_eq!(r.check(2, &[read(b"k1", b"k2\0")]), Ok(()));
        r.prune(now, 4);
        assert!(r.log.is_empty() && r.points.is_empty());
    }

    #[test]
    fn live_reads_track_the_oldest_version_in_use() {
        let live = Arc::new(LiveReads::default());
        assert_eq!(live.oldest(), None);
        let a = live.enter(|| 3);
        let b = live.enter(|| 3);
        let c = live.enter(|| 5);
        assert_eq!(live.oldest(), Some(3));
        drop(a);
        assert_eq!(live.oldest(), Some(3));
        drop(b);
        assert_eq!(live.oldest(), Some(5));
        drop(c);
        assert_eq!(live.oldest(), None);
    }

    /// The resolver as it was (every newer commit scanned), kept as the model the indexed
    /// one must agree with.
    struct NaiveResolver {
        log: VecDeque<(u64, Vec<Vec<u8>>, Vec<KeyRange>)>,
        floor: u64,
        commits_max: usize,
    }

    impl NaiveResolver {
        fn check(&self, read_version: u64, reads: &[KeyRange]) -> Result<(), KvError> {
            if read_version < self.floor {
                return Err(KvError::TransactionTooOld);
            }
            for (_, points, ranges) in self.log.iter().filter(|(v, _, _)| *v > read_version) {
                let hit = reads.iter().any(|(b, e)| {
                    points.iter().any(|k| b <= k && k < e)
                        || ranges.iter().any(|(rb, re)| rb < e && b < re)
                });
                if hit {
                    return Err(KvError::NotCommitted);
                }
            }
            Ok(())
        }
    }

    #[test]
    fn the_indexed_resolver_agrees_with_scanning_every_newer_commit() {
        let now = Instant::now();
        // xorshift: reproducible without a dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let key = |i: u64| -> Vec<u8> {
            if i.is_multiple_of(3) {
                vec![b'a' + (i % 8) as u8]
            } else {
                vec![b'a' + (i % 8) as u8, b'0' + (i % 5) as u8]
            }
        };
        for round in 0..20 {
            let commits_max = 1 + next(30) as usize;
            let mut indexed = Resolver::new(commits_max);
            let mut naive = NaiveResolver {
                log: VecDeque::new(),
                floor: 0,
                commits_max,
            };
            let mut version = 0;
            for _ in 0..400 {
                match next(10) {
                    0..=3 => {
                        version += 1;
                        let mut points: Vec<Vec<u8>> =
                            (0..1 + next(3)).map(|_| key(next(40))).collect();
                        points.sort();
                        points.dedup();
                        let cleared: Vec<KeyRange> = if next(8) == 0 {
                            let (x, y) = (key(next(40)), key(next(40)));
                            vec![if x < y { (x, y) } else { (y, key_after(&x)) }]
                        } else {
                            Vec::new()
                        };
                        let m = Mutations {
                            points: points.iter().map(|k| (k.clone(), Some(vec![]))).collect(),
                            cleared: cleared.clone(),
                            bytes: 0,
                        };
                        indexed.record(version, now, &m);
                        naive.log.push_back((version, points, cleared));
                    }
                    4 => {
                        let oldest_read = version.saturating_sub(next(15));
                        indexed.prune(now, oldest_read);
                        while naive.log.len() > naive.commits_max
                            || naive.log.front().is_some_and(|(v, _, _)| *v <= oldest_read)
                        {
                            if let Some((v, _, _)) = naive.log.pop_front() {
                                naive.floor = v;
                            }
                        }
                    }
                    5 if version > 0 => {
                        let to = version - next(3).min(version);
                        indexed.forget_after(to);
                        naive.log.retain(|(v, _, _)| *v <= to);
                        version = to;
                    }
                    _ => {
                        let read_version = version.saturating_sub(next(12));
                        let reads: Vec<KeyRange> = (0..1 + next(3))
                            .map(|_| {
                                let k = key(next(40));
                                if next(2) == 0 {
                                    let end = key_after(&k);
                                    (k, end)
                                } else {
                                    let other = key(next(40));
                                    if k < other {
                                        (k, other)
                                    } else {
                                        (other, key_after(&k))
                                    }
                                }
                            })
                            .collect();
                        assert_eq!(
                            indexed.check(read_version, &reads),
                            naive.check(read_version, &reads),
                            "round {round}, read version {read_version}, reads {reads:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn clear_range_drops_earlier_point_writes_only() {
        let mut w = WriteBuffer::default();
        w.set(b"b", b"1");
        w.clear_range(b"a", b"c");
        w.set(b"bb", b"2");
        assert!(matches!(w.lookup(b"b"), Own::Cleared));
        assert!(matches!(w.lookup(b"bb"), Own::Set(b"2")));
        assert!(matches!(w.lookup(b"c"), Own::Untouched));
        let m = w.into_mutations();
        assert_eq!(m.cleared, vec![read(b"a", b"c")]);
        assert_eq!(m.points, vec![(b"bb".to_vec(), Some(b"2".to_vec()))]);
    }
}
