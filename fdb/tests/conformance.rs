//! The FoundationDB backend against a real cluster: the store's conformance suite, its 5 s
//! lifetime check, and chat-model scenarios through [`ChatStore`].
//!
//! Runs only when built with `--features fdb` AND `FDB_CLUSTER_FILE` names a cluster file:
//!
//! ```text
//! FDB_CLUSTER_FILE=/etc/foundationdb/fdb.cluster cargo test -p chat-fdb --features fdb
//! ```
//!
//! Otherwise the test says on stderr why it was skipped and passes. It writes only under
//! `\xfeconformance/` (the suite's prefix) and [`SCENARIO_PREFIX`], clearing both, so a
//! shared test cluster is fine; never point it at production data.
//!
//! One `#[test]` for the cluster on purpose: the FoundationDB network starts once per
//! process and must be stopped before it exits, so one function owns it from start to end.
//! The chat scenarios also run over `MemoryKv` (below), so a failure on the cluster points
//! at the backend, not at the scenarios.

use async_trait::async_trait;
use chat_proto::ConvKind;
use chat_store::{
    AppendError, Appended, ChatStore, Kv, KvError, KvTx, MemoryKv, NewMessage, RunOptions,
    StoreError, Tx,
};
use futures::future::join_all;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Every key the chat scenarios write starts with this (below `\xff`, FoundationDB's system
/// keys, and away from the chat keyspace, whose tuple keys start with `\x02`).
const SCENARIO_PREFIX: &[u8] = b"\xfdchat-fdb-test/";

#[test]
fn conformance_and_chat_scenarios_on_a_real_cluster() {
    match cluster_file() {
        Ok(path) => cluster::run(path),
        Err(why) => skip(&why),
    }
}

#[tokio::test]
async fn chat_scenarios_hold_on_memory_kv() {
    scenarios::run_all(Arc::new(MemoryKv::new())).await;
}

/// The cluster file to test against, or why there is none.
#[cfg(feature = "fdb")]
fn cluster_file() -> Result<std::path::PathBuf, String> {
    match std::env::var_os("FDB_CLUSTER_FILE") {
        Some(path) if !path.is_empty() => Ok(path.into()),
        _ => Err(
            "FDB_CLUSTER_FILE is not set, so there is no FoundationDB cluster to test against \
             (see docs/fdb.md)"
                .to_string(),
        ),
    }
}

#[cfg(not(feature = "fdb"))]
fn cluster_file() -> Result<std::path::PathBuf, String> {
    Err(chat_fdb::disabled::WHY.to_string())
}

fn skip(why: &str) {
    // Straight to the process's stderr, past the test harness's output capture, so the
    // reason shows in a normal `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: FoundationDB backend tests: {why}"
    );
}

#[cfg(feature = "fdb")]
mod cluster {
    use super::*;
    use chat_fdb::FdbKv;
    use std::path::PathBuf;

    pub fn run(cluster_file: PathBuf) {
        let _ = writeln!(
            std::io::stderr(),
            "running against the FoundationDB cluster in {}",
            cluster_file.display()
        );
        // SAFETY: `network` is dropped at the end of this function (or while unwinding from
        // a failed check), after the database and the runtime, before the process exits.
        let network = unsafe { FdbKv::boot() };
        {
            let kv: Arc<dyn Kv> =
                Arc::new(FdbKv::open(Some(&cluster_file)).expect("open the cluster"));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async {
                chat_store::testing::conformance(kv.clone()).await;
                chat_store::testing::tx_lifetime(kv.clone()).await;
                scenarios::run_all(kv.clone()).await;
            });
        }
        drop(network);
    }
}

#[cfg(not(feature = "fdb"))]
mod cluster {
    pub fn run(_cluster_file: std::path::PathBuf) {
        unreachable!("cluster_file() refuses to answer without the `fdb` feature")
    }
}

/// Chat-model scenarios through [`ChatStore`], each in its own key prefix (so conversation
/// ids start at 1 in each) under [`SCENARIO_PREFIX`].
mod scenarios {
    use super::*;

