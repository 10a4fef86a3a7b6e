//! The v1 REST contract, over real sockets on 127.0.0.1:0.

mod common;

use chat_client::{ClientError, ErrorCode};
use common::*;
use serde_json::{Value, json};

fn code_of(err: ClientError) -> (u16, ErrorCode) {
    (
        err.status().expect("an HTTP status"),
        err.code().expect("a protocol error body"),
    )
}

async fn post(client: &chat_client::Client, path: &str, body: Value) -> chat_client::RawResponse {
    client
        .raw("POST", path, &[], serde_json::to_vec(&body).unwrap())
        .await
        .expect("request")
}

#[tokio::test]
async fn register_creates_users_once_and_validates_input() {
    let server = TestServer::start().await;
    let anon = server.anonymous();

    let created = post(
        &anon,
        "/v1/users",
        json!({"username":"alice","password":PASSWORD}),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(
        created.json::<Value>().unwrap(),
        json!({"username":"alice"})
    );

    let again = anon
        .register("alice", "another password")
        .await
        .unwrap_err();
    assert_eq!(code_of(again), (409, ErrorCode::UsernameTaken));

    for bad in ["al", "Alice", "al ice", "alicé", &"a".repeat(33), ""] {
        let err = anon.register(bad, PASSWORD).await.unwrap_err();
        assert_eq!(
            code_of(err),
            (400, ErrorCode::BadRequest),
            "username {bad:?}"
        );
    }
    assert!(anon.register(&"a".repeat(32), PASSWORD).await.is_ok());
    for bad in ["1234567".to_owned(), "p".repeat(129)] {
        let err = anon.register("bob", &bad).await.unwrap_err();
        assert_eq!(
            code_of(err),
            (400, ErrorCode::BadRequest),
            "password of {} bytes",
            bad.len()
        );
    }
    assert!(anon.register("bob", &"p".repeat(128)).await.is_ok());
    assert!(anon.register("carol", "12345678").await.is_ok());

    // Missing, malformed and incomplete bodies.
    for body in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"username\":\"dave\"}",
        b"{\"username\":5,\"password\":\"12345678\"}",
    ] {
        let response = anon
            .raw("POST", "/v1/users", &[], body.to_vec())
            .await
            .unwrap();
        assert_eq!(
            response.status,
            400,
            "body {:?}",
            String::from_utf8_lossy(body)
        );
        let err: Value = response.json().unwrap();
        assert_eq!(err["error"]["code"], "bad_request");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Oversized bodies are refused before they are parsed.
    let huge = format!(
        "{{\"username\":\"erin\",\"password\":\"{}\"}}",
        "x".repeat(100_000)
    );
    let response = anon
        .raw("POST", "/v1/users", &[], huge.into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json::<Value>().unwrap()["error"]["code"],
        "payload_too_large"
    );
}

#[tokio::test]
async fn login_issues_tokens_and_refuses_bad_credentials() {
    let server = TestServer::start().await;
    let anon = server.anonymous();
    anon.register("alice", PASSWORD).await.unwrap();

    let response = post(
        &anon,
        "/v1/sessions",
        json!({"username":"alice","password":PASSWORD}),
    )
    .await;
    assert_eq!(response.status, 200);
    let session: Value = response.json().unwrap();
    assert_eq!(session["username"], "alice");
    let token = session["token"].as_str().expect("token");
    assert_eq!(server.tokens.verify(token).unwrap(), "alice");
    let now_secs = chat_proto::model::now_ms() / 1000;
    let expires_at = session["expires_at"].as_u64().expect("expires_at");
    assert!(expires_at > now_secs && expires_at <= now_secs + 24 * 3600 + 5);

    for (user, password) in [
        ("alice", "wrong password"),
        ("nobody", PASSWORD),
        ("NOT VALID", PASSWORD),
    ] {
        let err = anon.login(user, password).await.unwrap_err();
        assert_eq!(
            code_of(err),
            (401, ErrorCode::InvalidCredentials),
            "{user}/{password}"
        );
    }
    let response = anon
        .raw("POST", "/v1/sessions", &[], b"not json".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn every_authenticated_route_refuses_missing_forged_and_expired_tokens() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let anon = server.anonymous();
    let forged = chat_auth::Tokens::new(
        b"some-other-secret-0123456789abcdef",
        chat_auth::Tokens::TTL_DEFAULT,
    )
    .issue("alice")
    .unwrap()
    .token;
    let now = chat_proto::model::now_ms() / 1000;
    let expired = server
        .tokens
        .issue_with_expiry("alice", now - 7200, now - 1)
        .unwrap()
        .token;
    let bearer = |t: &str| format!("Bearer {t}");
    let bad_headers = [
        None,
        Some(bearer(&forged)),
        Some(bearer(&expired)),
        Some("Bearer not-a-token".to_owned()),
        Some(format!("Basic {}", alice.token().unwrap())),
    ];
    let routes = [
        ("GET", "/v1/inbox", Vec::new()),
        ("GET", "/v1/conversations/1/messages", Vec::new()),
        (
            "POST",
            "/v1/conversations",
            br#"{"members":["alice"]}"#.to_vec(),
        ),
        ("GET", "/v1/conversations/1", Vec::new()),
        ("PATCH", "/v1/conversations/1", br#"{"title":"t"}"#.to_vec()),
        ("PUT", "/v1/conversations/1/members/bob", b"{}".to_vec()),
        ("DELETE", "/v1/conversations/1/members/bob", Vec::new()),
        ("GET", "/v1/conversations/1/reads", Vec::new()),
        ("GET", "/v1/settings", Vec::new()),
        ("PATCH", "/v1/settings", br#"{"receipts":false}"#.to_vec()),
    ];
    for (method, path, body) in &routes {
        for header in &bad_headers {
            let headers: Vec<(&str, &str)> = header
                .iter()
                .map(|h| ("authorization", h.as_str()))
                .collect();
            let response = anon
                .raw(method, path, &headers, body.clone())
                .await
                .unwrap();
            assert_eq!(response.status, 401, "{method} {path} with {header:?}");
            assert_eq!(
                response.json::<Value>().unwrap()["error"]["code"],
                "unauthorized"
            );
        }
    }
    // The real token works on the same routes.
    assert_eq!(
        alice
            .raw("GET", "/v1/inbox", &[], Vec::new())
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn conversations_direct_is_unique_per_pair_and_groups_are_new() {
    let server = TestServer::start().await;
    let [alice, bob, _carol] = server.users(["alice", "bob", "carol"]).await;

    let response = post(&alice, "/v1/conversations", json!({"members":["bob"]})).await;
    assert_eq!(response.status, 201);
    let direct: Value = response.json().unwrap();
    assert_eq!(direct["kind"], "direct");
    assert_eq!(direct["members"], json!(["alice", "bob"]));
    assert_eq!(direct["title"], Value::Null);
    let conv_id = direct["conv_id"].as_u64().expect("conv_id");

    // Again, from either side, even naming oneself: the same conversation, 200.
    for (client, members) in [
        (&alice, json!(["bob"])),
        (&bob, json!(["alice"])),
        (&bob, json!(["alice", "bob"])),
    ] {
        let response = post(client, "/v1/conversations", json!({"members": members})).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.json::<Value>().unwrap()["conv_id"].as_u64(),
            Some(conv_id)
        );
    }

    // Two others, or a title, make a new group every time.
    let (g1, created) = alice
        .create_conversation(["bob", "carol"], None)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(g1.kind, chat_proto::ConvKind::Group);
    assert_eq!(g1.members, vec!["alice", "bob", "carol"]);
    let (g2, created) = alice
        .create_conversation(["bob", "carol"], None)
        .await
        .unwrap();
    assert!(created);
    assert_ne!(g1.conv_id, g2.conv_id);
    let (titled, created) = alice
        .create_conversation(["bob"], Some("plans"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(titled.kind, chat_proto::ConvKind::Group);
    assert_eq!(titled.title.as_deref(), Some("plans"));
    assert_ne!(titled.conv_id, conv_id);

    // Unknown members, nobody else, too many members, bad names, bad titles.
    let err = alice
        .create_conversation(["bob", "zed"], None)
        .await
        .unwrap_err();
    assert_eq!(code_of(err), (404, ErrorCode::UnknownUser));
    for members in [vec![], vec!["alice".to_owned()]] {
        let err = alice.create_conversation(members, None).await.unwrap_err();
        assert_eq!(code_of(err), (400, ErrorCode::BadRequest));
    }
    let crowd: Vec<String> = (0..256).map(|i| format!("user{i}")).collect();
    let err = alice.create_conversation(&crowd, None).await.unwrap_err();
    assert_eq!(
        code_of(err),
        (400, ErrorCode::BadRequest),
        "257 members with the caller"
    );
    let err = alice
        .create_conversation(["Not Valid"], None)
        .await
        .unwrap_err();
    assert_eq!(code_of(err), (400, ErrorCode::BadRequest));
    let err = alice
        .create_conversation(["bob"], Some(&"t".repeat(257)))
        .await
        .unwrap_err();
    assert_eq!(code_of(err), (400, ErrorCode::BadRequest));
    let response = post(&alice, "/v1/conversations", json!({"members":"bob"})).await;
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn group_of_256_members_is_allowed() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let anon = server.anonymous();
    let others: Vec<String> = (0..255).map(|i| format!("member{i}")).collect();
    for name in &others {
        // 255 registrations from one address pass its registration limit's burst: wait as
        // asked, as a client should.
        loop {
            match anon.register(name, PASSWORD).await {
                Ok(_) => break,
                Err(err) if err.code() == Some(ErrorCode::RateLimited) => {
                    let wait = err
                        .retry_after()
                        .expect("rate_limited says how long to wait");
                    tokio::time::sleep(wait).await;
                }
                Err(err) => panic!("register {name}: {err}"),
            }
        }
    }
    let (group, created) = alice
        .create_conversation(&others, Some("everyone"))
        .await
        .unwrap();
    assert!(created);
    assert_eq!(group.members.len(), 256);
}

/// Sends `n` messages from `client` to `conv` over a WebSocket and returns their seqs in
/// send order. (Acks may arrive in any order; seqs follow send order.)
async fn send_n(client: &chat_client::Client, conv: u64, n: usize, prefix: &str) -> Vec<u64> {
    let mut ws = client.connect_ws().await.unwrap();
    for i in 0..n {
        let frame = chat_client::ClientFrame::Send {
            id: format!("{prefix}{i}"),
            conv,
            body: format!("message {i}"),
        };
        ws.send(&frame).await.unwrap();
    }
    let mut acks = std::collections::HashMap::new();
    while acks.len() < n {
        match next_frame(&mut ws).await {
            chat_client::ServerFrame::Sent { id, seq, .. } => {
                acks.insert(id, seq);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (0..n).map(|i| acks[&format!("{prefix}{i}")]).collect()
}

#[tokio::test]
async fn history_pages_backwards_in_ascending_order() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = direct(&alice, "bob").await.conv_id;

    let empty = alice.history(conv, None, None).await.unwrap();
    assert!(empty.messages.is_empty());
    assert_eq!(empty.next_before, None);

    let seqs = send_n(&alice, conv, 120, "h").await;
    assert_eq!(seqs, (1..=120).collect::<Vec<_>>());

    // Default limit 50: the newest 50, ascending, with a cursor.
    let page = bob.history(conv, None, None).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (71..=120).collect::<Vec<_>>()
    );
    assert_eq!(page.next_before, Some(71));
    let m = &page.messages[0];
    assert_eq!(
        (
            m.conv_id,
            m.sender.as_str(),
            m.body.as_str(),
            m.client_msg_id.as_str()
        ),
        (conv, "alice", "message 70", "h70")
    );
    assert!(m.ts > 0);

    // Walk back with the cursor until it runs out.
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = bob.history(conv, before, Some(33)).await.unwrap();
        assert!(page.messages.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        all.splice(0..0, page.messages.iter().map(|m| m.seq));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(all, (1..=120).collect::<Vec<_>>());
    let page = bob.history(conv, Some(3), Some(200)).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(page.next_before, None);
    let page = bob.history(conv, Some(1), None).await.unwrap();
    assert!(page.messages.is_empty());

    // Limits.
    for query in ["limit=0", "limit=201", "limit=abc", "before=x", "limit=-1"] {
        let response = alice
            .raw(
                "GET",
                &format!("/v1/conversations/{conv}/messages?{query}"),
                &[],
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{query}");
        assert_eq!(
            response.json::<Value>().unwrap()["error"]["code"],
            "bad_request"
        );
    }
    assert_eq!(
        alice
            .history(conv, None, Some(200))
            .await
            .unwrap()
            .messages
            .len(),
        120
    );

    // A non-member sees exactly what a missing conversation looks like.
    let not_member = carol
        .raw(
            "GET",
            &format!("/v1/conversations/{conv}/messages"),
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let missing = carol
        .raw("GET", "/v1/conversations/999999/messages", &[], Vec::new())
        .await
        .unwrap();
    let not_a_number = carol
        .raw("GET", "/v1/conversations/abc/messages", &[], Vec::new())
        .await
        .unwrap();
    for response in [&not_member, &missing, &not_a_number] {
        assert_eq!(response.status, 404);
        assert_eq!(
            response.json::<Value>().unwrap()["error"]["code"],
            "unknown_conversation"
        );
    }
    assert_eq!(not_member.body, missing.body);
}

/// Waits until the wall clock has moved past the current millisecond. Recency is the
/// server's millisecond timestamp (ties go to the higher conversation id), so activity
/// after this returns is strictly more recent than all activity before the call.
async fn next_millisecond() {
    let now = chat_proto::model::now_ms();
    while chat_proto::model::now_ms() <= now {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn inbox_orders_by_recent_activity_and_counts_unread() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let ab = direct(&alice, "bob").await.conv_id;
    let ac = direct(&alice, "carol").await.conv_id;
    let (group, _) = alice
        .create_conversation(["bob", "carol"], Some("trio"))
        .await
        .unwrap();

    // New conversations are listed before any message, newest first, with no last message.
    let inbox = alice.inbox(None).await.unwrap();
    assert_eq!(
        inbox
            .conversations
            .iter()
            .map(|c| c.conv_id)
            .collect::<Vec<_>>(),
        vec![group.conv_id, ac, ab]
    );
    assert!(
        inbox
            .conversations
            .iter()
            .all(|c| c.last_seq == 0 && c.last_message.is_none() && c.unread == 0)
    );

    // On a fast machine the sends below can land in the millisecond the group was created
    // in; the tie would then put the group (a higher id) first.
    next_millisecond().await;
    send_n(&bob, ab, 3, "b").await;
    let inbox = alice.inbox(None).await.unwrap();
    let first = &inbox.conversations[0];
    assert_eq!(first.conv_id, ab);
    assert_eq!(first.kind, chat_proto::ConvKind::Direct);
    assert_eq!(first.members, vec!["alice", "bob"]);
    assert_eq!((first.last_seq, first.unread), (3, 3));
    let last = first.last_message.as_ref().expect("last message");
    assert_eq!(
        (last.seq, last.sender.as_str(), last.body.as_str()),
        (3, "bob", "message 2")
    );
    // The sender's cursor moved with their sends.
    let bob_inbox = bob.inbox(None).await.unwrap();
    assert_eq!(bob_inbox.conversations[0].conv_id, ab);
    assert_eq!(bob_inbox.conversations[0].unread, 0);

    send_n(&carol, group.conv_id, 2, "c").await;
    let inbox = alice.inbox(None).await.unwrap();
    assert_eq!(
        inbox
            .conversations
            .iter()
            .map(|c| c.conv_id)
            .collect::<Vec<_>>(),
        vec![group.conv_id, ab, ac]
    );
    assert_eq!(inbox.conversations[0].title.as_deref(), Some("trio"));
    assert_eq!(inbox.conversations[0].unread, 2);

    // `read` moves the cursor, never past the newest message and never backwards.
    let mut ws = alice.connect_ws().await.unwrap();
    ws.send(&chat_client::ClientFrame::Read { conv: ab, seq: 2 })
        .await
        .unwrap();
    ws.send(&chat_client::ClientFrame::Read {
        conv: group.conv_id,
        seq: 99,
    })
    .await
    .unwrap();
    ws.send(&chat_client::ClientFrame::Ping).await.unwrap();
    pong_past_receipts(&mut ws).await;
    ws.send(&chat_client::ClientFrame::Read { conv: ab, seq: 1 })
        .await
        .unwrap();
    ws.send(&chat_client::ClientFrame::Ping).await.unwrap();
    pong_past_receipts(&mut ws).await;
    let inbox = alice.inbox(None).await.unwrap();
    let unread = |conv| {
        inbox
            .conversations
            .iter()
            .find(|c| c.conv_id == conv)
            .map(|c| c.unread)
    };
    assert_eq!(unread(ab), Some(1));
    assert_eq!(unread(group.conv_id), Some(0));
    send_n(&bob, group.conv_id, 1, "late").await;
    let inbox = alice.inbox(None).await.unwrap();
    assert_eq!(inbox.conversations[0].conv_id, group.conv_id);
    assert_eq!(inbox.conversations[0].unread, 1);

    // Limits: default 20, 1-100.
    assert_eq!(alice.inbox(Some(2)).await.unwrap().conversations.len(), 2);
    for query in ["limit=0", "limit=101", "limit=x"] {
        let response = alice
            .raw("GET", &format!("/v1/inbox?{query}"), &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{query}");
    }
    for i in 0..22 {
        alice
            .create_conversation(["bob"], Some(&format!("group {i}")))
            .await
            .unwrap();
    }
    assert_eq!(alice.inbox(None).await.unwrap().conversations.len(), 20);
    let all = alice.inbox(Some(100)).await.unwrap();
    assert_eq!(all.conversations.len(), 25);
    assert_eq!(all.next_before, None, "one page holds them all");

    // Paging: each page continues where `next_before` says, and the pages are the whole
    // inbox in order, once each; the last one says there is no next.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = alice.inbox_page(Some(7), before).await.unwrap();
        assert!(page.conversations.len() <= 7);
        paged.extend(page.conversations.iter().map(|c| c.conv_id));
        match page.next_before {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    let whole: Vec<u64> = all.conversations.iter().map(|c| c.conv_id).collect();
    assert_eq!(paged, whole);
    for query in ["before=x", "before=1", "before=1.x", "before=-1.2"] {
        let response = alice
            .raw("GET", &format!("/v1/inbox?{query}"), &[], Vec::new())
            .await
            .unwrap();
        assert_eq!(response.status, 400, "{query}");
    }
}

#[tokio::test]
async fn unknown_routes_answer_json_errors() {
    let server = TestServer::start().await;
    let anon = server.anonymous();
    let response = anon
        .raw("GET", "/v1/nothing", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(
        response.json::<Value>().unwrap()["error"]["code"],
        "not_found"
    );
    let response = anon
        .raw("DELETE", "/v1/users", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(response.status, 405);
    let page = anon.raw("GET", "/", &[], Vec::new()).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html") || page.text().contains("<!doctype"));
    let icon = anon
        .raw("GET", "/favicon.ico", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(icon.status, 200);
    assert_eq!(icon.header("content-type"), Some("image/svg+xml"));
    assert!(icon.text().starts_with("<svg"));
}

/// Waits for the `pong`, past the `receipt`s the reads before it may have caused (they come
/// within the receipt window, and may come first).
async fn pong_past_receipts(ws: &mut chat_client::WsConnection) {
    loop {
        match next_frame(ws).await {
            chat_client::ServerFrame::Pong => return,
            chat_client::ServerFrame::Receipt { .. } => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}
