//! Random transactions, one after another, on every backend: every read equals the model's
//! (read-your-writes included), and so do the final contents.

use chat_proptests::backend::{Backend, block_on, config};
use chat_proptests::kv_model::{Model, ModelTx, Op, ops, read_all, run_op};
use proptest::collection::vec;
use proptest::prelude::*;

/// One transaction of a case: its operations, and whether it commits or is dropped.
#[derive(Debug, Clone)]
struct Transaction {
    ops: Vec<Op>,
    commit: bool,
}

fn transactions() -> impl Strategy<Value = Vec<Transaction>> {
    let transaction =
        (ops(10), prop::bool::weighted(0.85)).prop_map(|(ops, commit)| Transaction { ops, commit });
    vec(transaction, 1..=8)
}

fn check(backend: Backend, transactions: Vec<Transaction>) -> Result<(), TestCaseError> {
    let store = backend.open();
    block_on(async {
        let kv = &*store.kv;
        let mut model = Model::default();
        for (t, transaction) in transactions.iter().enumerate() {
            let tx = kv
                .begin()
                .await
                .map_err(|e| TestCaseError::fail(format!("begin: {e}")))?;
            let mut expected = ModelTx::begin(&model);
            for (i, op) in transaction.ops.iter().enumerate() {
                let got = run_op(&tx, op)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("tx {t} op {i} {op:?}: {e}")))?;
                let want = expected.apply(op);
                prop_assert_eq!(got, want, "tx {} op {}: {:?}", t, i, op);
            }
            if transaction.commit {
                // Nothing runs concurrently: every commit must succeed.
                tx.commit()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("tx {t} commit: {e}")))?;
                expected.apply_writes_to(&mut model);
            } else {
                drop(tx);
            }
            let stored = read_all(kv)
                .await
                .map_err(|e| TestCaseError::fail(format!("read all: {e}")))?;
            prop_assert_eq!(stored, model.pairs(), "contents after tx {}", t);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(config(256))]
    #[test]
    fn memory_kv_matches_the_model(transactions in transactions()) {
        check(Backend::Memory, transactions)?;
    }
}

proptest! {
    // Each commit fsyncs.
    #![proptest_config(config(48))]
    #[test]
    fn redb_kv_matches_the_model(transactions in transactions()) {
        check(Backend::Redb, transactions)?;
    }
}