    pub async fn run_all(kv: Arc<dyn Kv>) {
        wipe(&*kv).await;
        users_register_once(scoped(&kv, "users")).await;
        direct_conversations_are_unique_per_pair(scoped(&kv, "direct")).await;
        appends_get_gapless_seqs_and_history_pages_back(scoped(&kv, "history")).await;
        resends_are_idempotent(scoped(&kv, "resend")).await;
        inbox_orders_by_recency_and_counts_unread(scoped(&kv, "inbox")).await;
        concurrent_appends_to_one_conversation_are_gapless(scoped(&kv, "hot")).await;
        concurrent_creations_get_distinct_ids(scoped(&kv, "creations")).await;
        wipe(&*kv).await;
    }

    /// A chat store over `kv` with every key under `SCENARIO_PREFIX + name + "/"`. The run
    /// loop gets more room than the default: the concurrent scenarios pile up conflicts on
    /// one key over real network latency, and they test gapless ids, not the retry budget.
    fn scoped(kv: &Arc<dyn Kv>, name: &str) -> ChatStore {
        let mut prefix = SCENARIO_PREFIX.to_vec();
        prefix.extend_from_slice(name.as_bytes());
        prefix.push(b'/');
        let options = RunOptions {
            retries_max: 100,
            run_duration_max: Duration::from_secs(60),
            ..RunOptions::default()
        };
        ChatStore::with_run_options(
            Arc::new(PrefixedKv {
                inner: kv.clone(),
                prefix,
            }),
            options,
        )
    }

    async fn wipe(kv: &dyn Kv) {
        let mut end = SCENARIO_PREFIX.to_vec();
        end.push(0xff);
        let tx = kv.begin().await.expect("begin");
        tx.clear_range(SCENARIO_PREFIX, &end);
        tx.commit().await.expect("commit of wipe");
    }

    fn msg(sender: &str, id: &str, body: &str) -> NewMessage {
        NewMessage {
            sender: sender.into(),
            client_msg_id: id.into(),
            body: body.into(),
            amend: None,
        }
    }

    fn ok(results: Vec<Result<Appended, AppendError>>) -> Vec<Appended> {
        results.into_iter().map(|r| r.expect("appended")).collect()
    }

    fn seqs(appended: &[Appended]) -> Vec<u64> {
        appended.iter().map(|a| a.seq).collect()
    }

    async fn with_users(store: &ChatStore, names: &[&str]) {
        for name in names {
            store
                .create_user(name, &format!("hash-of-{name}"), 1)
                .await
                .expect("create user");
        }
    }

    async fn users_register_once(store: ChatStore) {
        store.create_user("alice", "h1", 10).await.expect("create");
        assert_eq!(
            store.create_user("alice", "h2", 11).await,
            Err(StoreError::UsernameTaken)
        );
        let alice = store
            .get_user("alice")
            .await
            .expect("get")
            .expect("alice exists");
        assert_eq!((alice.password_hash.as_str(), alice.created_ts), ("h1", 10));
        assert_eq!(store.get_user("nobody").await, Ok(None));
    }

    async fn direct_conversations_are_unique_per_pair(store: ChatStore) {
        with_users(&store, &["alice", "bob"]).await;
        let (first, created) = store
            .create_conversation("alice", vec!["bob".into()], None, 100)
            .await
            .expect("create");
        assert!(created);
        assert_eq!(
            (first.conv_id, first.kind),
            (1, ConvKind::Direct),
            "ids start at 1"
        );
        // The other side finds the same conversation.
        let (again, created) = store
            .create_conversation("bob", vec!["alice".into()], None, 200)
            .await
            .expect("create");
        assert!(!created);
        assert_eq!(again, first);
        assert_eq!(
            store
                .create_conversation("alice", vec!["zed".into()], None, 300)
                .await,
            Err(StoreError::UnknownUser("zed".into()))
        );
    }

