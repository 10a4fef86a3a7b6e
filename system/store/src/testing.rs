//! Test support (cargo feature `testing`): the conformance suite every [`Kv`] backend must
//! pass.
//!
//! Run it against each backend: `tests/conformance.rs` does so for [`crate::MemoryKv`] and
//! [`crate::RedbKv`], `fdb/tests/conformance.rs` for the FoundationDB backend (`FdbKv`, crate
//! `chat-fdb`) against a real cluster, and the simulator for its simulated FoundationDB
//! client. The checks panic with a message on failure, like `assert!` in a test. All keys
//! live under [`PREFIX`], cleared first, so the suite can run on a shared database.

use crate::kv::{
    KEY_BYTES_MAX, Kv, KvError, RunOptions, TX_BYTES_MAX, TX_LIFETIME, Tx, VALUE_BYTES_MAX, run,
    run_with,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Every key the suite writes starts with this.
pub const PREFIX: &[u8] = b"\xfeconformance/";

fn k(name: &str) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn prefix_end() -> Vec<u8> {
    let mut end = PREFIX.to_vec();
    end.push(0xff);
    end
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(items: &[(&str, &str)]) -> Pairs {
    items
        .iter()
        .map(|(key, value)| (k(key), value.as_bytes().to_vec()))
        .collect()
}

async fn begin(kv: &dyn Kv) -> Tx {
    kv.begin().await.expect("begin")
}

/// Sets `items` and clears nothing else, in one committed transaction.
async fn put(kv: &dyn Kv, items: &[(&str, &str)]) {
    let tx = begin(kv).await;
    for (key, value) in items {
        tx.set(&k(key), value.as_bytes());
    }
    tx.commit().await.expect("commit of put");
}

async fn get(kv: &dyn Kv, key: &str) -> Option<Vec<u8>> {
    begin(kv).await.get(&k(key)).await.expect("get")
}

/// Every pair under `PREFIX + sub`, ascending.
async fn scan(kv: &dyn Kv, sub: &str) -> Pairs {
    let mut end = k(sub);
    end.push(0xff);
    begin(kv)
        .await
        .get_range(&k(sub), &end, 0, false)
        .await
        .expect("scan")
}

async fn wipe(kv: &dyn Kv) {
    let tx = begin(kv).await;
    tx.clear_range(PREFIX, &prefix_end());
    tx.commit().await.expect("commit of wipe");
}

/// Runs every check except [`tx_lifetime`] (which waits 5 s).
pub async fn conformance(kv: Arc<dyn Kv>) {
    wipe(&*kv).await;
    point_operations(&*kv).await;
    range_reads(&*kv).await;
    read_your_writes(&*kv).await;
    conflicts(&*kv).await;
    read_only_never_conflicts(&*kv).await;
    size_limits(&*kv).await;
    run_retries_conflicts_to_success(&*kv).await;
    wipe(&*kv).await;
}

/// get, set, clear and clear_range, committed and read back by a new transaction.
pub async fn point_operations(kv: &dyn Kv) {
    put(
        kv,
        &[
            ("p/a", "1"),
            ("p/b", "2"),
            ("p/c", "3"),
            ("p/d", "4"),
            ("p/e", "5"),
        ],
    )
    .await;
    assert_eq!(get(kv, "p/a").await, Some(b"1".to_vec()));
    assert_eq!(get(kv, "p/zz").await, None, "missing key reads as None");

    let tx = begin(kv).await;
    tx.set(&k("p/a"), b"one");
    tx.clear(&k("p/b"));
    tx.clear_range(&k("p/c"), &k("p/e"));
    tx.clear(&k("p/never"));
    tx.commit().await.expect("commit");
    assert_eq!(scan(kv, "p/").await, pairs(&[("p/a", "one"), ("p/e", "5")]));

    // Empty and inverted clear ranges clear nothing.
    let tx = begin(kv).await;
    tx.clear_range(&k("p/e"), &k("p/e"));
    tx.clear_range(&k("p/z"), &k("p/a"));
    tx.commit().await.expect("commit");
    assert_eq!(scan(kv, "p/").await, pairs(&[("p/a", "one"), ("p/e", "5")]));

    // An empty value is a value, not a deletion.
    put(kv, &[("p/empty", "")]).await;
    assert_eq!(get(kv, "p/empty").await, Some(Vec::new()));
}

/// Forward and reverse ranges, with and without limits, are half-open `[begin, end)`.
pub async fn range_reads(kv: &dyn Kv) {
    let items: Vec<(String, String)> = (0..10)
        .map(|i| (format!("r/{i:02}"), format!("v{i}")))
        .collect();
    let items: Vec<(&str, &str)> = items
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    put(kv, &items).await;
    let (begin_key, end_key) = (k("r/"), k("r/\u{7f}"));
    let tx = begin(kv).await;
    let all = tx
        .get_range(&begin_key, &end_key, 0, false)
        .await
        .expect("range");
    assert_eq!(all, pairs(&items));
    let first3 = tx
        .get_range(&begin_key, &end_key, 3, false)
        .await
        .expect("range");
    assert_eq!(first3, pairs(&items[..3]));
    let last3 = tx
        .get_range(&begin_key, &end_key, 3, true)
        .await
        .expect("range");
    assert_eq!(last3, pairs(&[items[9], items[8], items[7]]));
    let reverse_all = tx
        .get_range(&begin_key, &end_key, 0, true)
        .await
        .expect("range");
    assert_eq!(reverse_all.len(), 10);
    assert_eq!(reverse_all[0].0, k("r/09"));
    assert_eq!(reverse_all[9].0, k("r/00"));
    let middle = tx
        .get_range(&k("r/03"), &k("r/06"), 0, false)
        .await
        .expect("range");
    assert_eq!(middle, pairs(&items[3..6]), "end is exclusive");
    let middle_rev = tx
        .get_range(&k("r/03"), &k("r/06"), 2, true)
        .await
        .expect("range");
    assert_eq!(middle_rev, pairs(&[items[5], items[4]]));
    let big_limit = tx
        .get_range(&begin_key, &end_key, 100, false)
        .await
        .expect("range");
    assert_eq!(big_limit.len(), 10);
    assert!(
        tx.get_range(&end_key, &begin_key, 0, false)
            .await
            .expect("range")
            .is_empty(),
        "inverted range"
    );
    assert!(
        tx.get_range(&begin_key, &begin_key, 0, true)
            .await
            .expect("range")
            .is_empty(),
        "empty range"
    );
    tx.commit().await.expect("read-only commit");
}

/// Reads inside a transaction see its own sets, clears and clear_ranges.
pub async fn read_your_writes(kv: &dyn Kv) {
    put(
        kv,
        &[
            ("w/a", "1"),
            ("w/b", "2"),
            ("w/c", "3"),
            ("w/d", "4"),
            ("w/e", "5"),
        ],
    )
    .await;
    let tx = begin(kv).await;
    let (lo, hi) = (k("w/"), k("w/\u{7f}"));
    tx.set(&k("w/new"), b"n");
    assert_eq!(tx.get(&k("w/new")).await.expect("get"), Some(b"n".to_vec()));
    tx.set(&k("w/a"), b"A");
    assert_eq!(tx.get(&k("w/a")).await.expect("get"), Some(b"A".to_vec()));
    tx.clear(&k("w/b"));
    assert_eq!(tx.get(&k("w/b")).await.expect("get"), None);
    tx.clear_range(&k("w/c"), &k("w/e"));
    tx.set(&k("w/cc"), b"set after the clear");
    assert_eq!(tx.get(&k("w/c")).await.expect("get"), None);
    assert_eq!(
        tx.get(&k("w/cc")).await.expect("get"),
        Some(b"set after the clear".to_vec())
    );

    let expected = pairs(&[
        ("w/a", "A"),
        ("w/cc", "set after the clear"),
        ("w/e", "5"),
        ("w/new", "n"),
    ]);
    assert_eq!(
        tx.get_range(&lo, &hi, 0, false).await.expect("range"),
        expected
    );
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        tx.get_range(&lo, &hi, 0, true).await.expect("range"),
        reversed
    );
    // Limits count merged pairs, whether they come from the snapshot or the buffer.
    assert_eq!(
        tx.get_range(&lo, &hi, 2, false).await.expect("range"),
        expected[..2].to_vec()
    );
    assert_eq!(
        tx.get_range(&lo, &hi, 2, true).await.expect("range"),
        reversed[..2].to_vec()
    );

    // Another transaction sees none of it until the commit.
    assert_eq!(get(kv, "w/new").await, None);
    assert_eq!(get(kv, "w/b").await, Some(b"2".to_vec()));
    tx.commit().await.expect("commit");
    assert_eq!(scan(kv, "w/").await, expected);

    // Many clears hiding a long run of snapshot keys: a limited read still fills its page.
    let many: Vec<(String, String)> = (0..200)
        .map(|i| (format!("m/{i:03}"), "x".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    put(kv, &many).await;
    let tx = begin(kv).await;
    tx.clear_range(&k("m/000"), &k("m/150"));
    let page = tx
        .get_range(&k("m/"), &k("m/\u{7f}"), 10, false)
        .await
        .expect("range");
    assert_eq!(page, pairs(&many[150..160]));
    tx.clear_range(&k("m/100"), &k("m/199"));
    let page = tx
        .get_range(&k("m/"), &k("m/\u{7f}"), 10, true)
        .await
        .expect("range");
    assert_eq!(page, pairs(&many[199..200]));
    drop(tx);
}

/// Two read-modify-writes of one key: the second to commit fails with NotCommitted; writes
/// to disjoint keys both commit; a write into a range another transaction read conflicts.
pub async fn conflicts(kv: &dyn Kv) {
    put(kv, &[("c/x", "0"), ("c/y", "0")]).await;

    let t1 = begin(kv).await;
    let t2 = begin(kv).await;
    assert_eq!(t1.get(&k("c/x")).await.expect("get"), Some(b"0".to_vec()));
    assert_eq!(t2.get(&k("c/x")).await.expect("get"), Some(b"0".to_vec()));
    t1.set(&k("c/x"), b"1");
    t2.set(&k("c/x"), b"2");
    t1.commit().await.expect("first commit wins");
    assert_eq!(t2.commit().await, Err(KvError::NotCommitted));
    assert_eq!(
        get(kv, "c/x").await,
        Some(b"1".to_vec()),
        "the loser wrote nothing"
    );

    let t1 = begin(kv).await;
    let t2 = begin(kv).await;
    t1.get(&k("c/x")).await.expect("get");
    t2.get(&k("c/y")).await.expect("get");
    t1.set(&k("c/x"), b"x");
    t2.set(&k("c/y"), b"y");
    t1.commit().await.expect("disjoint commit");
    t2.commit().await.expect("disjoint commit");

    // Blind writes (no reads) never conflict: the last commit wins.
    let t1 = begin(kv).await;
    let t2 = begin(kv).await;
    t1.set(&k("c/x"), b"blind1");
    t2.set(&k("c/x"), b"blind2");
    t1.commit().await.expect("blind");
    t2.commit().await.expect("blind");
    assert_eq!(get(kv, "c/x").await, Some(b"blind2".to_vec()));

    // A range read conflicts with a later insert into the range (a phantom).
    let reader = begin(kv).await;
    let seen = reader
        .get_range(&k("c/r/"), &k("c/r/\u{7f}"), 0, false)
        .await
        .expect("range");
    assert!(seen.is_empty());
    put(kv, &[("c/r/5", "phantom")]).await;
    reader.set(&k("c/summary"), b"empty");
    assert_eq!(reader.commit().await, Err(KvError::NotCommitted));

    // A limited range read only depends on what it covered.
    put(kv, &[("c/l/1", "a"), ("c/l/2", "b")]).await;
    let reader = begin(kv).await;
    let first = reader
        .get_range(&k("c/l/"), &k("c/l/\u{7f}"), 1, false)
        .await
        .expect("range");
    assert_eq!(first, pairs(&[("c/l/1", "a")]));
    put(kv, &[("c/l/9", "beyond")]).await;
    reader.set(&k("c/lsummary"), b"1");
    reader
        .commit()
        .await
        .expect("a write past a limited read's last key does not conflict");

    // A clear_range by another transaction conflicts with a read of a key inside it.
    let reader = begin(kv).await;
    reader.get(&k("c/y")).await.expect("get");
    let clearer = begin(kv).await;
    clearer.clear_range(&k("c/"), &k("c/z"));
    clearer.commit().await.expect("clear");
    reader.set(&k("c/y2"), b"1");
    assert_eq!(reader.commit().await, Err(KvError::NotCommitted));
}

/// A transaction without writes commits even if everything it read changed since.
pub async fn read_only_never_conflicts(kv: &dyn Kv) {
    put(kv, &[("o/k", "before")]).await;
    let reader = begin(kv).await;
    assert_eq!(
        reader.get(&k("o/k")).await.expect("get"),
        Some(b"before".to_vec())
    );
    put(kv, &[("o/k", "after")]).await;
    // Its snapshot is stable: it still reads the old value.
    assert_eq!(
        reader.get(&k("o/k")).await.expect("get"),
        Some(b"before".to_vec())
    );
    reader
        .commit()
        .await
        .expect("read-only commit never conflicts");
}

/// FoundationDB's key, value and transaction size limits; nothing of a failed
/// transaction is applied.
pub async fn size_limits(kv: &dyn Kv) {
    let at_limit_key = {
        let mut key = k("s/");
        key.resize(KEY_BYTES_MAX, b'k');
        key
    };
    let tx = begin(kv).await;
    tx.set(&at_limit_key, &vec![b'v'; VALUE_BYTES_MAX]);
    tx.commit()
        .await
        .expect("key and value exactly at their limits");

    let mut long_key = at_limit_key.clone();
    long_key.push(b'k');
    let tx = begin(kv).await;
    tx.set(&k("s/with-long-key"), b"1");
    tx.set(&long_key, b"v");
    assert_eq!(tx.commit().await, Err(KvError::KeyTooLarge));
    assert_eq!(
        begin(kv).await.get(&long_key).await,
        Err(KvError::KeyTooLarge)
    );
    assert_eq!(get(kv, "s/with-long-key").await, None);

    let tx = begin(kv).await;
    tx.set(&k("s/big"), &vec![b'v'; VALUE_BYTES_MAX + 1]);
    assert_eq!(
        tx.get(&k("s/big")).await,
        Err(KvError::ValueTooLarge),
        "reported by the next read"
    );
    assert_eq!(tx.commit().await, Err(KvError::ValueTooLarge));
    assert_eq!(get(kv, "s/big").await, None);

    let tx = begin(kv).await;
    let value = vec![b'v'; VALUE_BYTES_MAX];
    for i in 0..=TX_BYTES_MAX / VALUE_BYTES_MAX {
        tx.set(&k(&format!("s/t/{i:04}")), &value);
    }
    assert_eq!(tx.commit().await, Err(KvError::TransactionTooLarge));
    assert!(scan(kv, "s/t/").await.is_empty());

    let tx = begin(kv).await;
    tx.clear_range(&k("s/"), &k("s/\u{7f}"));
    tx.commit().await.expect("cleanup");
}

/// 20 concurrent increments of one counter through [`run`] all land.
pub async fn run_retries_conflicts_to_success(kv: &dyn Kv) {
    const INCREMENTS: usize = 20;
    let attempts = AtomicUsize::new(0);
    let counter = k("i/counter");
    let increment = || {
        run(kv, |tx, _| {
            let (counter, attempts) = (&counter, &attempts);
            async move {
                attempts.fetch_add(1, Ordering::Relaxed);
                let old = match tx.get(counter).await? {
                    Some(raw) => parse_u64(&raw)?,
                    None => 0,
                };
                // Let every other increment read the same value before anyone commits.
                tokio::task::yield_now().await;
                tx.set(counter, (old + 1).to_string().as_bytes());
                Ok::<_, KvError>(())
            }
        })
    };
    let results = futures::future::join_all((0..INCREMENTS).map(|_| increment())).await;
    for result in results {
        result.expect("every increment lands");
    }
    assert_eq!(
        get(kv, "i/counter").await,
        Some(INCREMENTS.to_string().into_bytes())
    );
    assert!(
        attempts.load(Ordering::Relaxed) > INCREMENTS,
        "the increments conflicted and were retried"
    );
}

fn parse_u64(raw: &[u8]) -> Result<u64, KvError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KvError::Corrupt("counter is not a number".into()))
}

/// Reads and commits after [`TX_LIFETIME`] fail with TransactionTooOld, and [`run`]
/// recovers by starting over. Sleeps for 5 s of (possibly simulated) time.
pub async fn tx_lifetime(kv: Arc<dyn Kv>) {
    let kv = &*kv;
    put(kv, &[("t/k", "v")]).await;
    let old = begin(kv).await;
    let old_writer = begin(kv).await;
    old_writer.set(&k("t/k"), b"late");
    tokio::time::sleep(TX_LIFETIME + Duration::from_millis(100)).await;
    assert_eq!(old.get(&k("t/k")).await, Err(KvError::TransactionTooOld));
    assert_eq!(
        old.get_range(&k("t/"), &k("t/\u{7f}"), 0, false).await,
        Err(KvError::TransactionTooOld)
    );
    assert_eq!(old_writer.commit().await, Err(KvError::TransactionTooOld));
    assert_eq!(
        get(kv, "t/k").await,
        Some(b"v".to_vec()),
        "the too-old commit applied nothing"
    );

    // The run loop retries a transaction that outlived its lifetime.
    let first = std::sync::atomic::AtomicBool::new(true);
    let options = RunOptions {
        run_duration_max: Duration::from_secs(30),
        ..RunOptions::default()
    };
    run_with(kv, &options, |tx, _| {
        let first = &first;
        async move {
            if first.swap(false, Ordering::Relaxed) {
                tokio::time::sleep(TX_LIFETIME + Duration::from_millis(100)).await;
            }
            tx.get(&k("t/k")).await?;
            tx.set(&k("t/k"), b"retried");
            Ok::<_, KvError>(())
        }
    })
    .await
    .expect("retried after transaction_too_old");
    assert_eq!(get(kv, "t/k").await, Some(b"retried".to_vec()));
    wipe(kv).await;
}
