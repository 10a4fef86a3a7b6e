//! Micro-benchmarks of the store and the protocol.
//!
//! - `commit`: durable `RedbKv` commits of one 200-byte message per transaction, awaited one
//!   at a time (the baseline: one fsync each) versus 64 committers kept in flight (group
//!   commit: one fsync per batch of whatever queued meanwhile). Throughput is messages/s.
//! - `append`: `ChatStore::append` batches of 1, 16 and 64 messages to one conversation,
//!   on `RedbKv` (durable) and on `MemoryKv` (the same code without fsyncs: its CPU cost).
//! - `concurrent`: one message appended to each of 100 or 2,000 direct conversations at
//!   once (a transaction each, all in flight together), on `MemoryKv` (CPU: the resolver's
//!   conflict checks) and `RedbKv` (durable, group-committed). Throughput is messages/s; it
//!   must not fall as the transactions in flight grow (it did, quadratically, before the
//!   resolver kept writes per key).
//! - `read`: `history` (last 50) and `inbox` (top 20) over a store pre-filled with 20,000
//!   messages in 200 conversations of 6 of 50 users.
//! - `frame`: `ClientFrame::parse` of a send and `ServerFrame::to_json` of a push and an ack.
//!
//! Run: `cargo bench -p chat-benches --bench store` (add a filter such as `commit` to run
//! one group). Measurement times are short so the whole run takes a few minutes on 2 cores.

use chat_proto::frame::{ClientFrame, ServerFrame};
use chat_proto::{ConvId, Message};
use chat_store::{ChatStore, Kv, MemoryKv, NewMessage, RedbKv};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::future::join_all;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The message size of the store notes' workload.
const BODY_BYTES: usize = 200;
/// Committers kept in flight in the group-commit benchmark.
const COMMITTERS: usize = 64;
const APPEND_BATCH_LENS: [usize; 3] = [1, 16, 64];
/// Direct conversations appended to at once in the `concurrent` benchmark.
const CONCURRENT_CONVS: [usize; 2] = [100, 2_000];
/// The pre-filled store of the read benchmarks.
const FILL_USERS: usize = 50;
const FILL_CONVS: usize = 200;
const FILL_MEMBERS_PER_CONV: usize = 6;
const FILL_MESSAGES: usize = 20_000;
const HISTORY_LIMIT: u32 = 50;
const INBOX_LIMIT: u32 = 20;

const _: () = assert!(
    (FILL_MEMBERS_PER_CONV - 1) * 9 < FILL_USERS,
    "members (i + 9k) % users must be distinct"
);
const _: () = assert!(
    FILL_CONVS * FILL_MEMBERS_PER_CONV / FILL_USERS >= INBOX_LIMIT as usize,
    "every inbox read fills its page"
);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn body() -> String {
    "x".repeat(BODY_BYTES)
}

/// A fresh durable store in a temporary directory (removed when the guard drops).
fn redb() -> (Arc<RedbKv>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let kv = RedbKv::open(dir.path().join("bench.redb")).expect("open redb");
    (Arc::new(kv), dir)
}

/// `"redb"` (durable, in a temporary directory kept alive by the guard) or `"memory"`.
fn backend_named(name: &str) -> (Arc<dyn Kv>, Option<tempfile::TempDir>) {
    match name {
        "redb" => {
            let (kv, dir) = redb();
            (kv, Some(dir))
        }
        _ => (Arc::new(MemoryKv::new()), None),
    }
}

fn user(i: usize) -> String {
    format!("user{i:03}")
}

/// Commits one message under a key no other transaction writes (so nothing conflicts).
async fn commit_one(kv: &dyn Kv, key: u64, value: &[u8]) {
    let tx = kv.begin().await.expect("begin");
    let mut k = b"bench/msg/".to_vec();
    k.extend_from_slice(&key.to_be_bytes());
    tx.set(&k, value);
    tx.commit().await.expect("commit");
}

