//! The key-value model: a `BTreeMap`, the operations run against it and against a real
//! [`Tx`], and FoundationDB's conflict rule written out over plain key ranges.

use chat_store::{KvError, Tx};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use std::collections::BTreeMap;
use std::ops::Bound;

pub type Key = Vec<u8>;
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// A half-open key range `[begin, end)`.
pub type KeyRange = (Key, Key);

/// The key alphabet: few letters and short keys, so operations collide often.
pub const KEY_ALPHABET: &[u8] = b"abc";
/// Point keys have 1 to this many letters: 3 + 9 = 12 keys.
pub const KEY_LEN_MAX: usize = 2;
/// Greater than every key the strategies make: `[b"", END)` is the whole keyspace.
pub const END: &[u8] = b"\xff";

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Get(Key),
    GetRange {
        begin: Key,
        end: Key,
        limit: usize,
        reverse: bool,
    },
    Set(Key, Vec<u8>),
    Clear(Key),
    ClearRange(Key, Key),
}

/// What a read returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    Value(Option<Vec<u8>>),
    Pairs(Pairs),
}

/// A point key.
pub fn key() -> impl Strategy<Value = Key> {
    vec(select(KEY_ALPHABET), 1..=KEY_LEN_MAX)
}

/// A range bound: any key, the empty key (below all), or [`END`] (above all). Two bounds
/// drawn independently are often inverted or equal: empty ranges are part of the contract.
pub fn bound() -> impl Strategy<Value = Key> {
    prop_oneof![
        6 => vec(select(KEY_ALPHABET), 0..=KEY_LEN_MAX),
        1 => Just(END.to_vec()),
    ]
}

/// A value; the empty value is a value, not a deletion.
pub fn value() -> impl Strategy<Value = Vec<u8>> {
    vec(select(b"xyz".as_slice()), 0..=3)
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => key().prop_map(Op::Get),
        3 => (bound(), bound(), 0..=4usize, any::<bool>())
            .prop_map(|(begin, end, limit, reverse)| Op::GetRange { begin, end, limit, reverse }),
        4 => (key(), value()).prop_map(|(k, v)| Op::Set(k, v)),
        2 => key().prop_map(Op::Clear),
        1 => (bound(), bound()).prop_map(|(b, e)| Op::ClearRange(b, e)),
    ]
}

pub fn ops(len_max: usize) -> impl Strategy<Value = Vec<Op>> {
    vec(op(), 0..=len_max)
}

/// The trivially-correct store: an ordered map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    map: BTreeMap<Key, Vec<u8>>,
}

impl Model {
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }

    /// Pairs in `[begin, end)`, ascending or descending, at most `limit` (0: all).
    pub fn range(&self, begin: &[u8], end: &[u8], limit: usize, reverse: bool) -> Pairs {
        if begin >= end {
            return Vec::new();
        }
        let take = if limit == 0 { usize::MAX } else { limit };
        let range = self
            .map
            .range::<[u8], _>((Bound::Included(begin), Bound::Excluded(end)));
        let pair = |(k, v): (&Key, &Vec<u8>)| (k.clone(), v.clone());
        if reverse {
            range.rev().take(take).map(pair).collect()
        } else {
            range.take(take).map(pair).collect()
        }
    }

    pub fn set(&mut self, key: &[u8], value: &[u8]) {
        self.map.insert(key.to_vec(), value.to_vec());
    }

    pub fn clear(&mut self, key: &[u8]) {
        self.map.remove(key);
    }

    pub fn clear_range(&mut self, begin: &[u8], end: &[u8]) {
        self.map
            .retain(|k, _| !(begin <= k.as_slice() && k.as_slice() < end));
    }

    /// Every pair, ascending.
    pub fn pairs(&self) -> Pairs {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The keys and ranges a transaction wrote.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    pub points: Vec<Key>,
    pub ranges: Vec<KeyRange>,
}

impl WriteSet {
    /// A transaction without mutations is read-only: it commits without a conflict check,
    /// since all its reads came from one consistent snapshot (as in FoundationDB).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.ranges.is_empty()
    }

    /// Whether any write falls in any of `reads`.
    pub fn intersects(&self, reads: &[KeyRange]) -> bool {
        reads.iter().any(|(begin, end)| {
            self.points.iter().any(|p| begin <= p && p < end)
                || self.ranges.iter().any(|(b, e)| b < end && begin < e)
        })
    }
}

/// A transaction of the model: the snapshot it began on with its own writes applied (so
/// reads see their own writes), its read-conflict ranges and its mutations in order.
#[derive(Debug, Clone)]
pub struct ModelTx {
    view: Model,
    pub reads: Vec<KeyRange>,
    pub writes: WriteSet,
    mutations: Vec<Op>,
}

