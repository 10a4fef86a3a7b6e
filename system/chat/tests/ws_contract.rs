//! The v1 WebSocket contract, over real sockets on 127.0.0.1:0.

mod common;

use chat_client::{ClientError, ClientFrame, ErrorCode, ServerFrame, WsConnection, WsEvent};
use common::*;
use std::collections::HashMap;

fn send(id: &str, conv: u64, body: &str) -> ClientFrame {
    ClientFrame::Send {
        id: id.into(),
        conv,
        body: body.into(),
    }
}

async fn expect_error(ws: &mut WsConnection, code: ErrorCode, id: Option<&str>) {
    match next_frame(ws).await {
        ServerFrame::Error {
            code: got,
            message,
            id: got_id,
            ..
        } => {
            assert_eq!(got, code, "message: {message}");
            assert!(!message.is_empty());
            assert_eq!(got_id.as_deref(), id);
        }
        other => panic!("expected an error {code}, got {other:?}"),
    }
}

/// The connection is still usable.
async fn assert_open(ws: &mut WsConnection) {
    ws.send(&ClientFrame::Ping).await.unwrap();
    assert_eq!(next_frame(ws).await, ServerFrame::Pong);
}

#[tokio::test]
async fn upgrade_requires_a_valid_token() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let anon = server.anonymous();

    let err = anon.connect_ws().await.err().expect("no token");
    assert_eq!(err.status(), Some(401));
    let forged = chat_auth::Tokens::new(
        b"another-secret-0123456789abcdef-xyz",
        chat_auth::Tokens::TTL_DEFAULT,
    )
    .issue("alice")
    .unwrap();
    let now = chat_proto::model::now_ms() / 1000;
    let expired = server
        .tokens
        .issue_with_expiry("alice", now - 100, now - 1)
        .unwrap();
    for token in [forged.token.as_str(), expired.token.as_str(), "garbage"] {
        let err = anon
            .connect_ws_with(&format!("/v1/ws?token={token}"), &[])
            .await
            .err()
            .expect("bad token");
        assert_eq!(err.status(), Some(401), "{token}");
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    }
    // The token may come in the Authorization header instead of the query.
    let header = format!("Bearer {}", alice.token().unwrap());
    let mut ws = anon
        .connect_ws_with("/v1/ws", &[("authorization", &header)])
        .await
        .unwrap();
    assert_open(&mut ws).await;
    let mut ws = alice.connect_ws().await.unwrap();
    assert_open(&mut ws).await;
}

#[tokio::test]
async fn messages_are_acked_and_pushed_to_every_other_device() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let (group, _) = alice
        .create_conversation(["bob"], Some("two"))
        .await
        .unwrap();
    let conv = group.conv_id;

    let mut alice_phone = alice.connect_ws().await.unwrap();
    let mut alice_laptop = alice.connect_ws().await.unwrap();
    let mut bob_phone = bob.connect_ws().await.unwrap();
    let mut bob_laptop = bob.connect_ws().await.unwrap();
    let mut carol_ws = carol.connect_ws().await.unwrap();
    // Registered for pushes before the send, or the pushes below may be missed.
    for ws in [
        &mut alice_laptop,
        &mut bob_phone,
        &mut bob_laptop,
        &mut carol_ws,
    ] {
        wait_ready(ws).await;
    }

    alice_phone
        .send(&send("m1", conv, "hello bob"))
        .await
        .unwrap();
    let ts = match next_frame(&mut alice_phone).await {
        ServerFrame::Sent {
            id,
            conv: c,
            seq,
            ts,
        } => {
            assert_eq!((id.as_str(), c, seq), ("m1", conv, 1));
            ts
        }
        other => panic!("expected sent, got {other:?}"),
    };
    let expected = ServerFrame::Message {
        conv,
        seq: 1,
        sender: "alice".into(),
        body: "hello bob".into(),
        id: "m1".into(),
        ts,
        event: None,
        edited: false,
        deleted: false,
    };
    for ws in [&mut alice_laptop, &mut bob_phone, &mut bob_laptop] {
        assert_eq!(next_frame(ws).await, expected);
    }
    // Not echoed to the sending connection; nothing for non-members.
    assert_quiet(&mut alice_phone).await;
    assert_quiet(&mut carol_ws).await;

    // Stored as pushed.
    let page = bob.history(conv, None, None).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(
        (page.messages[0].ts, page.messages[0].body.as_str()),
        (ts, "hello bob")
    );
}

