//! The chat data model, over every local backend.

use async_trait::async_trait;
use chat_proto::api::ConvChange;
use chat_proto::{ConvEvent, ConvKind, Conversation, Role};
use chat_store::{
    AppendError, Appended, ChatStore, Kv, KvError, KvTx, MemoryKv, NewMessage, StoreError, Tx,
    UserRecord,
};
use futures::future::join_all;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A store plus whatever must live as long as it (a temporary directory).
struct Fixture {
    store: ChatStore,
    _dir: Option<tempfile::TempDir>,
}

fn memory() -> Fixture {
    Fixture {
        store: ChatStore::new(Arc::new(MemoryKv::new())),
        _dir: None,
    }
}

#[cfg(not(madsim))]
fn redb() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = chat_store::RedbKv::open(dir.path().join("chat.redb")).expect("open redb");
    Fixture {
        store: ChatStore::new(Arc::new(kv)),
        _dir: Some(dir),
    }
}

/// Runs each scenario against MemoryKv and RedbKv.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {
        mod memory_kv {
            $(#[tokio::test] async fn $scenario() { super::$scenario(super::memory().store).await; })*
        }
        #[cfg(not(madsim))]
        mod redb_kv {
            $(#[tokio::test] async fn $scenario() { let f = super::redb(); super::$scenario(f.store.clone()).await; })*
        }
    };
}

on_every_backend!(
    users,
    direct_conversations_are_unique_per_pair,
    unknown_members_are_rejected,
    appends_get_gapless_seqs_from_one,
    resends_are_idempotent,
    duplicates_inside_a_batch_share_one_seq,
    non_members_are_rejected_per_item,
    history_pages_backwards_in_ascending_order,
    inbox_orders_by_recency_and_counts_unread,
    mark_read_is_capped_and_never_moves_back,
    messages_after_serves_sync,
    concurrent_appends_to_one_conversation_all_land,
    owners_change_members_and_changes_are_events,
    removed_members_read_up_to_their_removal,
    members_may_leave_but_the_last_owner_may_not_strand_a_group,
    senders_edit_and_delete_their_messages_as_events,
);

fn msg(sender: &str, id: &str, body: &str) -> NewMessage {
    NewMessage {
        sender: sender.into(),
        client_msg_id: id.into(),
        body: body.into(),
        amend: None,
    }
}

async fn with_users(store: &ChatStore, names: &[&str]) {
    for name in names {
        store
            .create_user(name, &format!("hash-of-{name}"), 1)
            .await
            .expect("create user");
    }
}

async fn group(store: &ChatStore, creator: &str, others: &[&str], ts: u64) -> Conversation {
    let others = others.iter().map(|s| s.to_string()).collect();
    let (conv, created) = store
        .create_conversation(creator, others, Some("g".into()), ts)
        .await
        .expect("create group");
    assert!(created);
    conv
}

async fn direct(store: &ChatStore, a: &str, b: &str, ts: u64) -> (Conversation, bool) {
    store
        .create_conversation(a, vec![b.into()], None, ts)
        .await
        .expect("create direct")
}

fn ok(results: Vec<Result<Appended, AppendError>>) -> Vec<Appended> {
    results.into_iter().map(|r| r.expect("appended")).collect()
}

async fn users(store: ChatStore) {
    store.create_user("alice", "h1", 10).await.expect("create");
    assert_eq!(
        store.create_user("alice", "h2", 11).await,
        Err(StoreError::UsernameTaken)
    );
    assert_eq!(
        store.get_user("alice").await,
        Ok(Some(UserRecord {
            password_hash: "h1".into(),
            created_ts: 10
        }))
    );
    assert_eq!(store.get_user("nobody").await, Ok(None));
}