impl ModelTx {
    pub fn begin(snapshot: &Model) -> ModelTx {
        ModelTx {
            view: snapshot.clone(),
            reads: Vec::new(),
            writes: WriteSet::default(),
            mutations: Vec::new(),
        }
    }

    /// Runs `op`; returns what a read returns, `None` for a mutation.
    ///
    /// Read-conflict ranges follow FoundationDB: a `get` depends on its key, whether or not
    /// the transaction wrote it first (the store records those too, conservatively); a range
    /// read that filled its limit depends only on the part it covered, up to its last key.
    pub fn apply(&mut self, op: &Op) -> Option<ReadResult> {
        match op {
            Op::Get(key) => {
                self.reads.push((key.clone(), key_after(key)));
                Some(ReadResult::Value(self.view.get(key)))
            }
            Op::GetRange {
                begin,
                end,
                limit,
                reverse,
            } => {
                let pairs = self.view.range(begin, end, *limit, *reverse);
                if begin < end {
                    let covered = match pairs.last() {
                        Some((last, _)) if *limit != 0 && pairs.len() == *limit => {
                            if *reverse {
                                (last.clone(), end.clone())
                            } else {
                                (begin.clone(), key_after(last))
                            }
                        }
                        _ => (begin.clone(), end.clone()),
                    };
                    self.reads.push(covered);
                }
                Some(ReadResult::Pairs(pairs))
            }
            Op::Set(key, value) => {
                self.view.set(key, value);
                self.writes.points.push(key.clone());
                self.mutations.push(op.clone());
                None
            }
            Op::Clear(key) => {
                self.view.clear(key);
                self.writes.points.push(key.clone());
                self.mutations.push(op.clone());
                None
            }
            Op::ClearRange(begin, end) => {
                if begin < end {
                    self.view.clear_range(begin, end);
                    self.writes.ranges.push((begin.clone(), end.clone()));
                    self.mutations.push(op.clone());
                }
                None
            }
        }
    }

    /// Applies this transaction's mutations, in order, to `model` (which may have moved on
    /// since the snapshot: mutations are blind writes).
    pub fn apply_writes_to(&self, model: &mut Model) {
        for op in &self.mutations {
            match op {
                Op::Set(key, value) => model.set(key, value),
                Op::Clear(key) => model.clear(key),
                Op::ClearRange(begin, end) => model.clear_range(begin, end),
                Op::Get(_) | Op::GetRange { .. } => unreachable!("only mutations are recorded"),
            }
        }
    }
}

/// Runs `op` on a real transaction; `None` for a mutation.
pub async fn run_op(tx: &Tx, op: &Op) -> Result<Option<ReadResult>, KvError> {
    Ok(match op {
        Op::Get(key) => Some(ReadResult::Value(tx.get(key).await?)),
        Op::GetRange {
            begin,
            end,
            limit,
            reverse,
        } => Some(ReadResult::Pairs(
            tx.get_range(begin, end, *limit, *reverse).await?,
        )),
        Op::Set(key, value) => {
            tx.set(key, value);
            None
        }
        Op::Clear(key) => {
            tx.clear(key);
            None
        }
        Op::ClearRange(begin, end) => {
            tx.clear_range(begin, end);
            None
        }
    })
}

/// Every pair in the store, read by a fresh transaction.
pub async fn read_all(kv: &dyn chat_store::Kv) -> Result<Pairs, KvError> {
    kv.begin().await?.get_range(b"", END, 0, false).await
}

/// The smallest key after `key`.
pub fn key_after(key: &[u8]) -> Key {
    let mut next = key.to_vec();
    next.push(0);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ranges_are_half_open_and_limited() {
        let mut m = Model::default();
        for k in [&b"a"[..], b"ab", b"b", b"c"] {
            m.set(k, k);
        }
        let keys = |pairs: Pairs| pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(m.range(b"a", b"b", 0, false)),
            vec![b"a".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            keys(m.range(b"", END, 2, true)),
            vec![b"c".to_vec(), b"b".to_vec()]
        );
        assert!(m.range(b"b", b"a", 0, false).is_empty());
        m.clear_range(b"ab", b"c");
        assert_eq!(
            keys(m.range(b"", END, 0, false)),
            vec![b"a".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn limited_reads_depend_on_what_they_covered() {
        let mut m = Model::default();
        for k in [&b"a"[..], b"b", b"c"] {
            m.set(k, b"");
        }
        let mut tx = ModelTx::begin(&m);
        tx.apply(&Op::GetRange {
            begin: b"".to_vec(),
            end: END.to_vec(),
            limit: 2,
            reverse: false,
        });
        tx.apply(&Op::GetRange {
            begin: b"".to_vec(),
            end: END.to_vec(),
            limit: 1,
            reverse: true,
        });
        assert_eq!(
            tx.reads,
            vec![
                (b"".to_vec(), b"b\0".to_vec()),
                (b"c".to_vec(), END.to_vec())
            ]
        );
    }
}