#[tokio::test]
async fn resending_an_id_answers_the_same_seq_and_stores_nothing() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut ws = alice.connect_ws().await.unwrap();
    let mut bob_ws = bob.connect_ws().await.unwrap();
    wait_ready(&mut bob_ws).await;

    ws.send(&send("same-id", conv, "once")).await.unwrap();
    let first = next_frame(&mut ws).await;
    ws.send(&send("other", conv, "twice")).await.unwrap();
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Sent { seq: 2, .. }
    ));
    // Again on the same connection, and from another connection of the same user.
    ws.send(&send("same-id", conv, "once")).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, first);
    let mut again = alice.connect_ws().await.unwrap();
    again
        .send(&send("same-id", conv, "different body, same id"))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut again).await, first);

    // Bob saw each message once.
    assert!(matches!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Message { seq: 1, .. }
    ));
    assert!(matches!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Message { seq: 2, .. }
    ));
    assert_quiet(&mut bob_ws).await;
    let page = alice.history(conv, None, None).await.unwrap();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.body.as_str())
            .collect::<Vec<_>>(),
        vec!["once", "twice"]
    );

    // Another sender may use the same id: ids are per sender.
    let mut bob_send = bob.connect_ws().await.unwrap();
    bob_send
        .send(&send("same-id", conv, "bob's"))
        .await
        .unwrap();
    assert!(matches!(
        next_frame(&mut bob_send).await,
        ServerFrame::Sent { seq: 3, .. }
    ));
}