async fn direct_conversations_are_unique_per_pair(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol"]).await;
    let (first, created) = direct(&store, "alice", "bob", 100).await;
    assert!(created);
    assert_eq!(first.conv_id, 1, "ids start at 1");
    assert_eq!(first.kind, ConvKind::Direct);
    assert_eq!(first.members, vec!["alice", "bob"]);
    assert_eq!(first.title, None);
    assert_eq!(first.created_ts, 100);

    let (again, created) = direct(&store, "bob", "alice", 200).await;
    assert!(!created, "the other side finds the same conversation");
    assert_eq!(again, first);
    let (dup, created) = store
        .create_conversation(
            "alice",
            vec!["bob".into(), "alice".into(), "bob".into()],
            None,
            300,
        )
        .await
        .expect("create");
    assert!(!created, "members are deduplicated before deciding");
    assert_eq!(dup, first);

    let (titled, created) = store
        .create_conversation("alice", vec!["bob".into()], Some("plans".into()), 400)
        .await
        .expect("create");
    assert!(created, "a title makes a group");
    assert_eq!((titled.conv_id, titled.kind), (2, ConvKind::Group));
    let (other, created) = direct(&store, "carol", "alice", 500).await;
    assert!(created);
    assert_eq!((other.conv_id, other.kind), (3, ConvKind::Direct));
    assert_eq!(store.conversation(1).await, Ok(Some(first)));
    assert_eq!(store.conversation(99).await, Ok(None));
}

async fn unknown_members_are_rejected(store: ChatStore) {
    with_users(&store, &["alice", "bob"]).await;
    let result = store
        .create_conversation("alice", vec!["bob".into(), "zed".into()], None, 1)
        .await;
    assert_eq!(result, Err(StoreError::UnknownUser("zed".into())));
    let result = store
        .create_conversation("ghost", vec!["bob".into()], None, 1)
        .await;
    assert_eq!(result, Err(StoreError::UnknownUser("ghost".into())));
    // Nothing was allocated by the failed attempts.
    let (conv, _) = direct(&store, "alice", "bob", 2).await;
    assert_eq!(conv.conv_id, 1);
}

async fn appends_get_gapless_seqs_from_one(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol"]).await;
    let conv = group(&store, "alice", &["bob", "carol"], 10).await;
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
    assert_eq!(
        first.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        first
            .iter()
            .all(|a| a.fresh && a.ts == 20 && a.message.ts == 20)
    );
    assert_eq!(first[1].message.sender, "bob");
    assert_eq!(first[1].message.body, "hey");
    assert_eq!(first[1].message.conv, conv.conv_id);
    let second = ok(store
        .append(conv.conv_id, vec![msg("carol", "c1", "yo")], 30)
        .await
        .expect("append"));
    assert_eq!(second[0].seq, 4);
    let (all, next) = store
        .history("carol", conv.conv_id, None, 50)
        .await
        .expect("history");
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(next, None);
}

