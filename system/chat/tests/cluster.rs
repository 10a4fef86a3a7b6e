//! Faults of a process cluster: a connection server killed mid-conversation, Redis
//! restarted empty or down, no connection server alive, the app server down, rate limits.
//! Each test starts its own cluster (`common::cluster`) with its own `redis-server`.

mod common;

use chat_client::{ClientError, ErrorCode, LiveEvent, LiveSession, Tracker};
use common::cluster::ClusterOptions;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The connection server the gateway places `user` on while all are healthy.
fn home_of(server: &mut TestServer, user: &str) -> usize {
    let addrs = server.cluster().conn_addrs().to_vec();
    let placement = chat_gateway::placement::Placement::new(
        addrs.clone(),
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let home = placement.candidates(user)[0];
    addrs
        .iter()
        .position(|a| *a == home)
        .expect("a known server")
}

/// Receives until `conv` has every seq up to `last`, reconnecting (and so syncing) whenever
/// the connection drops. Returns the seqs in the order they were handed to the application.
async fn receive_all(live: &mut LiveSession, conv: u64, last: u64, deadline: Instant) -> Vec<u64> {
    let mut seen = Vec::new();
    while seen.last().copied() != Some(last) {
        assert!(Instant::now() < deadline, "only got {seen:?} of 1..={last}");
        match live.next_events().await {
            Ok(events) => {
                for event in events {
                    if let LiveEvent::Message(m) = event
                        && m.conv == conv
                    {
                        seen.push(m.seq);
                    }
                }
            }
            Err(_) => {
                // Through the gateway, onto a live connection server; then sync from the last
                // seen seq.
                while live.reconnect().await.is_err() {
                    assert!(Instant::now() < deadline, "could not reconnect");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_connection_server_reconnect_sync_and_miss_nothing() {
    let mut server = TestServer::start_cluster(ClusterOptions::default()).await;
    let alice_home = home_of(&mut server, "alice");
    // A receiver placed on another server than the sender, so the sender survives the kill.
    let victim_user = (0..)
        .map(|i| format!("bob{i}"))
        .find(|name| home_of(&mut server, name) != alice_home)
        .expect("some user lands elsewhere");
    let victim_home = home_of(&mut server, &victim_user);
    let [alice, bob, carol] = server.users(["alice", &victim_user, "carol"]).await;
    let (group, _) = alice
        .create_conversation([victim_user.as_str(), "carol"], Some("kill test"))
        .await
        .unwrap();
    let conv = group.conv_id;

    let total = 60u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut receivers = Vec::new();
    for client in [bob, carol] {
        // Following `conv` before connecting makes the session sync it on connect. A
        // connection server reads frames only once the connection is registered, so after
        // the `synced` answer every message sent from then on is pushed to it.
        let mut tracker = Tracker::new();
        tracker.follow(conv, 0);
        let mut live = LiveSession::connect_with(client, tracker).await.unwrap();
        loop {
            let events = tokio::time::timeout(WAIT, live.next_events())
                .await
                .expect("the sync on connect is answered")
                .unwrap();
            if events.contains(&LiveEvent::Synced { conv, seq: 0 }) {
                break;
            }
        }
        receivers.push(tokio::spawn(async move {
            receive_all(&mut live, conv, total, deadline).await
        }));
    }

    let mut ws = alice.connect_ws().await.unwrap();
    let mut acks = HashMap::new();
    for i in 0..total {
        if i == total / 3 {
            server.cluster().kill_conn(victim_home);
        }
        ws.send(&chat_client::ClientFrame::Send {
            id: format!("k{i}"),
            conv,
            body: format!("{i}"),
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while acks.len() < total as usize {
        if let chat_client::ServerFrame::Sent { id, seq, .. } = next_frame(&mut ws).await {
            acks.insert(id, seq);
        }
    }
    for receiver in receivers {
        let seen = receiver.await.unwrap();
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "every message once, in order, none missed"
        );
    }
    let history = alice.history(conv, None, Some(200)).await.unwrap();
    assert_eq!(history.messages.len(), total as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_recovers_within_a_heartbeat_after_redis_restarts_empty() {
    let mut server = TestServer::start_cluster(ClusterOptions::default()).await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut bob_ws = bob.connect_ws().await.unwrap();
    let mut alice_ws = alice.connect_ws().await.unwrap();
    // Registered in Redis before the first send, or its push may be missed.
    wait_ready(&mut bob_ws).await;
    let send = |i: u32| chat_client::ClientFrame::Send {
        id: format!("r{i}"),
        conv,
        body: format!("{i}"),
    };
    alice_ws.send(&send(0)).await.unwrap();
    assert!(matches!(
        next_frame(&mut bob_ws).await,
        chat_client::ServerFrame::Message { seq: 1, .. }
    ));
    assert!(
        server.cluster().redis_dbsize() > 0,
        "connections are registered"
    );

    // Redis loses everything. Sends keep working (they need the store, not the registry);
    // connection servers re-register their users within one refresh (500 ms here).
    server.cluster().restart_redis_empty();
    let restarted = Instant::now();
    let mut i = 1;
    let recovered = loop {
        alice_ws.send(&send(i)).await.unwrap();
        i += 1;
        match bob_ws.recv_timeout(Duration::from_millis(100)).await {
            Ok(chat_client::WsEvent::Frame(chat_client::ServerFrame::Message { .. })) => {
                break restarted.elapsed();
            }
            Ok(_) | Err(ClientError::Timeout { .. }) => {}
            Err(err) => panic!("bob's connection broke: {err}"),
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "delivery did not recover"
        );
    };
    eprintln!("live delivery recovered {recovered:?} after the Redis restart");
    assert!(
        recovered < Duration::from_secs(5),
        "recovered after {recovered:?}"
    );
    assert!(server.cluster().redis_dbsize() > 0, "entries are back");

    // Every send was acked, nothing lost: history has all of them.
    let mut acked = 0;
    while acked < i {
        match alice_ws.recv_timeout(WAIT).await.unwrap() {
            chat_client::WsEvent::Frame(chat_client::ServerFrame::Sent { .. }) => acked += 1,
            chat_client::WsEvent::Frame(chat_client::ServerFrame::Error { code, .. }) => {
                panic!("send refused: {code}")
            }
            _ => {}
        }
    }
    assert_eq!(
        alice
            .history(conv, None, Some(200))
            .await
            .unwrap()
            .messages
            .len(),
        i as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_costs_pushes_not_messages() {
    let mut server = TestServer::start_cluster(ClusterOptions::default()).await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    server.cluster().stop_redis();
    // New connections are accepted and sends are acked while the registry is down.
    let mut alice_ws = alice.connect_ws().await.unwrap();
    let mut live = LiveSession::connect(bob.clone()).await.unwrap();
    live.follow(conv, 0);
    for i in 0..5 {
        alice_ws
            .send(&chat_client::ClientFrame::Send {
                id: format!("d{i}"),
                conv,
                body: "while redis is down".into(),
            })
            .await
            .unwrap();
        match next_frame(&mut alice_ws).await {
            chat_client::ServerFrame::Sent { seq, .. } => assert_eq!(seq, i + 1),
            other => panic!("expected sent, got {other:?}"),
        }
    }
    server.cluster().start_redis();
    // Back: bob's next push arrives live, and the gap before it is synced. That takes bob's
    // connection server re-registering him (its next refresh, after its reconnect backoff)
    // and the app server reconnecting (after its own backoff): on a loaded machine longer
    // than any fixed wait, and a push lost meanwhile would leave bob waiting for nothing.
    // So send until one arrives. Bob's session follows `conv` from 0 and has not synced, so
    // the first messages he sees came with a live push.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 5;
    let mut seen = Vec::new();
    while seen.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no push arrived after Redis came back"
        );
        last += 1;
        alice_ws
            .send(&chat_client::ClientFrame::Send {
                id: format!("after{last}"),
                conv,
                body: "redis is back".into(),
            })
            .await
            .unwrap();
        match next_frame(&mut alice_ws).await {
            chat_client::ServerFrame::Sent { seq, .. } => assert_eq!(seq, last),
            other => panic!("expected sent, got {other:?}"),
        }
        // `next_events` is cancel-safe: a timeout loses nothing.
        if let Ok(events) =
            tokio::time::timeout(Duration::from_millis(200), live.next_events()).await
        {
            for event in events.expect("bob's connection stays up") {
                if let LiveEvent::Message(m) = event
                    && m.conv == conv
                {
                    seen.push(m.seq);
                }
            }
        }
    }
    if seen.last() != Some(&last) {
        seen.extend(receive_all(&mut live, conv, last, deadline).await);
    }
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_answers_503_without_a_live_connection_server() {
    let mut server = TestServer::start_cluster(ClusterOptions {
        conns: 2,
        ..ClusterOptions::default()
    })
    .await;
    let alice = server.user("alice").await;
    server.cluster().kill_conn(0);
    server.cluster().kill_conn(1);
    let err = alice
        .connect_ws()
        .await
        .err()
        .expect("no connection server");
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    // REST does not need them.
    assert!(alice.inbox(None).await.is_ok());
    // One comes back: WebSockets work again.
    server.cluster().restart_conn(1);
    // Only a guard against hanging: generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match alice.connect_ws().await {
            Ok(mut ws) => {
                ws.send(&chat_client::ClientFrame::Ping).await.unwrap();
                assert_eq!(next_frame(&mut ws).await, chat_client::ServerFrame::Pong);
                break;
            }
            Err(err) => assert!(Instant::now() < deadline, "still failing: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_503_while_the_app_server_is_down() {
    let mut server = TestServer::start_cluster(ClusterOptions::default()).await;
    let alice = server.user("alice").await;
    let mut ws = alice.connect_ws().await.unwrap();
    server.cluster().kill_app();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = alice.inbox(None).await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
    let err = server
        .anonymous()
        .register("bob", PASSWORD)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503));
    // A send gets a retryable error frame, and the connection stays up.
    ws.send(&chat_client::ClientFrame::Send {
        id: "x".into(),
        conv: 1,
        body: "anyone?".into(),
    })
    .await
    .unwrap();
    match next_frame(&mut ws).await {
        chat_client::ServerFrame::Error { code, id, .. } => {
            assert!(code.is_retryable(), "{code}");
            assert_eq!(id.as_deref(), Some("x"));
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
    ws.send(&chat_client::ClientFrame::Ping).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, chat_client::ServerFrame::Pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_rate_limits_answer_429_with_retry_after() {
    let options = ClusterOptions {
        gateway_args: [
            "--rate-user-per-sec",
            "1",
            "--rate-user-burst",
            "3",
            "--rate-ip-per-sec",
            "1",
            "--rate-ip-burst",
            "8",
        ]
        .map(String::from)
        .to_vec(),
        ..ClusterOptions::default()
    };
    let server = TestServer::start_cluster(options).await;
    // Per IP: registration and log-in count (two calls so far: register, login).
    let alice = server.user("alice").await;
    // Per user: the burst of 3 passes, then 429. The bucket refills one call per second, so
    // on a slow machine a few more calls may pass before the first 429: never more than one
    // per second elapsed since the first call.
    let started = Instant::now();
    let mut passed = 0;
    let (response, refused_at) = loop {
        let sent_at = Instant::now();
        let response = alice
            .raw("GET", "/v1/inbox", &[], Vec::new())
            .await
            .unwrap();
        if response.status != 200 {
            break (response, sent_at);
        }
        passed += 1;
        assert!(
            passed <= 3 + started.elapsed().as_secs(),
            "{passed} calls passed within {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no 429 within 30 s"
        );
    };
    assert!(
        passed >= 3,
        "the burst of 3 passes, only {passed} calls did"
    );
    assert_eq!(response.status, 429);
    assert_eq!(
        response.json::<serde_json::Value>().unwrap()["error"]["code"],
        "rate_limited"
    );
    let retry_after: u64 = response
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // The WebSocket upgrade counts too. The bucket was empty at that 429; an upgrade passes
    // only with a call refilled since (on a slow machine), and spends it.
    let mut upgrades = 0;
    loop {
        match alice.connect_ws().await {
            Err(err) => {
                assert_eq!(err.status(), Some(429), "{err}");
                break;
            }
            Ok(_ws) => {
                upgrades += 1;
                let empty_for = refused_at.elapsed();
                assert!(
                    (upgrades as f64) < 1.0 + empty_for.as_secs_f64(),
                    "{upgrades} upgrades passed {empty_for:?} after the bucket was empty"
                );
                assert!(
                    empty_for < Duration::from_secs(30),
                    "no 429 on upgrades within 30 s"
                );
            }
        }
    }
    // Another address's budget is separate, but here every client is 127.0.0.1: exhaust it.
    // At most a full bucket (8) passes, plus one call per second elapsed.
    let anon = server.anonymous();
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        match anon.register(&format!("user{attempts}"), PASSWORD).await {
            Err(err) if err.status() == Some(429) => break,
            _ => attempts += 1,
        }
        let elapsed = started.elapsed();
        assert!(
            attempts <= 8 + elapsed.as_secs(),
            "the per-IP limit applies to unauthenticated calls: {attempts} passed in {elapsed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no 429 within 30 s"
        );
    }
    // After the wait, calls pass again.
    tokio::time::sleep(Duration::from_secs(retry_after + 1)).await;
    assert!(alice.inbox(None).await.is_ok());
}