#[tokio::test]
async fn pipelined_sends_are_sequenced_in_send_order() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let (group, _) = alice.create_conversation(["bob"], Some("g")).await.unwrap();
    let mut ws = alice.connect_ws().await.unwrap();
    let n = 300;
    for i in 0..n {
        let target = if i % 3 == 0 { group.conv_id } else { conv };
        ws.send(&send(&format!("p{i}"), target, &format!("{i}")))
            .await
            .unwrap();
    }
    let mut acks = HashMap::new();
    while acks.len() < n {
        match next_frame(&mut ws).await {
            ServerFrame::Sent { id, conv, seq, .. } => {
                acks.insert(id, (conv, seq));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Within each conversation, send order is seq order, gapless from 1.
    let mut next: HashMap<u64, u64> = HashMap::new();
    for i in 0..n {
        let (c, seq) = acks[&format!("p{i}")];
        let expected = next.entry(c).or_insert(1);
        assert_eq!(seq, *expected, "send p{i}");
        *expected += 1;
    }
    let history = bob.history(conv, None, Some(200)).await.unwrap();
    assert!(
        history
            .messages
            .iter()
            .all(|m| m.body.parse::<usize>().unwrap() % 3 != 0)
    );
    assert!(
        history
            .messages
            .windows(2)
            .all(|w| w[0].body.parse::<usize>().unwrap() < w[1].body.parse::<usize>().unwrap())
    );
}

#[tokio::test]
async fn concurrent_senders_are_pushed_in_seq_order() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    let (group, _) = alice
        .create_conversation(["bob", "carol", "dave"], None)
        .await
        .unwrap();
    let conv = group.conv_id;
    let mut watcher = dave.connect_ws().await.unwrap();
    // Registered before the first send, or it may miss the first pushes.
    wait_ready(&mut watcher).await;
    let per_sender = 60;
    let mut tasks = Vec::new();
    for (name, client) in [("a", alice), ("b", bob), ("c", carol)] {
        tasks.push(tokio::spawn(async move {
            let mut ws = client.connect_ws().await.unwrap();
            for i in 0..per_sender {
                ws.send(&send(&format!("{name}{i}"), conv, "x"))
                    .await
                    .unwrap();
            }
            let mut acked = 0;
            while acked < per_sender {
                if let ServerFrame::Sent { .. } = next_frame(&mut ws).await {
                    acked += 1;
                }
            }
        }));
    }
    let mut seen = Vec::new();
    while seen.len() < 3 * per_sender {
        match next_frame(&mut watcher).await {
            ServerFrame::Message { seq, .. } => seen.push(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, (1..=(3 * per_sender) as u64).collect::<Vec<_>>());
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn sync_replays_everything_after_a_seq() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut ws = alice.connect_ws().await.unwrap();
    for i in 0..250 {
        ws.send(&send(&format!("s{i}"), conv, &format!("body {i}")))
            .await
            .unwrap();
    }
    for _ in 0..250 {
        assert!(matches!(
            next_frame(&mut ws).await,
            ServerFrame::Sent { .. }
        ));
    }
    let mut bob_ws = bob.connect_ws().await.unwrap();
    // Crosses a page boundary (200) of the server's sync.
    bob_ws
        .send(&ClientFrame::Sync { conv, after: 7 })
        .await
        .unwrap();
    for seq in 8..=250u64 {
        match next_frame(&mut bob_ws).await {
            ServerFrame::Message {
                seq: got,
                sender,
                body,
                id,
                ..
            } => {
                assert_eq!(got, seq);
                assert_eq!(sender, "alice");
                assert_eq!(body, format!("body {}", seq - 1));
                assert_eq!(id, format!("s{}", seq - 1));
            }
            other => panic!("expected message {seq}, got {other:?}"),
        }
    }
    assert_eq!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Synced { conv, seq: 250 }
    );
    // Caught up: nothing to send, just the marker.
    bob_ws
        .send(&ClientFrame::Sync { conv, after: 250 })
        .await
        .unwrap();
    assert_eq!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Synced { conv, seq: 250 }
    );
    // Non-members and unknown conversations.
    let mut carol_ws = carol.connect_ws().await.unwrap();
    carol_ws
        .send(&ClientFrame::Sync { conv, after: 0 })
        .await
        .unwrap();
    expect_error(&mut carol_ws, ErrorCode::UnknownConversation, None).await;
    carol_ws
        .send(&ClientFrame::Sync {
            conv: 424242,
            after: 0,
        })
        .await
        .unwrap();
    expect_error(&mut carol_ws, ErrorCode::UnknownConversation, None).await;
    assert_open(&mut carol_ws).await;
}

#[tokio::test]
async fn pings_are_answered() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let mut ws = alice.connect_ws().await.unwrap();
    ws.send(&ClientFrame::Ping).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, ServerFrame::Pong);
    ws.send_ping(b"are you there".to_vec()).await.unwrap();
    match ws.recv_timeout(WAIT).await.unwrap() {
        WsEvent::Pong(payload) => assert_eq!(payload, b"are you there"),
        other => panic!("expected a websocket pong, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_frames_get_errors_and_keep_the_connection() {
    let server = TestServer::start().await;
    let [alice, _bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut ws = carol.connect_ws().await.unwrap();

    let long_id = "i".repeat(65);
    let cases: Vec<(String, ErrorCode, Option<&str>)> = vec![
        ("not json".into(), ErrorCode::BadFrame, None),
        ("[]".into(), ErrorCode::BadFrame, None),
        (
            r#"{"type":"shout","id":"x1"}"#.into(),
            ErrorCode::BadFrame,
            Some("x1"),
        ),
        (r#"{"id":"x2"}"#.into(), ErrorCode::BadFrame, Some("x2")),
        (
            r#"{"type":"send","id":"x3","conv":1}"#.into(),
            ErrorCode::BadFrame,
            Some("x3"),
        ),
        (
            r#"{"type":"send","id":"x4","body":"hi"}"#.into(),
            ErrorCode::BadFrame,
            Some("x4"),
        ),
        (
            r#"{"type":"send","id":"bad id!","conv":1,"body":"hi"}"#.into(),
            ErrorCode::BadFrame,
            Some("bad id!"),
        ),
        (
            format!(r#"{{"type":"send","id":"{long_id}","conv":1,"body":"hi"}}"#),
            ErrorCode::BadFrame,
            Some(&long_id),
        ),
        (
            r#"{"type":"send","id":"x5","conv":1,"body":""}"#.into(),
            ErrorCode::BadFrame,
            Some("x5"),
        ),
        (
            r#"{"type":"read","conv":"one","seq":1}"#.into(),
            ErrorCode::BadFrame,
            None,
        ),
        (
            r#"{"type":"sync","conv":1}"#.into(),
            ErrorCode::BadFrame,
            None,
        ),
        (
            format!(
                r#"{{"type":"send","id":"big","conv":{conv},"body":"{}"}}"#,
                "b".repeat(4097)
            ),
            ErrorCode::BodyTooLarge,
            Some("big"),
        ),
        (
            format!(r#"{{"type":"send","id":"nm","conv":{conv},"body":"let me in"}}"#),
            ErrorCode::UnknownConversation,
            Some("nm"),
        ),
        (
            r#"{"type":"send","id":"nc","conv":987654,"body":"hello?"}"#.into(),
            ErrorCode::UnknownConversation,
            Some("nc"),
        ),
        (
            format!(r#"{{"type":"read","conv":{conv},"seq":1}}"#),
            ErrorCode::UnknownConversation,
            None,
        ),
    ];
    for (text, code, id) in cases {
        ws.send_text(text.clone()).await.unwrap();
        match next_frame(&mut ws).await {
            ServerFrame::Error {
                code: got,
                id: got_id,
                ..
            } => {
                assert_eq!(got, code, "frame {text}");
                assert_eq!(got_id.as_deref(), id, "frame {text}");
            }
            other => panic!("frame {text}: expected an error, got {other:?}"),
        }
    }
    ws.send_binary(vec![1, 2, 3]).await.unwrap();
    expect_error(&mut ws, ErrorCode::BadFrame, None).await;
    assert_open(&mut ws).await;
    // Nothing was stored by any of it.
    assert!(
        alice
            .history(conv, None, None)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // A body of exactly 4096 bytes is fine.
    let mut alice_ws = alice.connect_ws().await.unwrap();
    alice_ws
        .send(&send("max", conv, &"b".repeat(4096)))
        .await
        .unwrap();
    assert!(matches!(
        next_frame(&mut alice_ws).await,
        ServerFrame::Sent { seq: 1, .. }
    ));
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_with_1009() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let mut ws = alice.connect_ws().await.unwrap();
    ws.send_text("x".repeat(64 * 1024 + 1)).await.unwrap();
    loop {
        match ws.recv_timeout(WAIT).await {
            Ok(WsEvent::Closed { code, .. }) => {
                assert_eq!(code, Some(1009));
                break;
            }
            Ok(WsEvent::Pong(_)) => continue,
            Ok(other) => panic!("expected close 1009, got {other:?}"),
            Err(ClientError::Closed { code, .. }) => {
                assert_eq!(code, Some(1009));
                break;
            }
            Err(err) => panic!("expected close 1009, got {err}"),
        }
    }
    // The server is fine afterwards.
    let mut ws = alice.connect_ws().await.unwrap();
    assert_open(&mut ws).await;
}

/// Group membership, end to end: conversation frames on creation and on every change,
/// changes as events in the `seq` stream, owners-only changes, and a removed member who
/// keeps the history up to their removal and receives nothing after it.
#[tokio::test]
async fn membership_changes_are_events_and_pushed_to_whom_they_concern() {
    use chat_client::{ConvEvent, Role};
    let server = TestServer::start().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    let mut bob_ws = bob.connect_ws().await.unwrap();
    let mut carol_ws = carol.connect_ws().await.unwrap();
    let mut dave_ws = dave.connect_ws().await.unwrap();
    for ws in [&mut bob_ws, &mut carol_ws, &mut dave_ws] {
        wait_ready(ws).await;
    }

    // A new group reaches its members' devices at once, with its members and owners.
    let (group, created) = alice
        .create_conversation(["bob"], Some("team"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(group.owners, ["alice"]);
    let conv = group.conv_id;
    match next_frame(&mut bob_ws).await {
        ServerFrame::Conversation { conversation } => assert_eq!(conversation, group),
        other => panic!("expected the new conversation, got {other:?}"),
    }
    assert_quiet(&mut carol_ws).await;

    // Only owners add members: a member is refused with 403, and nothing changes.
    let refused = bob.set_member(conv, "carol", None).await.unwrap_err();
    assert_eq!(
        (refused.status(), refused.code()),
        (Some(403), Some(ErrorCode::Forbidden))
    );
    let refused = dave.set_member(conv, "carol", None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownConversation));
    let refused = alice.set_member(conv, "Nobody", None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
    let refused = alice.set_member(conv, "nobody", None).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownUser));
    assert_quiet(&mut bob_ws).await;

    // Adding carol is event 1 of the conversation: pushed to bob and carol as a message
    // with its event, with the conversation as it is now.
    let added = alice.set_member(conv, "carol", None).await.unwrap();
    assert_eq!(added.seq, Some(1));
    assert_eq!(added.conversation.members, ["alice", "bob", "carol"]);
    for ws in [&mut bob_ws, &mut carol_ws] {
        let mut got = [next_frame(ws).await, next_frame(ws).await];
        got.sort_by_key(|f| matches!(f, ServerFrame::Conversation { .. }));
        match &got[0] {
            ServerFrame::Message {
                seq: 1,
                sender,
                event: Some(ConvEvent::MemberAdded { user, role }),
                ..
            } => assert_eq!(
                (sender.as_str(), user.as_str(), *role),
                ("alice", "carol", Role::Member)
            ),
            other => panic!("expected the addition, got {other:?}"),
        }
        assert!(
            matches!(&got[1], ServerFrame::Conversation { conversation } if conversation.members.len() == 3)
        );
    }
    // The same addition again changes nothing and says so.
    assert_eq!(
        alice.set_member(conv, "carol", None).await.unwrap().seq,
        None
    );

    // Bob is removed: he hears of it, reads up to it, and receives nothing after it.
    let removed = alice.remove_member(conv, "bob").await.unwrap();
    assert_eq!(removed.seq, Some(2));
    let mut got = [next_frame(&mut bob_ws).await, next_frame(&mut bob_ws).await];
    got.sort_by_key(|f| matches!(f, ServerFrame::Conversation { .. }));
    assert!(matches!(
        &got[0],
        ServerFrame::Message { seq: 2, event: Some(ConvEvent::MemberRemoved { user }), .. } if user == "bob"
    ));
    let _ = (
        next_frame(&mut carol_ws).await,
        next_frame(&mut carol_ws).await,
    );
    let mut alice_ws = alice.connect_ws().await.unwrap();
    wait_ready(&mut alice_ws).await;
    alice_ws.send(&send("a1", conv, "after bob")).await.unwrap();
    assert!(matches!(
        next_frame(&mut alice_ws).await,
        ServerFrame::Sent { seq: 3, .. }
    ));
    assert!(matches!(
        next_frame(&mut carol_ws).await,
        ServerFrame::Message { seq: 3, .. }
    ));
    assert_quiet(&mut bob_ws).await;
    let page = bob.history(conv, None, None).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2]
    );
    bob_ws
        .send(&ClientFrame::Sync { conv, after: 0 })
        .await
        .unwrap();
    let synced: Vec<ServerFrame> = vec![
        next_frame(&mut bob_ws).await,
        next_frame(&mut bob_ws).await,
        next_frame(&mut bob_ws).await,
    ];
    assert_eq!(synced[2], ServerFrame::Synced { conv, seq: 2 });
    bob_ws.send(&send("b1", conv, "let me in")).await.unwrap();
    expect_error(&mut bob_ws, ErrorCode::UnknownConversation, Some("b1")).await;
    let seen = bob.conversation(conv).await.unwrap();
    assert_eq!(seen.members, ["alice", "carol"]);

    // The last owner may not leave others behind; carol leaves on her own.
    let refused = alice.remove_member(conv, "alice").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
    let left = carol.remove_member(conv, "carol").await.unwrap();
    assert_eq!(left.seq, Some(4));

    // Titles: owners only, events too; a direct conversation never changes.
    let titled = alice.set_title(conv, Some("renamed")).await.unwrap();
    assert_eq!(titled.conversation.title.as_deref(), Some("renamed"));
    let direct = direct(&alice, "dave").await;
    let refused = alice
        .set_member(direct.conv_id, "bob", None)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
}

/// Read receipts: a read that moves a cursor reaches the other members and the reader's
/// other devices as one coalesced `receipt`; `GET .../reads` shows the cursors; a user who
/// turns receipts off is shown to nobody else, and still syncs across their own devices.
#[tokio::test]
async fn reads_become_coalesced_receipts_unless_turned_off() {
    use chat_client::SettingsUpdate;
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let (group, _) = alice
        .create_conversation(["bob"], Some("reads"))
        .await
        .unwrap();
    let conv = group.conv_id;
    let mut alice_ws = alice.connect_ws().await.unwrap();
    let mut bob_phone = bob.connect_ws().await.unwrap();
    let mut bob_laptop = bob.connect_ws().await.unwrap();
    let mut carol_ws = carol.connect_ws().await.unwrap();
    for ws in [
        &mut alice_ws,
        &mut bob_phone,
        &mut bob_laptop,
        &mut carol_ws,
    ] {
        wait_ready(ws).await;
    }
    for (i, id) in ["m1", "m2", "m3"].into_iter().enumerate() {
        alice_ws.send(&send(id, conv, "hi")).await.unwrap();
        assert!(
            matches!(next_frame(&mut alice_ws).await, ServerFrame::Sent { seq, .. } if seq == i as u64 + 1)
        );
        for ws in [&mut bob_phone, &mut bob_laptop] {
            assert!(matches!(next_frame(ws).await, ServerFrame::Message { .. }));
        }
    }

    // Three reads in a burst are one receipt, of the newest; backwards moves nothing.
    for seq in [1, 2, 3, 1] {
        bob_phone
            .send(&ClientFrame::Read { conv, seq })
            .await
            .unwrap();
    }
    let receipt = ServerFrame::Receipt {
        conv,
        user: "bob".into(),
        seq: 3,
    };
    for ws in [&mut alice_ws, &mut bob_laptop, &mut bob_phone] {
        assert_eq!(next_frame(ws).await, receipt);
        assert_quiet(ws).await;
    }
    assert_quiet(&mut carol_ws).await;
    let reads = alice.reads(conv).await.unwrap().reads;
    let cursors: Vec<(&str, u64)> = reads.iter().map(|r| (r.user.as_str(), r.seq)).collect();
    assert_eq!(cursors, [("alice", 3), ("bob", 3)]);
    let refused = carol.reads(conv).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::UnknownConversation));

    // Bob turns receipts off: alice no longer sees his cursor, his devices still do.
    assert!(bob.settings().await.unwrap().receipts);
    let off = SettingsUpdate {
        receipts: Some(false),
    };
    assert!(!bob.update_settings(&off).await.unwrap().receipts);
    alice_ws.send(&send("m4", conv, "more")).await.unwrap();
    let _ = next_frame(&mut alice_ws).await;
    for ws in [&mut bob_phone, &mut bob_laptop] {
        let _ = next_frame(ws).await;
    }
    bob_laptop
        .send(&ClientFrame::Read { conv, seq: 4 })
        .await
        .unwrap();
    for ws in [&mut bob_phone, &mut bob_laptop] {
        assert!(matches!(
            next_frame(ws).await,
            ServerFrame::Receipt { seq: 4, .. }
        ));
    }
    assert_quiet(&mut alice_ws).await;
    let reads = alice.reads(conv).await.unwrap().reads;
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(
        bob.reads(conv).await.unwrap().reads.len(),
        2,
        "bob sees his own"
    );
    let unknown = bob
        .raw(
            "PATCH",
            "/v1/settings",
            &[],
            br#"{"receipts":true,"shout":1}"#.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, 400);
}

/// Edits and deletes: acked like sends, pushed as events, shown by history with their marks;
/// only the sender may make them, and a deleted message stays deleted.
#[tokio::test]
async fn senders_edit_and_delete_their_own_messages() {
    use chat_client::ConvEvent;
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut alice_ws = alice.connect_ws().await.unwrap();
    let mut bob_ws = bob.connect_ws().await.unwrap();
    wait_ready(&mut bob_ws).await;
    alice_ws.send(&send("m1", conv, "helo")).await.unwrap();
    assert!(matches!(
        next_frame(&mut alice_ws).await,
        ServerFrame::Sent { seq: 1, .. }
    ));
    let _ = next_frame(&mut bob_ws).await;

    let edit = ClientFrame::Edit {
        id: "e1".into(),
        conv,
        seq: 1,
        body: "hello".into(),
    };
    alice_ws.send(&edit).await.unwrap();
    assert!(matches!(
        next_frame(&mut alice_ws).await,
        ServerFrame::Sent { seq: 2, .. }
    ));
    match next_frame(&mut bob_ws).await {
        ServerFrame::Message {
            seq: 2,
            body,
            event: Some(ConvEvent::Edited { seq: 1 }),
            ..
        } => assert_eq!(body, "hello"),
        other => panic!("expected the edit, got {other:?}"),
    }
    // Only the sender edits; nothing, an event or a deleted message cannot be edited.
    let theirs = ClientFrame::Edit {
        id: "b1".into(),
        conv,
        seq: 1,
        body: "mine".into(),
    };
    bob_ws.send(&theirs).await.unwrap();
    expect_error(&mut bob_ws, ErrorCode::Forbidden, Some("b1")).await;
    let nothing = ClientFrame::Delete {
        id: "d0".into(),
        conv,
        seq: 9,
    };
    alice_ws.send(&nothing).await.unwrap();
    expect_error(&mut alice_ws, ErrorCode::NotFound, Some("d0")).await;
    let empty = r#"{"type":"edit","id":"e2","conv":1,"seq":1,"body":""}"#;
    alice_ws.send_text(empty.into()).await.unwrap();
    expect_error(&mut alice_ws, ErrorCode::BadFrame, Some("e2")).await;

    let delete = ClientFrame::Delete {
        id: "d1".into(),
        conv,
        seq: 1,
    };
    alice_ws.send(&delete).await.unwrap();
    assert!(matches!(
        next_frame(&mut alice_ws).await,
        ServerFrame::Sent { seq: 3, .. }
    ));
    assert!(matches!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Message {
            seq: 3,
            event: Some(ConvEvent::Deleted { seq: 1 }),
            ..
        }
    ));
    let page = bob.history(conv, None, None).await.unwrap();
    let shown: Vec<(u64, &str, bool)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.body.as_str(), m.deleted))
        .collect();
    assert_eq!(shown, [(1, "", true), (2, "", false), (3, "", false)]);
    alice_ws.send(&edit_again(conv)).await.unwrap();
    expect_error(&mut alice_ws, ErrorCode::NotFound, Some("e3")).await;
}

fn edit_again(conv: u64) -> ClientFrame {
    ClientFrame::Edit {
        id: "e3".into(),
        conv,
        seq: 1,
        body: "back".into(),
    }
}

/// Typing: passed on to the other members online, at most once per interval, never to the
/// typer's own devices or to non-members; a non-member's typing is refused.
#[tokio::test]
async fn typing_reaches_the_other_members_throttled() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut alice_phone = alice.connect_ws().await.unwrap();
    let mut alice_laptop = alice.connect_ws().await.unwrap();
    let mut bob_ws = bob.connect_ws().await.unwrap();
    let mut carol_ws = carol.connect_ws().await.unwrap();
    for ws in [&mut alice_laptop, &mut bob_ws, &mut carol_ws] {
        wait_ready(ws).await;
    }
    for _ in 0..3 {
        alice_phone
            .send(&ClientFrame::Typing { conv })
            .await
            .unwrap();
    }
    assert_eq!(
        next_frame(&mut bob_ws).await,
        ServerFrame::Typing {
            conv,
            user: "alice".into(),
            expires_in_ms: chat_proto::limits::TYPING_SHOWN_MS,
        }
    );
    assert_quiet(&mut bob_ws).await;
    assert_quiet(&mut alice_laptop).await;
    assert_quiet(&mut carol_ws).await;
    carol_ws.send(&ClientFrame::Typing { conv }).await.unwrap();
    match next_frame(&mut carol_ws).await {
        ServerFrame::Error { code, op, .. } => {
            assert_eq!(code, ErrorCode::UnknownConversation);
            assert_eq!(op, Some(chat_proto::frame::FrameOp::Typing));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_quiet(&mut bob_ws).await;
}
