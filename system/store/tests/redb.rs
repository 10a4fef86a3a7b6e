//! What only the durable backend promises: durability across reopen, and group commit.
#![cfg(not(madsim))]

use chat_store::{Kv, KvError, RedbKv, RedbOptions};
use futures::future::join_all;
use std::sync::Arc;

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    {
        let kv = RedbKv::open(&path).expect("open");
        let tx = kv.begin().await.expect("begin");
        tx.set(b"a", b"1");
        tx.set(b"b", b"2");
        tx.commit().await.expect("commit");
        let tx = kv.begin().await.expect("begin");
        tx.clear(b"b");
        tx.commit().await.expect("commit");
        // Dropping closes the file: the writer drains and exits first.
    }
    let kv = RedbKv::open(&path).expect("reopen right after drop");
    let tx = kv.begin().await.expect("begin");
    assert_eq!(tx.get(b"a").await, Ok(Some(b"1".to_vec())));
    assert_eq!(tx.get(b"b").await, Ok(None));
    // Versions restart with the process; new commits work as before.
    let tx = kv.begin().await.expect("begin");
    tx.get(b"a").await.expect("get");
    tx.set(b"a", b"3");
    tx.commit().await.expect("commit after reopen");
}

#[tokio::test]
async fn a_second_open_of_the_same_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let _first = RedbKv::open(&path).expect("open");
    assert!(matches!(
        RedbKv::open(&path),
        Err(KvError::Unavailable(_) | KvError::Io(_))
    ));
}

#[tokio::test]
async fn concurrent_commits_are_grouped_into_few_fsyncs() {
    const COMMITS: usize = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = RedbKv::open(dir.path().join("store.redb")).expect("open");
    // Every transaction begins before the first commit, so the commits queue up back to back.
    // Beginning each right before its commit made the grouping depend on timing: while this
    // thread was slow (or paused) between commits, the writer synced small batches.
    let txs = join_all((0..COMMITS).map(|_| kv.begin())).await;
    let commits = txs.into_iter().enumerate().map(|(i, tx)| async move {
        let tx = tx?;
        tx.set(format!("key/{i:04}").as_bytes(), b"v");
        tx.commit().await
    });
    let results = join_all(commits).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(kv.txs_committed(), COMMITS as u64);
    let batches = kv.batches_committed();
    // At most 256 per batch, so at least 2; one fsync per message would be 500.
    assert!(
        (2..=COMMITS as u64 / 10).contains(&batches),
        "{batches} redb commits for {COMMITS} transactions"
    );
    let tx = kv.begin().await.expect("begin");
    assert_eq!(
        tx.get_range(b"key/", b"key0", 0, false)
            .await
            .expect("range")
            .len(),
        COMMITS
    );
}

#[tokio::test]
async fn batch_size_is_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = RedbOptions {
        batch_txs_max: 8,
        ..RedbOptions::default()
    };
    let kv = RedbKv::open_with(dir.path().join("store.redb"), options).expect("open");
    let results = join_all((0..64).map(|i: u32| {
        let kv = &kv;
        async move {
            let tx = kv.begin().await?;
            tx.set(&i.to_be_bytes(), b"v");
            tx.commit().await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert!(
        kv.batches_committed() >= 8,
        "{} batches of at most 8 for 64 commits",
        kv.batches_committed()
    );
}

#[tokio::test]
async fn conflicts_inside_one_batch_are_detected_in_arrival_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = RedbKv::open(dir.path().join("store.redb")).expect("open");
    // 50 read-modify-writes of one key from one snapshot, committed together: exactly one
    // wins whichever batch they land in.
    let txs = join_all((0..50).map(|_| kv.begin())).await;
    let mut handles = Vec::new();
    for (i, tx) in txs.into_iter().enumerate() {
        let tx = tx.expect("begin");
        assert_eq!(tx.get(b"hot").await, Ok(None));
        tx.set(b"hot", format!("{i}").as_bytes());
        handles.push(tx);
    }
    let results = join_all(handles.iter().map(|tx| tx.commit())).await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| r.is_ok() || *r == Err(KvError::NotCommitted))
    );
}

#[tokio::test]
async fn commits_after_the_store_is_dropped_are_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv: Arc<dyn Kv> = Arc::new(RedbKv::open(dir.path().join("store.redb")).expect("open"));
    let tx = kv.begin().await.expect("begin");
    tx.set(b"k", b"v");
    drop(kv);
    assert!(matches!(tx.commit().await, Err(KvError::Unavailable(_))));
}