    async fn appends_get_gapless_seqs_and_history_pages_back(store: ChatStore) {
        with_users(&store, &["alice", "bob", "carol"]).await;
        let (conv, _) = store
            .create_conversation(
                "alice",
                vec!["bob".into(), "carol".into()],
                Some("g".into()),
                10,
            )
            .await
            .expect("create");
        let first = ok(store
            .append(
                conv.conv_id,
                vec![
                    msg("alice", "a1", "hi"),
                    msg("bob", "b1", "hey"),
                    msg("alice", "a2", "sup"),
                ],
                20,
            )
            .await
            .expect("append"));
        assert_eq!(seqs(&first), vec![1, 2, 3]);
        let batch = (4..=7)
            .map(|i| msg("carol", &format!("c{i}"), &format!("body {i}")))
            .collect();
        assert_eq!(
            seqs(&ok(store
                .append(conv.conv_id, batch, 30)
                .await
                .expect("append"))),
            vec![4, 5, 6, 7]
        );

        let page_seqs =
            |page: &Vec<chat_proto::Message>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
        let (page, next) = store
            .history("bob", conv.conv_id, None, 3)
            .await
            .expect("history");
        assert_eq!((page_seqs(&page), next), (vec![5, 6, 7], Some(5)));
        let (page, next) = store
            .history("bob", conv.conv_id, next, 3)
            .await
            .expect("history");
        assert_eq!((page_seqs(&page), next), (vec![2, 3, 4], Some(2)));
        let (page, next) = store
            .history("bob", conv.conv_id, next, 3)
            .await
            .expect("history");
        assert_eq!((page_seqs(&page), next), (vec![1], None));
        let (page, last) = store
            .messages_after("bob", conv.conv_id, 5, 10)
            .await
            .expect("sync");
        assert_eq!((page_seqs(&page), last), (vec![6, 7], 7));
        assert_eq!(
            store.history("mallory", conv.conv_id, None, 3).await,
            Err(StoreError::UnknownConversation)
        );
    }

    async fn resends_are_idempotent(store: ChatStore) {
        with_users(&store, &["alice", "bob"]).await;
        let (conv, _) = store
            .create_conversation("alice", vec!["bob".into()], None, 10)
            .await
            .expect("create");
        let first = ok(store
            .append(conv.conv_id, vec![msg("alice", "m1", "hello")], 20)
            .await
            .expect("append"));
        let resent = ok(store
            .append(conv.conv_id, vec![msg("alice", "m1", "hello again")], 30)
            .await
            .expect("append"));
        assert_eq!((resent[0].seq, resent[0].fresh), (first[0].seq, false));
        assert_eq!(
            resent[0].message, first[0].message,
            "the stored message, not the resent body"
        );
        let (all, _) = store
            .history("bob", conv.conv_id, None, 50)
            .await
            .expect("history");
        assert_eq!(all.len(), 1, "nothing new stored");
    }

    async fn inbox_orders_by_recency_and_counts_unread(store: ChatStore) {
        with_users(&store, &["alice", "bob", "carol"]).await;
        let (with_bob, _) = store
            .create_conversation("alice", vec!["bob".into()], None, 10)
            .await
            .expect("create");
        let (with_carol, _) = store
            .create_conversation("carol", vec!["alice".into()], None, 20)
            .await
            .expect("create");
        let order = |items: &Vec<chat_store::InboxItem>| {
            items.iter().map(|i| i.conv.conv_id).collect::<Vec<_>>()
        };
        let inbox = store.inbox("alice", 10, None).await.expect("inbox").0;
        assert_eq!(order(&inbox), vec![with_carol.conv_id, with_bob.conv_id]);

        ok(store
            .append(
                with_bob.conv_id,
                vec![msg("bob", "b1", "ping"), msg("bob", "b2", "pong")],
                30,
            )
            .await
            .expect("append"));
        let inbox = store.inbox("alice", 10, None).await.expect("inbox").0;
        assert_eq!(
            order(&inbox),
            vec![with_bob.conv_id, with_carol.conv_id],
            "moved, one entry per conversation"
        );
        assert_eq!((inbox[0].last_seq, inbox[0].unread), (2, 2));
        assert_eq!(
            inbox[0].last_message.as_ref().map(|m| m.body.as_str()),
            Some("pong")
        );
        store
            .mark_read("alice", with_bob.conv_id, 1)
            .await
            .expect("mark");
        assert_eq!(
            store.inbox("alice", 1, None).await.expect("inbox").0[0].unread,
            1
        );
        store
            .mark_read("alice", with_bob.conv_id, 0)
            .await
            .expect("mark");
        assert_eq!(
            store.inbox("alice", 1, None).await.expect("inbox").0[0].unread,
            1,
            "never backwards"
        );
    }