fn commit(c: &mut Criterion) {
    let rt = runtime();
    let (kv, _dir) = redb();
    let value = body().into_bytes();
    let next_key = AtomicU64::new(0);
    let mut group = c.benchmark_group("commit");

    group.throughput(Throughput::Elements(1));
    group.bench_function("redb/single", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    commit_one(&*kv, next_key.fetch_add(1, Ordering::Relaxed), &value).await;
                }
                started.elapsed()
            })
        })
    });
    let batches_before = kv.batches_committed();
    let txs_before = kv.txs_committed();

    // One iteration = one message from each of the 64 committers, which keep committing
    // back to back, so the writer always finds a queue: steady-state group commit.
    group.throughput(Throughput::Elements(COMMITTERS as u64));
    group.bench_function(BenchmarkId::new("redb/concurrent", COMMITTERS), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                join_all((0..COMMITTERS).map(|_| async {
                    for _ in 0..iters {
                        commit_one(&*kv, next_key.fetch_add(1, Ordering::Relaxed), &value).await;
                    }
                }))
                .await;
                started.elapsed()
            })
        })
    });
    let batches = kv.batches_committed() - batches_before;
    let txs = kv.txs_committed() - txs_before;
    group.finish();
    eprintln!(
        "commit/redb/concurrent/{COMMITTERS}: {txs} transactions in {batches} redb commits (fsyncs), {:.1} per fsync",
        txs as f64 / batches.max(1) as f64
    );
}

/// A store with `members` users and one conversation of them all (direct for two).
async fn store_with_conv(kv: Arc<dyn Kv>, members: usize) -> (ChatStore, ConvId) {
    let store = ChatStore::new(kv);
    for i in 0..members {
        store
            .create_user(&user(i), "hash", 1)
            .await
            .expect("create user");
    }
    let others = (1..members).map(user).collect();
    let (conv, _) = store
        .create_conversation(&user(0), others, None, 1)
        .await
        .expect("create conversation");
    (store, conv.conv_id)
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let text = body();
    let next_id = AtomicU64::new(0);
    let mut group = c.benchmark_group("append");
    for backend in ["redb", "memory"] {
        let (kv, _dir) = backend_named(backend);
        // A direct conversation: two members, so each append also moves two recency entries.
        let (store, conv) = rt.block_on(store_with_conv(kv, 2));
        for batch_len in APPEND_BATCH_LENS {
            group.throughput(Throughput::Elements(batch_len as u64));
            group.bench_function(BenchmarkId::new(backend, batch_len), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut elapsed = Duration::ZERO;
                        for i in 0..iters {
                            let batch: Vec<NewMessage> = (0..batch_len)
                                .map(|_| NewMessage {
                                    sender: user((i % 2) as usize),
                                    client_msg_id: format!(
                                        "m{}",
                                        next_id.fetch_add(1, Ordering::Relaxed)
                                    ),
                                    body: text.clone(),
                                    amend: None,
                                })
                                .collect();
                            let started = Instant::now();
                            let appended = store.append(conv, batch, i).await.expect("append");
                            elapsed += started.elapsed();
                            debug_assert!(
                                appended.iter().all(|a| a.as_ref().is_ok_and(|a| a.fresh))
                            );
                        }
                        elapsed
                    })
                })
            });
        }
    }
    group.finish();
}

/// `convs` direct conversations, user 2i with user 2i+1.
async fn store_with_directs(kv: Arc<dyn Kv>, convs: usize) -> (ChatStore, Vec<ConvId>) {
    let store = ChatStore::new(kv);
    for i in 0..2 * convs {
        store
            .create_user(&user(i), "hash", 1)
            .await
            .expect("create user");
    }
    let mut ids = Vec::with_capacity(convs);
    for i in 0..convs {
        let (conv, _) = store
            .create_conversation(&user(2 * i), vec![user(2 * i + 1)], None, 1)
            .await
            .expect("create conversation");
        ids.push(conv.conv_id);
    }
    (store, ids)
}