async fn resends_are_idempotent(store: ChatStore) {
    with_users(&store, &["alice", "bob"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let first = ok(store
        .append(conv.conv_id, vec![msg("alice", "m1", "hello")], 20)
        .await
        .expect("append"));
    let resent = ok(store
        .append(conv.conv_id, vec![msg("alice", "m1", "hello again")], 30)
        .await
        .expect("append"));
    assert_eq!(resent[0].seq, first[0].seq);
    assert!(!resent[0].fresh);
    assert_eq!(resent[0].ts, 20, "the stored message's ts");
    assert_eq!(
        resent[0].message, first[0].message,
        "the stored message, not the resent body"
    );
    let (all, _) = store
        .history("bob", conv.conv_id, None, 50)
        .await
        .expect("history");
    assert_eq!(all.len(), 1, "nothing new stored");
    let (_, last_seq) = store
        .messages_after("bob", conv.conv_id, 0, 10)
        .await
        .expect("sync");
    assert_eq!(last_seq, 1);
    // The same id from another sender is another message.
    let other = ok(store
        .append(conv.conv_id, vec![msg("bob", "m1", "mine")], 40)
        .await
        .expect("append"));
    assert_eq!((other[0].seq, other[0].fresh), (2, true));
}

async fn duplicates_inside_a_batch_share_one_seq(store: ChatStore) {
    with_users(&store, &["alice", "bob"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let results = ok(store
        .append(
            conv.conv_id,
            vec![
                msg("alice", "x", "one"),
                msg("alice", "x", "one"),
                msg("bob", "x", "two"),
            ],
            20,
        )
        .await
        .expect("append"));
    assert_eq!(
        results.iter().map(|a| (a.seq, a.fresh)).collect::<Vec<_>>(),
        vec![(1, true), (1, false), (2, true)]
    );
    assert_eq!(results[1].message, results[0].message);
    let (all, _) = store
        .history("alice", conv.conv_id, None, 50)
        .await
        .expect("history");
    assert_eq!(all.len(), 2);
}

async fn non_members_are_rejected_per_item(store: ChatStore) {
    with_users(&store, &["alice", "bob", "mallory"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let results = store
        .append(
            conv.conv_id,
            vec![msg("mallory", "m", "let me in"), msg("alice", "a", "hi")],
            20,
        )
        .await
        .expect("append");
    assert_eq!(results[0], Err(AppendError::UnknownConversation));
    assert_eq!(
        results[1].as_ref().map(|a| a.seq),
        Ok(1),
        "the member's message still lands"
    );
    let results = store
        .append(
            404,
            vec![msg("alice", "a", "hi"), msg("bob", "b", "yo")],
            20,
        )
        .await
        .expect("append");
    assert_eq!(
        results,
        vec![
            Err(AppendError::UnknownConversation),
            Err(AppendError::UnknownConversation)
        ]
    );
    assert_eq!(
        store.history("mallory", conv.conv_id, None, 10).await,
        Err(StoreError::UnknownConversation)
    );
    assert_eq!(
        store.history("alice", 404, None, 10).await,
        Err(StoreError::UnknownConversation)
    );
}

async fn history_pages_backwards_in_ascending_order(store: ChatStore) {
    with_users(&store, &["alice", "bob"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let batch = (1..=7)
        .map(|i| msg("alice", &format!("m{i}"), &format!("body {i}")))
        .collect();
    ok(store.append(conv.conv_id, batch, 20).await.expect("append"));
    // Another conversation's messages never leak into this one's pages.
    let (other, _) = store
        .create_conversation("bob", vec![], None, 11)
        .await
        .expect("create");
    ok(store
        .append(other.conv_id, vec![msg("bob", "o1", "other")], 21)
        .await
        .expect("append"));

    let seqs = |page: &Vec<chat_proto::Message>| page.iter().map(|m| m.seq).collect::<Vec<_>>();
    let (page, next) = store
        .history("bob", conv.conv_id, None, 3)
        .await
        .expect("history");
    assert_eq!((seqs(&page), next), (vec![5, 6, 7], Some(5)));
    assert_eq!(page[0].body, "body 5");
    let (page, next) = store
        .history("bob", conv.conv_id, next, 3)
        .await
        .expect("history");
    assert_eq!((seqs(&page), next), (vec![2, 3, 4], Some(2)));
    let (page, next) = store
        .history("bob", conv.conv_id, next, 3)
        .await
        .expect("history");
    assert_eq!((seqs(&page), next), (vec![1], None));
    let (page, next) = store
        .history("bob", conv.conv_id, Some(4), 3)
        .await
        .expect("history");
    assert_eq!(
        (seqs(&page), next),
        (vec![1, 2, 3], None),
        "exactly reaching seq 1 ends the paging"
    );
    let (page, next) = store
        .history("bob", conv.conv_id, None, 100)
        .await
        .expect("history");
    assert_eq!((page.len(), next), (7, None));
    let (page, next) = store
        .history("bob", conv.conv_id, Some(1), 100)
        .await
        .expect("history");
    assert_eq!((page.len(), next), (0, None));
}

async fn inbox_orders_by_recency_and_counts_unread(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol"]).await;
    let (d_bob, _) = direct(&store, "alice", "bob", 10).await;
    let g = group(&store, "alice", &["bob", "carol"], 20).await;
    let (d_carol, _) = direct(&store, "carol", "alice", 30).await;
    let order = |items: &Vec<chat_store::InboxItem>| {
        items.iter().map(|i| i.conv.conv_id).collect::<Vec<_>>()
    };

    let inbox = store.inbox("alice", 10, None).await.expect("inbox").0;
    assert_eq!(
        order(&inbox),
        vec![d_carol.conv_id, g.conv_id, d_bob.conv_id],
        "creation time before any message"
    );
    assert!(
        inbox
            .iter()
            .all(|i| i.last_seq == 0 && i.last_message.is_none() && i.unread == 0)
    );
    assert_eq!(inbox[1].conv, g);

    ok(store
        .append(d_bob.conv_id, vec![msg("bob", "b1", "ping")], 40)
        .await
        .expect("append"));
    let inbox = store.inbox("alice", 10, None).await.expect("inbox").0;
    assert_eq!(
        order(&inbox),
        vec![d_bob.conv_id, d_carol.conv_id, g.conv_id],
        "one entry per conversation, moved"
    );
    assert_eq!((inbox[0].last_seq, inbox[0].unread), (1, 1));
    assert_eq!(
        inbox[0].last_message.as_ref().map(|m| m.body.as_str()),
        Some("ping")
    );
    let bob = store.inbox("bob", 10, None).await.expect("inbox").0;
    assert_eq!(order(&bob), vec![d_bob.conv_id, g.conv_id]);
    assert_eq!(
        bob[0].unread, 0,
        "the sender's cursor moved to its own message"
    );

    ok(store
        .append(
            g.conv_id,
            vec![msg("alice", "a1", "x"), msg("alice", "a2", "y")],
            50,
        )
        .await
        .expect("append"));
    let inbox = store.inbox("alice", 2, None).await.expect("inbox").0;
    assert_eq!(
        order(&inbox),
        vec![g.conv_id, d_bob.conv_id],
        "limit keeps the most recent"
    );
    assert_eq!(inbox[0].unread, 0);
    let bob = store.inbox("bob", 10, None).await.expect("inbox").0;
    assert_eq!(order(&bob), vec![g.conv_id, d_bob.conv_id]);
    assert_eq!((bob[0].last_seq, bob[0].unread), (2, 2));

    // A late clock does not move a conversation backwards.
    let late = ok(store
        .append(d_bob.conv_id, vec![msg("bob", "b2", "late")], 5)
        .await
        .expect("append"));
    assert_eq!(
        late[0].ts, 40,
        "ts never goes below the conversation's last activity"
    );
    let inbox = store.inbox("alice", 10, None).await.expect("inbox").0;
    assert_eq!(inbox.len(), 3);
    assert_eq!(
        order(&inbox),
        vec![g.conv_id, d_bob.conv_id, d_carol.conv_id]
    );
    assert_eq!(inbox[1].unread, 2);
    assert_eq!(store.inbox("alice", 0, None).await, Ok((vec![], None)));
    assert_eq!(store.inbox("nobody", 10, None).await, Ok((vec![], None)));
}

async fn mark_read_is_capped_and_never_moves_back(store: ChatStore) {
    with_users(&store, &["alice", "bob", "mallory"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    ok(store
        .append(
            conv.conv_id,
            vec![msg("alice", "1", "a"), msg("alice", "2", "b")],
            20,
        )
        .await
        .expect("append"));
    let unread = |store: &ChatStore| {
        let store = store.clone();
        async move { store.inbox("bob", 10, None).await.expect("inbox").0[0].unread }
    };
    assert_eq!(unread(&store).await, 2);
    store.mark_read("bob", conv.conv_id, 1).await.expect("mark");
    assert_eq!(unread(&store).await, 1);
    store
        .mark_read("bob", conv.conv_id, 100)
        .await
        .expect("mark");
    assert_eq!(unread(&store).await, 0);
    store.mark_read("bob", conv.conv_id, 0).await.expect("mark");
    assert_eq!(unread(&store).await, 0, "never backwards");
    ok(store
        .append(conv.conv_id, vec![msg("alice", "3", "c")], 30)
        .await
        .expect("append"));
    assert_eq!(
        unread(&store).await,
        1,
        "the cursor was capped at 2, not 100"
    );
    assert_eq!(
        store.mark_read("mallory", conv.conv_id, 1).await,
        Err(StoreError::UnknownConversation)
    );
    assert_eq!(
        store.mark_read("bob", 404, 1).await,
        Err(StoreError::UnknownConversation)
    );
}

async fn messages_after_serves_sync(store: ChatStore) {
    with_users(&store, &["alice", "bob", "mallory"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let (none, last) = store
        .messages_after("bob", conv.conv_id, 0, 10)
        .await
        .expect("sync");
    assert_eq!((none.len(), last), (0, 0));
    let batch = (1..=5)
        .map(|i| msg("alice", &format!("m{i}"), "x"))
        .collect();
    ok(store.append(conv.conv_id, batch, 20).await.expect("append"));
    let (page, last) = store
        .messages_after("bob", conv.conv_id, 0, 2)
        .await
        .expect("sync");
    assert_eq!(
        (page.iter().map(|m| m.seq).collect::<Vec<_>>(), last),
        (vec![1, 2], 5)
    );
    let (page, _) = store
        .messages_after("bob", conv.conv_id, 2, 10)
        .await
        .expect("sync");
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let (page, last) = store
        .messages_after("bob", conv.conv_id, 5, 10)
        .await
        .expect("sync");
    assert_eq!((page.len(), last), (0, 5));
    let (page, _) = store
        .messages_after("bob", conv.conv_id, u64::MAX, 10)
        .await
        .expect("sync");
    assert!(page.is_empty());
    assert_eq!(
        store.messages_after("mallory", conv.conv_id, 0, 10).await,
        Err(StoreError::UnknownConversation)
    );
}

async fn concurrent_appends_to_one_conversation_all_land(store: ChatStore) {
    with_users(&store, &["alice", "bob"]).await;
    let (conv, _) = direct(&store, "alice", "bob", 10).await;
    let sends = (0..20).map(|i| {
        store.append(
            conv.conv_id,
            vec![msg("alice", &format!("c{i}"), "x")],
            20 + i,
        )
    });
    let results = join_all(sends).await;
    let mut seqs: Vec<u64> = results
        .into_iter()
        .map(|r| ok(r.expect("append"))[0].seq)
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<_>>(),
        "gapless and distinct under conflicts"
    );
}

/// A backend whose first `failures` commits apply and then report "unknown result", as
/// FoundationDB may when a proxy dies mid-commit.
struct UnknownResultKv {
    inner: MemoryKv,
    failures: AtomicU32,
}

struct UnknownResultTx {
    inner: Tx,
    fail: bool,
}

#[async_trait]
impl Kv for UnknownResultKv {
    async fn begin(&self) -> Result<Tx, KvError> {
        let fail = self
            .failures
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        Ok(Tx::new(Arc::new(UnknownResultTx {
            inner: self.inner.begin().await?,
            fail,
        })))
    }
}

#[async_trait]
impl KvTx for UnknownResultTx {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        b: &[u8],
        e: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        self.inner.get_range(b, e, limit, reverse).await
    }
    fn set(&self, key: &[u8], value: &[u8]) {
        self.inner.set(key, value)
    }
    fn clear(&self, key: &[u8]) {
        self.inner.clear(key)
    }
    fn clear_range(&self, b: &[u8], e: &[u8]) {
        self.inner.clear_range(b, e)
    }
    async fn commit(&self) -> Result<(), KvError> {
        self.inner.commit().await?;
        if self.fail {
            Err(KvError::CommitUnknownResult)
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn retries_after_an_unknown_commit_result_store_nothing_twice() {
    let memory = MemoryKv::new();
    let kv = Arc::new(UnknownResultKv {
        inner: memory.clone(),
        failures: AtomicU32::new(0),
    });
    let store = ChatStore::new(kv.clone());
    let fail_next_commit = || kv.failures.store(1, Ordering::Relaxed);

    fail_next_commit();
    store
        .create_user("alice", "salted-hash", 1)
        .await
        .expect("our own record counts as created");
    store.create_user("bob", "h", 1).await.expect("create");
    let (conv, _) = direct(&store, "alice", "bob", 10).await;

    fail_next_commit();
    let results = ok(store
        .append(
            conv.conv_id,
            vec![msg("alice", "m1", "hi"), msg("alice", "m2", "there")],
            20,
        )
        .await
        .expect("append"));
    assert_eq!(
        results.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![1, 2],
        "the landed attempt's seqs"
    );
    let (all, _) = store
        .history("bob", conv.conv_id, None, 10)
        .await
        .expect("history");
    assert_eq!(all.len(), 2, "stored once");
    let inbox = store.inbox("bob", 10, None).await.expect("inbox").0;
    assert_eq!((inbox.len(), inbox[0].last_seq, inbox[0].unread), (1, 2, 2));
}

fn set(user: &str, role: Role) -> ConvChange {
    ConvChange::SetMember {
        user: user.into(),
        role,
    }
}

fn remove(user: &str) -> ConvChange {
    ConvChange::RemoveMember { user: user.into() }
}

async fn owners_change_members_and_changes_are_events(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol", "dave"]).await;
    let conv = group(&store, "alice", &["bob"], 10).await;
    assert_eq!(conv.owners, ["alice"]);
    let c = conv.conv_id;
    ok(store
        .append(c, vec![msg("bob", "b1", "hi")], 20)
        .await
        .expect("append"));

    // Only owners add, set roles and titles; refusals change nothing.
    for change in [
        set("carol", Role::Member),
        set("bob", Role::Owner),
        ConvChange::SetTitle { title: None },
        remove("alice"),
    ] {
        assert!(
            matches!(
                store.change(c, "bob", &change, 30).await,
                Err(StoreError::Forbidden(_))
            ),
            "{change:?}"
        );
    }
    assert_eq!(
        store
            .change(c, "carol", &set("carol", Role::Owner), 30)
            .await,
        Err(StoreError::UnknownConversation),
        "a non-member learns nothing"
    );
    assert_eq!(
        store
            .change(c, "alice", &set("nobody", Role::Member), 30)
            .await,
        Err(StoreError::UnknownUser("nobody".into()))
    );

    let added = store
        .change(c, "alice", &set("carol", Role::Member), 40)
        .await
        .expect("add");
    let event = added.event.expect("an event");
    assert_eq!(event.seq, 2, "the next seq of the conversation");
    assert_eq!(
        event.event,
        Some(ConvEvent::MemberAdded {
            user: "carol".into(),
            role: Role::Member
        })
    );
    assert_eq!((event.sender.as_str(), event.body.as_str()), ("alice", ""));
    assert_eq!(added.conv.members, ["alice", "bob", "carol"]);
    assert_eq!(added.notify, ["alice", "bob", "carol"]);
    // The same change again changes nothing, and records nothing.
    let again = store
        .change(c, "alice", &set("carol", Role::Member), 41)
        .await
        .expect("again");
    assert_eq!(again.event, None);

    let promoted = store
        .change(c, "alice", &set("bob", Role::Owner), 50)
        .await
        .expect("promote");
    assert_eq!(promoted.conv.owners, ["alice", "bob"]);
    let titled = store
        .change(
            c,
            "bob",
            &ConvChange::SetTitle {
                title: Some("t2".into()),
            },
            60,
        )
        .await
        .expect("title");
    assert_eq!(titled.conv.title.as_deref(), Some("t2"));

    // A newcomer starts with the history before them read: unread are their addition
    // and what came after it.
    let (inbox, _) = store.inbox("carol", 10, None).await.expect("inbox");
    assert_eq!(inbox[0].unread, 3);

    // Messages after the addition are appended after the events, and delivered to the
    // members at their commit.
    let appended = ok(store
        .append(c, vec![msg("carol", "c1", "hello")], 70)
        .await
        .expect("append"));
    assert_eq!(appended[0].seq, 5);
    assert_eq!(&*appended[0].members, ["alice", "bob", "carol"]);
    let (page, _) = store.history("carol", c, None, 50).await.expect("history");
    let kinds: Vec<bool> = page.iter().map(|m| m.event.is_some()).collect();
    assert_eq!(kinds, [false, true, true, true, false]);

    // A direct conversation's members never change.
    let (d, _) = direct(&store, "alice", "dave", 80).await;
    assert!(matches!(
        store
            .change(d.conv_id, "alice", &set("bob", Role::Member), 90)
            .await,
        Err(StoreError::NotAllowed(_))
    ));
}

async fn removed_members_read_up_to_their_removal(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol"]).await;
    let c = group(&store, "alice", &["bob", "carol"], 10).await.conv_id;
    ok(store
        .append(c, vec![msg("bob", "b1", "one")], 20)
        .await
        .expect("append"));
    let removed = store
        .change(c, "alice", &remove("bob"), 30)
        .await
        .expect("remove");
    assert_eq!(removed.event.as_ref().map(|m| m.seq), Some(2));
    assert_eq!(removed.notify, ["alice", "carol", "bob"], "bob hears of it");
    let after = ok(store
        .append(c, vec![msg("alice", "a1", "secret")], 40)
        .await
        .expect("append"));
    assert_eq!(
        &*after[0].members,
        ["alice", "carol"],
        "never delivered to bob"
    );

    // Bob reads up to his removal, and not a message after it.
    let (page, next) = store.history("bob", c, None, 50).await.expect("history");
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(next, None);
    let (page, last) = store.messages_after("bob", c, 0, 50).await.expect("sync");
    assert_eq!((page.len(), last), (2, 2));
    let (page, _) = store
        .history("bob", c, Some(10), 50)
        .await
        .expect("history");
    assert_eq!(page.last().map(|m| m.seq), Some(2));
    store.mark_read("bob", c, 99).await.expect("read");
    let (inbox, _) = store.inbox("bob", 10, None).await.expect("inbox");
    assert_eq!(
        (inbox[0].last_seq, inbox[0].unread),
        (2, 0),
        "his inbox stops at his removal"
    );
    assert_eq!(inbox[0].last_message.as_ref().map(|m| m.seq), Some(2));
    // Nor how the others read from then on; and he can no longer send.
    assert_eq!(
        store.reads("bob", c).await,
        Err(StoreError::UnknownConversation)
    );
    let refused = store
        .append(c, vec![msg("bob", "b2", "let me in")], 50)
        .await
        .expect("append");
    assert_eq!(refused, vec![Err(AppendError::UnknownConversation)]);
    assert_eq!(
        store.change(c, "bob", &remove("bob"), 50).await,
        Err(StoreError::UnknownConversation)
    );

    // Added again, he reads everything again.
    store
        .change(c, "alice", &set("bob", Role::Member), 60)
        .await
        .expect("re-add");
    let (page, _) = store.history("bob", c, None, 50).await.expect("history");
    assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let (inbox, _) = store.inbox("bob", 10, None).await.expect("inbox");
    assert_eq!(inbox.len(), 1, "one inbox entry, at the newest activity");
    assert_eq!(inbox[0].last_seq, 4);
}

async fn members_may_leave_but_the_last_owner_may_not_strand_a_group(store: ChatStore) {
    with_users(&store, &["alice", "bob", "carol"]).await;
    let c = group(&store, "alice", &["bob", "carol"], 10).await.conv_id;
    let left = store
        .change(c, "carol", &remove("carol"), 20)
        .await
        .expect("leave");
    assert_eq!(
        left.event.and_then(|m| m.event),
        Some(ConvEvent::MemberRemoved {
            user: "carol".into()
        })
    );
    assert!(matches!(
        store.change(c, "alice", &remove("alice"), 30).await,
        Err(StoreError::NotAllowed(_))
    ));
    assert!(matches!(
        store
            .change(c, "alice", &set("alice", Role::Member), 30)
            .await,
        Err(StoreError::NotAllowed(_))
    ));
    store
        .change(c, "alice", &set("bob", Role::Owner), 40)
        .await
        .expect("promote");
    store
        .change(c, "alice", &remove("alice"), 50)
        .await
        .expect("leave");
    let conv = store.conversation(c).await.expect("read").expect("exists");
    assert_eq!(
        (conv.members, conv.owners),
        (vec!["bob".to_owned()], vec!["bob".to_owned()])
    );
}

fn amend(sender: &str, id: &str, body: &str, amend: chat_proto::Amend) -> NewMessage {
    NewMessage {
        amend: Some(amend),
        ..msg(sender, id, body)
    }
}

async fn senders_edit_and_delete_their_messages_as_events(store: ChatStore) {
    use chat_proto::Amend::{Delete, Edit};
    with_users(&store, &["alice", "bob"]).await;
    let (d, _) = direct(&store, "alice", "bob", 10).await;
    let c = d.conv_id;
    ok(store
        .append(
            c,
            vec![msg("alice", "a1", "helo"), msg("bob", "b1", "hi")],
            20,
        )
        .await
        .expect("append"));
    // An edit of a message written in the same batch, then of an earlier one.
    let results = store
        .append(
            c,
            vec![
                msg("alice", "a2", "tpyo"),
                amend("alice", "e1", "hello", Edit(1)),
                amend("alice", "e2", "typo", Edit(3)),
                amend("bob", "e3", "mine now", Edit(1)),
                amend("alice", "e4", "nothing there", Edit(99)),
                amend("alice", "e5", "an event", Edit(0)),
            ],
            30,
        )
        .await
        .expect("append");
    let seqs: Vec<Result<u64, AppendError>> = results
        .iter()
        .map(|r| r.as_ref().map(|a| a.seq).map_err(|e| *e))
        .collect();
    assert_eq!(
        seqs,
        [
            Ok(3),
            Ok(4),
            Ok(5),
            Err(AppendError::NotTheSender),
            Err(AppendError::NoSuchMessage),
            Err(AppendError::NoSuchMessage),
        ]
    );
    // The edit event is pushed with the new body.
    let pushed = &results[1].as_ref().expect("edit").message;
    assert_eq!(pushed.event, Some(ConvEvent::Edited { seq: 1 }));
    assert_eq!(pushed.body, "hello");

    let (page, _) = store.history("bob", c, None, 50).await.expect("history");
    let shown: Vec<(u64, &str, bool, bool)> = page
        .iter()
        .map(|m| (m.seq, m.body.as_str(), m.edited, m.deleted))
        .collect();
    assert_eq!(
        shown,
        [
            (1, "hello", true, false),
            (2, "hi", false, false),
            (3, "typo", true, false),
            (4, "hello", false, false),
            (5, "typo", false, false),
        ]
    );

    // Deleted: the body is gone from the message and from every edit event of it; deleting
    // or editing it again finds nothing.
    let deleted = store
        .append(c, vec![amend("alice", "x1", "", Delete(1))], 40)
        .await
        .expect("append");
    assert_eq!(deleted[0].as_ref().map(|a| a.seq), Ok(6));
    let again = store
        .append(
            c,
            vec![
                amend("alice", "x2", "", Delete(1)),
                amend("alice", "x3", "back", Edit(1)),
                amend("alice", "x4", "an edit event", Edit(4)),
            ],
            50,
        )
        .await
        .expect("append");
    assert!(again.iter().all(|r| *r == Err(AppendError::NoSuchMessage)));
    let (page, _) = store.messages_after("bob", c, 0, 50).await.expect("sync");
    assert_eq!((page[0].body.as_str(), page[0].deleted), ("", true));
    assert_eq!(
        page[3].body, "",
        "the edit event of a deleted message has no body"
    );
    assert_eq!(page[5].event, Some(ConvEvent::Deleted { seq: 1 }));
    // A resend of the delete answers its seq, and changes nothing.
    let resent = store
        .append(c, vec![amend("alice", "x1", "", Delete(1))], 60)
        .await
        .expect("append");
    assert_eq!(resent[0].as_ref().map(|a| (a.seq, a.fresh)), Ok((6, false)));
}

/// A deleted body is gone from storage: no key or value of the store holds its bytes.
#[tokio::test]
async fn a_deleted_body_is_gone_from_storage() {
    use chat_proto::Amend::{Delete, Edit};
    let kv: Arc<dyn Kv> = Arc::new(MemoryKv::new());
    let store = ChatStore::new(kv.clone());
    with_users(&store, &["alice", "bob"]).await;
    let (d, _) = direct(&store, "alice", "bob", 10).await;
    let c = d.conv_id;
    ok(store
        .append(c, vec![msg("alice", "a1", "secret one")], 20)
        .await
        .expect("append"));
    ok(store
        .append(c, vec![amend("alice", "e1", "secret two", Edit(1))], 30)
        .await
        .expect("edit"));
    ok(store
        .append(c, vec![amend("alice", "d1", "", Delete(1))], 40)
        .await
        .expect("delete"));
    let everything = chat_store::run(&*kv, |tx, _| async move {
        tx.get_range(&[0x00], &[0xff], 0, false).await
    })
    .await
    .expect("scan");
    assert!(!everything.is_empty());
    for (key, value) in everything {
        for secret in [&b"secret one"[..], &b"secret two"[..]] {
            assert!(
                !key.windows(secret.len()).any(|w| w == secret)
                    && !value.windows(secret.len()).any(|w| w == secret),
                "found {:?} under {:?}",
                String::from_utf8_lossy(secret),
                String::from_utf8_lossy(&key)
            );
        }
    }
}
