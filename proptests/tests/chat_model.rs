//! `ChatStore` on every backend against the chat model: rounds of one to three `append`
//! batches run concurrently (their transactions interleave and conflict), with senders from
//! members and non-members and client ids that repeat within and across batches. Each
//! round's answers must be those of the model applying the batches one after the other in
//! SOME order; that order becomes the model's. At the end, paging `history` backwards
//! rebuilds every log, non-members are refused, and every inbox matches.

use chat_proptests::backend::{Backend, Opened, YieldingKv, block_on, config};
use chat_proptests::chat_model::{ChatModel, permutations};
use chat_proto::{ConvId, Seq};
use chat_store::{AppendError, Appended, ChatStore, NewMessage, RunOptions, StoreError};
use futures::future::join_all;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

const USERS: usize = 5;
/// Client message ids are drawn from this few, so they repeat.
const CLIENT_IDS: usize = 4;
const CREATED_TS: u64 = 100;
/// Not a conversation of any case.
const MISSING_CONV: ConvId = 1_000;

fn user(i: usize) -> String {
    format!("user{i}")
}

#[derive(Debug, Clone)]
struct Batch {
    /// An index into the case's conversations; past the end means [`MISSING_CONV`].
    conv: usize,
    /// `(sender, client id)` indices.
    items: Vec<(usize, usize)>,
    /// Often below the conversation's last activity, which must then win.
    ts: u64,
    /// Yields before the batch starts, to vary the interleaving.
    delay_yields: usize,
}

#[derive(Debug, Clone)]
struct Case {
    /// Member sets of groups; conversation 0 is always the direct one of user0 and user1.
    groups: Vec<std::collections::BTreeSet<usize>>,
    rounds: Vec<Vec<Batch>>,
    /// Page size when reading history back.
    page_len: u32,
}

fn cases() -> impl Strategy<Value = Case> {
    let batch = (
        0..=4usize,
        vec((0..USERS, 0..CLIENT_IDS), 1..=4),
        95..=110u64,
        0..4usize,
    )
        .prop_map(|(conv, items, ts, delay_yields)| Batch {
            conv,
            items,
            ts,
            delay_yields,
        });
    (
        vec(btree_set(0..USERS, 1..=4), 1..=3),
        vec(vec(batch, 1..=3), 1..=8),
        1..=7u32,
    )
        .prop_map(|(groups, rounds, page_len)| Case {
            groups,
            rounds,
            page_len,
        })
}

type Answers = Vec<Result<Appended, AppendError>>;

