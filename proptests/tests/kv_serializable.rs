//! Concurrent transactions on every backend: two or three begin on the same snapshot, read
//! and write at random, and commit in a random order. Each commit succeeds or fails with
//! `NotCommitted` exactly as FoundationDB's rule says (a transaction with writes fails iff
//! its read set meets the write set of one that committed before it since it began), and
//! the store ends as the serial application of the successful ones, in commit order.

use chat_proptests::backend::{Backend, block_on, config};
use chat_proptests::kv_model::{Model, ModelTx, Op, key, ops, read_all, run_op, value};
use chat_store::KvError;
use proptest::collection::vec;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    /// Committed before the concurrent transactions begin.
    setup: Vec<(Vec<u8>, Vec<u8>)>,
    transactions: Vec<Vec<Op>>,
    /// A permutation of the transactions' indices.
    commit_order: Vec<usize>,
}

fn cases() -> impl Strategy<Value = Case> {
    (vec((key(), value()), 0..=8), vec(ops(8), 2..=3)).prop_flat_map(|(setup, transactions)| {
        let order: Vec<usize> = (0..transactions.len()).collect();
        (Just(setup), Just(transactions), Just(order).prop_shuffle()).prop_map(
            |(setup, transactions, commit_order)| Case {
                setup,
                transactions,
                commit_order,
            },
        )
    })
}

fn check(backend: Backend, case: Case) -> Result<(), TestCaseError> {
    let store = backend.open();
    block_on(async {
        let kv = &*store.kv;
        let fail = |what: &str, e: KvError| TestCaseError::fail(format!("{what}: {e}"));
        let mut model = Model::default();
        let setup = kv.begin().await.map_err(|e| fail("begin setup", e))?;
        for (k, v) in &case.setup {
            setup.set(k, v);
            model.set(k, v);
        }
        setup.commit().await.map_err(|e| fail("commit setup", e))?;

        // All begin before any commits: they are concurrent with each other.
        let mut txs = Vec::new();
        let mut expected = Vec::new();
        for _ in &case.transactions {
            txs.push(kv.begin().await.map_err(|e| fail("begin", e))?);
            expected.push(ModelTx::begin(&model));
        }
        // Operations interleaved round-robin; reads see the snapshot plus their own writes.
        let ops_max = case.transactions.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..ops_max {
            for (t, ops) in case.transactions.iter().enumerate() {
                let Some(op) = ops.get(i) else { continue };
                let got = run_op(&txs[t], op)
                    .await
                    .map_err(|e| fail(&format!("tx {t} op {i} {op:?}"), e))?;
                prop_assert_eq!(got, expected[t].apply(op), "tx {} op {}: {:?}", t, i, op);
            }
        }

        let mut committed: Vec<usize> = Vec::new();
        for &t in &case.commit_order {
            let outcome = txs[t].commit().await;
            let mine = &expected[t];
            let conflicts_with = committed
                .iter()
                .copied()
                .find(|&earlier| expected[earlier].writes.intersects(&mine.reads));
            match (mine.writes.is_empty(), conflicts_with) {
                (false, Some(earlier)) => prop_assert_eq!(
                    outcome,
                    Err(KvError::NotCommitted),
                    "tx {} read what tx {} (committed before it) wrote",
                    t,
                    earlier
                ),
                _ => {
                    prop_assert_eq!(
                        outcome,
                        Ok(()),
                        "tx {} has no conflict (read-only: {})",
                        t,
                        mine.writes.is_empty()
                    );
                    mine.apply_writes_to(&mut model);
                    committed.push(t);
                }
            }
        }
        let stored = read_all(kv).await.map_err(|e| fail("read all", e))?;
        prop_assert_eq!(
            stored,
            model.pairs(),
            "successful transactions applied serially in commit order {:?}",
            committed
        );
        Ok(())
    })
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn memory_kv_commits_serializably(case in cases()) {
        check(Backend::Memory, case)?;
    }
}

proptest! {
    // Each commit fsyncs.
    #![proptest_config(config(64))]
    #[test]
    fn redb_kv_commits_serializably(case in cases()) {
        check(Backend::Redb, case)?;
    }
}