fn concurrent(c: &mut Criterion) {
    let rt = runtime();
    let text = body();
    let next_id = AtomicU64::new(0);
    let mut group = c.benchmark_group("concurrent");
    for backend in ["memory", "redb"] {
        for convs in CONCURRENT_CONVS {
            let (kv, _dir) = backend_named(backend);
            let (store, ids) = rt.block_on(store_with_directs(kv, convs));
            group.throughput(Throughput::Elements(convs as u64));
            group.bench_function(BenchmarkId::new(backend, convs), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let started = Instant::now();
                        for i in 0..iters {
                            let appends = ids.iter().enumerate().map(|(n, conv)| {
                                let message = NewMessage {
                                    sender: user(2 * n),
                                    client_msg_id: format!(
                                        "m{}",
                                        next_id.fetch_add(1, Ordering::Relaxed)
                                    ),
                                    body: text.clone(),
                                    amend: None,
                                };
                                store.append(*conv, vec![message], i + 2)
                            });
                            for appended in join_all(appends).await {
                                debug_assert!(appended.is_ok());
                            }
                        }
                        started.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
}

/// 20,000 messages over 200 conversations of 6 of 50 users, appended in batches of 64 per
/// conversation with rising timestamps, so recency and history have realistic shapes.
async fn filled_store(kv: Arc<dyn Kv>) -> (ChatStore, Vec<(String, ConvId)>) {
    let store = ChatStore::new(kv);
    for i in 0..FILL_USERS {
        store
            .create_user(&user(i), "hash", 1)
            .await
            .expect("create user");
    }
    let mut convs = Vec::with_capacity(FILL_CONVS);
    for c in 0..FILL_CONVS {
        let members: Vec<String> = (0..FILL_MEMBERS_PER_CONV)
            .map(|k| user((c + 9 * k) % FILL_USERS))
            .collect();
        let (conv, _) = store
            .create_conversation(
                &members[0],
                members[1..].to_vec(),
                Some(format!("group {c}")),
                1,
            )
            .await
            .expect("create conversation");
        convs.push((members, conv.conv_id));
    }
    let per_conv = FILL_MESSAGES / FILL_CONVS;
    let text = body();
    let mut ts = 1_000;
    for chunk_start in (0..per_conv).step_by(64) {
        for (members, conv) in &convs {
            let batch = (chunk_start..(chunk_start + 64).min(per_conv))
                .map(|n| NewMessage {
                    sender: members[n % members.len()].clone(),
                    client_msg_id: format!("c{conv}n{n}"),
                    body: text.clone(),
                    amend: None,
                })
                .collect();
            ts += 1;
            store.append(*conv, batch, ts).await.expect("append");
        }
    }
    // (reader, conversation) pairs to cycle through: the creator reads each conversation.
    let readers = convs
        .into_iter()
        .map(|(members, conv)| (members[0].clone(), conv))
        .collect();
    (store, readers)
}

fn read(c: &mut Criterion) {
    let rt = runtime();
    let (kv, _dir) = redb();
    let started = Instant::now();
    let (store, readers) = rt.block_on(filled_store(kv));
    eprintln!(
        "read: filled {FILL_MESSAGES} messages in {FILL_CONVS} conversations in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1));
    group.bench_function("redb/history_last_50", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    let (reader, conv) = &readers[i as usize % readers.len()];
                    let (page, _) = store
                        .history(reader, *conv, None, HISTORY_LIMIT)
                        .await
                        .expect("history");
                    debug_assert_eq!(page.len(), HISTORY_LIMIT as usize);
                    black_box(page);
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("redb/inbox_top_20", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for i in 0..iters {
                    let (inbox, _) = store
                        .inbox(&user(i as usize % FILL_USERS), INBOX_LIMIT, None)
                        .await
                        .expect("inbox");
                    debug_assert_eq!(inbox.len(), INBOX_LIMIT as usize);
                    black_box(inbox);
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

fn frame(c: &mut Criterion) {
    let text = body();
    let send = ClientFrame::Send {
        id: "5d0e77c3-1234".into(),
        conv: 4242,
        body: text.clone(),
    }
    .to_json();
    let push = ServerFrame::message(&Message {
        conv: 4242,
        seq: 123_456,
        sender: "alice".into(),
        body: text,
        client_msg_id: "5d0e77c3-1234".into(),
        ts: 1_767_139_200_123,
        event: None,
        edited: false,
        deleted: false,
    });
    let ack = ServerFrame::Sent {
        id: "5d0e77c3-1234".into(),
        conv: 4242,
        seq: 123_456,
        ts: 1_767_139_200_123,
    };
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    group.bench_function("client_parse/send_200B", |b| {
        b.iter(|| ClientFrame::parse(black_box(&send)).expect("a valid frame"))
    });
    group.bench_function("client_parse/ping", |b| {
        b.iter(|| ClientFrame::parse(black_box(r#"{"type":"ping"}"#)))
    });
    group.bench_function("server_to_json/message_200B", |b| {
        b.iter(|| black_box(&push).to_json())
    });
    group.bench_function("server_to_json/sent", |b| {
        b.iter(|| black_box(&ack).to_json())
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = commit, append, concurrent, read, frame
}
criterion_main!(benches);