    /// The hot-conversation case: concurrent append transactions all read and write the
    /// conversation's `head`, so they conflict; every one must still land, with distinct,
    /// gapless seqs.
    async fn concurrent_appends_to_one_conversation_are_gapless(store: ChatStore) {
        const SENDS: u64 = 20;
        with_users(&store, &["alice", "bob"]).await;
        let (conv, _) = store
            .create_conversation("alice", vec!["bob".into()], None, 10)
            .await
            .expect("create");
        let sends = (0..SENDS).map(|i| {
            store.append(
                conv.conv_id,
                vec![msg("alice", &format!("c{i}"), "x")],
                20 + i,
            )
        });
        let mut landed: Vec<u64> = join_all(sends)
            .await
            .into_iter()
            .map(|r| ok(r.expect("append"))[0].seq)
            .collect();
        landed.sort();
        assert_eq!(
            landed,
            (1..=SENDS).collect::<Vec<_>>(),
            "gapless and distinct under conflicts"
        );
        let (page, last) = store
            .messages_after("bob", conv.conv_id, 0, 100)
            .await
            .expect("sync");
        assert_eq!((page.len() as u64, last), (SENDS, SENDS));
    }

    /// Conversation ids come from one counter key: concurrent creations conflict on it and
    /// must still get distinct ids from 1.
    async fn concurrent_creations_get_distinct_ids(store: ChatStore) {
        const CREATIONS: u64 = 10;
        with_users(&store, &["alice", "bob"]).await;
        let creations = (0..CREATIONS).map(|i| {
            store.create_conversation(
                "alice",
                vec!["bob".into()],
                Some(format!("group {i}")),
                10 + i,
            )
        });
        let mut ids: Vec<u64> = join_all(creations)
            .await
            .into_iter()
            .map(|r| r.expect("create").0.conv_id)
            .collect();
        ids.sort();
        assert_eq!(ids, (1..=CREATIONS).collect::<Vec<_>>());
    }
}

/// Every key of the inner store under a fixed prefix, so the scenarios neither see nor
/// touch anything else in a shared database.
struct PrefixedKv {
    inner: Arc<dyn Kv>,
    prefix: Vec<u8>,
}

struct PrefixedTx {
    inner: Tx,
    prefix: Vec<u8>,
}

impl PrefixedTx {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = self.prefix.clone();
        full.extend_from_slice(key);
        full
    }
}

#[async_trait]
impl Kv for PrefixedKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        Ok(Tx::new(Arc::new(PrefixedTx {
            inner: self.inner.begin().await?,
            prefix: self.prefix.clone(),
        })))
    }
}

#[async_trait]
impl KvTx for PrefixedTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(&self.key(key)).await
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        let pairs = self
            .inner
            .get_range(&self.key(begin), &self.key(end), limit, reverse)
            .await?;
        pairs
            .into_iter()
            .map(
                |(key, value)| match key.strip_prefix(self.prefix.as_slice()) {
                    Some(rest) => Ok((rest.to_vec(), value)),
                    None => Err(KvError::Corrupt(
                        "a range read returned a key outside its prefix".into(),
                    )),
                },
            )
            .collect()
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.inner.set(&self.key(key), value)
    }

    fn clear(&self, key: &[u8]) {
        self.inner.clear(&self.key(key))
    }

    fn clear_range(&self, begin: &[u8], end: &[u8]) {
        self.inner.clear_range(&self.key(begin), &self.key(end))
    }

    async fn commit(&self) -> Result<(), KvError> {
        self.inner.commit().await
    }
}