fn check(backend: Backend, case: Case) -> Result<(), TestCaseError> {
    let Opened { kv, .. } = &backend.open();
    let yielding = Arc::new(YieldingKv::new(kv.clone()));
    // Short back-off: concurrent batches of one conversation conflict on its head and retry.
    let run_options = RunOptions {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(8),
        ..RunOptions::default()
    };
    let store = ChatStore::with_run_options(yielding.clone(), run_options);
    block_on(async {
        let fail = |what: String, e: StoreError| TestCaseError::fail(format!("{what}: {e}"));
        for i in 0..USERS {
            store
                .create_user(&user(i), "hash", 1)
                .await
                .map_err(|e| fail(format!("create {}", user(i)), e))?;
        }
        // Conversations, and the model's copy of them.
        let mut model = ChatModel::default();
        let mut conv_ids = Vec::new();
        let mut specs: Vec<(Vec<String>, Option<String>)> = vec![(vec![user(0), user(1)], None)];
        specs.extend(case.groups.iter().map(|g| {
            (
                g.iter().map(|&i| user(i)).collect(),
                Some("group".to_string()),
            )
        }));
        for (members, title) in specs {
            let (creator, others) = (members[0].clone(), members[1..].to_vec());
            let (conv, created) = store
                .create_conversation(&creator, others, title, CREATED_TS)
                .await
                .map_err(|e| fail("create conversation".into(), e))?;
            prop_assert!(created);
            prop_assert_eq!(
                conv.conv_id,
                conv_ids.len() as ConvId + 1,
                "conversation ids count from 1"
            );
            prop_assert_eq!(&conv.members, &members);
            model.add_conv(conv.conv_id, members, CREATED_TS);
            conv_ids.push(conv.conv_id);
        }

        for (r, round) in case.rounds.iter().enumerate() {
            let requests: Vec<(ConvId, Vec<NewMessage>, u64)> = round
                .iter()
                .enumerate()
                .map(|(b, batch)| {
                    let conv = conv_ids.get(batch.conv).copied().unwrap_or(MISSING_CONV);
                    let items = batch
                        .items
                        .iter()
                        .enumerate()
                        .map(|(i, &(sender, id))| NewMessage {
                            sender: user(sender),
                            client_msg_id: format!("m{id}"),
                            body: format!("round {r} batch {b} item {i}"),
                            amend: None,
                        })
                        .collect();
                    (conv, items, batch.ts)
                })
                .collect();
            let answers: Vec<Result<Answers, StoreError>> = join_all(
                requests
                    .iter()
                    .zip(round)
                    .map(|((conv, items, ts), batch)| {
                        let store = &store;
                        async move {
                            for _ in 0..batch.delay_yields {
                                tokio::task::yield_now().await;
                            }
                            store.append(*conv, items.clone(), *ts).await
                        }
                    }),
            )
            .await;
            let mut answers_ok = Vec::new();
            for (b, answer) in answers.into_iter().enumerate() {
                answers_ok.push(answer.map_err(|e| fail(format!("round {r} batch {b}"), e))?);
            }
            // Some serial order of the round's batches must explain every answer.
            let explained = permutations(round.len()).into_iter().find_map(|order| {
                let mut candidate = model.clone();
                let mut expected: Vec<Option<Answers>> = vec![None; round.len()];
                for &b in &order {
                    let (conv, items, ts) = &requests[b];
                    expected[b] = Some(candidate.append(*conv, items, *ts));
                }
                let matches = expected
                    .iter()
                    .zip(&answers_ok)
                    .all(|(want, got)| want.as_ref() == Some(got));
                matches.then_some(candidate)
            });
            match explained {
                Some(next) => model = next,
                None => {
                    return Err(TestCaseError::fail(format!(
                        "round {r}: no serial order of the batches explains the answers\nrequests: {requests:#?}\nanswers: {answers_ok:#?}"
                    )));
                }
            }
        }

        // History, paged backwards, rebuilds each log; non-members and missing ones are refused.
        for conv in &model.convs {
            for u in (0..USERS).map(user) {
                if !conv.members.contains(&u) {
                    let refused = store.history(&u, conv.conv_id, None, case.page_len).await;
                    prop_assert_eq!(
                        refused,
                        Err(StoreError::UnknownConversation),
                        "{} reads conv {}",
                        u,
                        conv.conv_id
                    );
                    continue;
                }
                let mut pages = Vec::new();
                let mut before: Option<Seq> = None;
                for _ in 0..=conv.log.len() {
                    let (page, next) = store
                        .history(&u, conv.conv_id, before, case.page_len)
                        .await
                        .map_err(|e| fail(format!("history of conv {}", conv.conv_id), e))?;
                    prop_assert!(page.len() <= case.page_len as usize);
                    pages.push(page);
                    before = next;
                    if before.is_none() {
                        break;
                    }
                }
                prop_assert!(
                    before.is_none(),
                    "history of conv {} does not end",
                    conv.conv_id
                );
                let rebuilt: Vec<_> = pages.into_iter().rev().flatten().collect();
                prop_assert_eq!(
                    &rebuilt,
                    &conv.log,
                    "history of conv {} read by {}",
                    conv.conv_id,
                    u
                );
            }
        }
        let missing = store.history(&user(0), MISSING_CONV, None, 10).await;
        prop_assert_eq!(missing, Err(StoreError::UnknownConversation));

        // Inboxes: order, last message and unread counts.
        for u in (0..USERS).map(user) {
            let (inbox, _) = store
                .inbox(&u, 100, None)
                .await
                .map_err(|e| fail(format!("inbox of {u}"), e))?;
            let got: Vec<_> = inbox
                .into_iter()
                .map(|item| {
                    (
                        item.conv.conv_id,
                        item.last_seq,
                        item.last_message,
                        item.unread,
                    )
                })
                .collect();
            prop_assert_eq!(got, model.inbox(&u), "inbox of {}", u);
        }
        Ok(())
    })
}

/// The harness itself: two batches of one conversation started together really overlap
/// (one conflicts on the head key and retries), and both land, gapless.
#[test]
fn concurrent_batches_of_one_conversation_conflict_and_retry() {
    let Opened { kv, .. } = &Backend::Memory.open();
    let yielding = Arc::new(YieldingKv::new(kv.clone()));
    let store = ChatStore::new(yielding.clone());
    block_on(async {
        store
            .create_user(&user(0), "hash", 1)
            .await
            .expect("create user");
        let (conv, _) = store
            .create_conversation(&user(0), vec![], None, CREATED_TS)
            .await
            .expect("create conversation");
        let send = |id: &str| NewMessage {
            sender: user(0),
            client_msg_id: id.into(),
            body: "hi".into(),
            amend: None,
        };
        let (a, b) = futures::join!(
            store.append(conv.conv_id, vec![send("a")], CREATED_TS),
            store.append(conv.conv_id, vec![send("b")], CREATED_TS),
        );
        let mut seqs: Vec<Seq> = [a, b]
            .into_iter()
            .map(|r| r.expect("append")[0].as_ref().expect("stored").seq)
            .collect();
        seqs.sort();
        assert_eq!(seqs, vec![1, 2]);
    });
    assert!(
        yielding.conflicts() >= 1,
        "the two transactions did not overlap"
    );
}

proptest! {
    #![proptest_config(config(128))]
    #[test]
    fn chat_store_on_memory_kv_matches_the_model(case in cases()) {
        check(Backend::Memory, case)?;
    }
}

proptest! {
    // Each commit fsyncs.
    #![proptest_config(config(24))]
    #[test]
    fn chat_store_on_redb_kv_matches_the_model(case in cases()) {
        check(Backend::Redb, case)?;
    }
}
