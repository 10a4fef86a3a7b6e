//! The abuse suite (issue 10): what one ordinary account, or one who reaches an internal
//! port, could do to everyone else. One regression test per finding, over real sockets.

mod common;

use chat_client::{ClientFrame, ServerFrame};
use chat_proto::limits::BODY_BYTES_MAX;
use common::cluster::ClusterOptions;
use common::*;

/// Finding 1: a history or sync page of 200 bodies of escaped control characters was 4.9 MB
/// of JSON, over the internal link's 4 MiB frame limit, and the link's writer stopped on it:
/// the request answered 503 and every other user of that gateway (or connection server)
/// lost the link too, again after each reconnect. Pages are now cut in bytes; each answer
/// fits a frame (a `const` assertion), and paging on reaches every message.
#[tokio::test]
async fn a_page_of_escaped_bodies_is_answered_and_the_link_stays_up() {
    let server = TestServer::start_cluster(ClusterOptions::default()).await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let body = "\u{1}".repeat(BODY_BYTES_MAX);
    let count = 200;
    let mut ws = alice.connect_ws().await.expect("connect");
    for i in 0..count {
        let send = ClientFrame::Send {
            id: format!("m{i}"),
            conv,
            body: body.clone(),
        };
        ws.send(&send).await.expect("send");
    }
    for _ in 0..count {
        assert!(matches!(
            next_frame(&mut ws).await,
            ServerFrame::Sent { .. }
        ));
    }

    // REST over the gateway's link: a page, cut in bytes, then the rest by paging on.
    let page = bob.history(conv, None, Some(200)).await.expect("history");
    assert!(!page.messages.is_empty() && page.messages.len() < count);
    assert_eq!(page.messages.last().map(|m| m.seq), Some(count as u64));
    let mut seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    let mut before = page.next_before;
    while let Some(b) = before {
        let older = bob
            .history(conv, Some(b), Some(200))
            .await
            .expect("older page");
        let mut older_seqs: Vec<u64> = older.messages.iter().map(|m| m.seq).collect();
        older_seqs.extend(seqs);
        seqs = older_seqs;
        before = older.next_before;
    }
    assert_eq!(seqs, (1..=count as u64).collect::<Vec<_>>());
    // The same link still serves everyone.
    bob.inbox(None).await.expect("an inbox over the same link");

    // A sync over the connection server's link streams every message.
    let mut bob_ws = bob.connect_ws().await.expect("connect");
    bob_ws
        .send(&ClientFrame::Sync { conv, after: 0 })
        .await
        .expect("sync");
    let mut synced = Vec::new();
    loop {
        match next_frame(&mut bob_ws).await {
            ServerFrame::Message { seq, .. } => synced.push(seq),
            ServerFrame::Synced { seq, .. } => {
                assert_eq!(seq, count as u64);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(synced, (1..=count as u64).collect::<Vec<_>>());
    wait_ready(&mut ws).await;
}

/// Finding 11: the data directory was 0755 and `messages.redb` 0644 (messages and password
/// hashes readable by every local user). Now the directory is 0700 and the files 0600.
#[cfg(unix)]
#[tokio::test]
async fn data_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let server = ServeProcess::start(&[]);
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let data = &server.data;
    let modes = [
        mode(data),
        mode(&data.join("messages.redb")),
        mode(&data.join("token-secret")),
    ];
    assert_eq!(modes, [0o700, 0o600, 0o600], "data dir, store, secret");
}

/// Finding 12: a text frame that is not UTF-8 closed the connection with no code; 1007 is
/// the standard one.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_closed_with_1007() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

    let server = TestServer::start_in_process().await;
    let _ = server.user("ann").await;
    let token = server.tokens.issue("ann").expect("token").token;
    let url = format!(
        "{}/v1/ws?token={token}",
        server.base.replacen("http", "ws", 1)
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let invalid = Frame::from_payload(header, vec![0xff, 0xfe, b'{'].into());
    ws.send(Message::Frame(invalid)).await.expect("send");
    let close = tokio::time::timeout(WAIT, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("closed within the wait");
    assert_eq!(close, Some(CloseCode::Invalid));
}

/// Finding 4: the internal link had no authentication. A raw TCP client that said `Hello` as
/// a gateway could read any user's inbox and send as anyone (as a connection server, take its
/// pushes). Now a peer must prove it holds the cluster secret first; without the proof it is
/// dropped and gets no answer to anything.
#[tokio::test]
async fn a_link_peer_without_the_cluster_secret_gets_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start_cluster(ClusterOptions::default()).await;
    let [alice, _bob] = server.users(["alice", "bob"]).await;
    let _ = direct(&alice, "bob").await;
    let app = server.cluster().app_addr();

    /// Writes a frame; the app server may have dropped us already (what it should do), so a
    /// failed write is no failure: what counts is that nothing is answered.
    async fn frame(stream: &mut tokio::net::TcpStream, json: serde_json::Value) {
        let bytes = serde_json::to_vec(&json).expect("json");
        let _ = stream.write_u32(bytes.len() as u32).await;
        let _ = stream.write_all(&bytes).await;
        let _ = stream.flush().await;
    }
    /// Everything the app server writes until it closes the connection (or 10 s pass).
    async fn answers(stream: &mut tokio::net::TcpStream) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        let read_all = async {
            while let Ok(len) = stream.read_u32().await {
                let mut bytes = vec![0; len.min(1 << 20) as usize];
                if stream.read_exact(&mut bytes).await.is_err() {
                    break;
                }
                frames.push(serde_json::from_slice(&bytes).unwrap_or_default());
            }
        };
        let _ = tokio::time::timeout(WAIT, read_all).await;
        frames
    }
    let inbox = serde_json::json!({"t": "request", "id": 1, "request":
        {"op": "inbox", "caller": "alice", "query": {}}});

    // Hello as a gateway (the old protocol), then straight to a request.
    let mut raw = tokio::net::TcpStream::connect(app).await.expect("connect");
    frame(
        &mut raw,
        serde_json::json!({"t": "hello", "version": 1, "peer": "gateway"}),
    )
    .await;
    frame(&mut raw, inbox.clone()).await;
    let got = answers(&mut raw).await;
    assert!(
        got.iter().all(|f| f["t"] != "response"),
        "answered: {got:?}"
    );

    // The current protocol with a made-up proof.
    let mut raw = tokio::net::TcpStream::connect(app).await.expect("connect");
    let nonce = "ab".repeat(16);
    frame(
        &mut raw,
        serde_json::json!({"t": "hello", "version": 2, "peer": "gateway", "nonce": nonce}),
    )
    .await;
    frame(
        &mut raw,
        serde_json::json!({"t": "proof", "proof": "00".repeat(32)}),
    )
    .await;
    frame(&mut raw, inbox).await;
    let got = answers(&mut raw).await;
    assert!(
        got.iter().all(|f| f["t"] != "response"),
        "answered: {got:?}"
    );
    assert!(
        got.iter().all(|f| f["t"] == "challenge"),
        "only a challenge before the proof: {got:?}"
    );

    // The cluster's own processes still get in.
    alice
        .inbox(None)
        .await
        .expect("the gateway's authenticated link serves");
}

/// Finding 10: a client id reused in another conversation was silently not stored, and the
/// answer was the other conversation's `sent` (seq 1 of conversation 1 for a send to
/// conversation 2). Now it is refused with `id_conflict`, and stores nothing.
#[tokio::test]
async fn a_reused_id_in_another_conversation_is_an_id_conflict() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let first = direct(&alice, "bob").await.conv_id;
    let (group, _) = alice
        .create_conversation(["bob"], Some("group"))
        .await
        .expect("group");
    let send = |conv| ClientFrame::Send {
        id: "same-id".into(),
        conv,
        body: "hello".into(),
    };
    let mut ws = alice.connect_ws().await.expect("connect");
    ws.send(&send(first)).await.expect("send");
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Sent { seq: 1, conv, .. } if conv == first
    ));
    ws.send(&send(group.conv_id)).await.expect("send");
    match next_frame(&mut ws).await {
        ServerFrame::Error { code, id, .. } => {
            assert_eq!(code, chat_client::ErrorCode::IdConflict);
            assert_eq!(id.as_deref(), Some("same-id"));
        }
        other => panic!("expected id_conflict, got {other:?}"),
    }
    let page = bob
        .history(group.conv_id, None, None)
        .await
        .expect("history");
    assert!(page.messages.is_empty(), "nothing stored: {page:?}");
    // The first conversation's resend is still answered with its seq.
    ws.send(&send(first)).await.expect("resend");
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Sent { seq: 1, conv, .. } if conv == first
    ));
}

/// Finding 5: a sequencer was created, and lived 30 s, for any conversation id a client
/// named, before membership was checked; one connection filled the table of
/// `convs_active_max` in a moment, and every conversation without a live sequencer was
/// refused as `overloaded`. Now a sequencer whose sends are all refused as unknown ends at
/// once.
#[tokio::test]
async fn made_up_conversation_ids_do_not_fill_the_sequencer_table() {
    let active_max = 20;
    let server = TestServer::start_in_process_with(|options| {
        options.app.app.convs_active_max = active_max;
    })
    .await;
    let [mallory, alice, _bob] = server.users(["mallory", "alice", "bob"]).await;
    let mut attack = mallory.connect_ws().await.expect("connect");
    let made_up = 15 * active_max as u64;
    for i in 0..made_up {
        let send = ClientFrame::Send {
            id: format!("m{i}"),
            conv: 1_000_000 + i,
            body: "x".into(),
        };
        attack.send(&send).await.expect("send");
    }
    let mut overloaded = 0;
    for _ in 0..made_up {
        match next_frame(&mut attack).await {
            ServerFrame::Error {
                code: chat_client::ErrorCode::Overloaded,
                ..
            } => overloaded += 1,
            ServerFrame::Error { code, .. } => {
                assert_eq!(code, chat_client::ErrorCode::UnknownConversation)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A real conversation's first send finds room.
    let conv = direct(&alice, "bob").await.conv_id;
    let mut ws = alice.connect_ws().await.expect("connect");
    let send = ClientFrame::Send {
        id: "hello".into(),
        conv,
        body: "hello bob".into(),
    };
    ws.send(&send).await.expect("send");
    match next_frame(&mut ws).await {
        ServerFrame::Sent { seq: 1, .. } => {}
        other => panic!(
            "a real conversation was refused ({overloaded} made-up ones were \
                         refused as overloaded): {other:?}"
        ),
    }
}

/// Finding 7: there was no limit on frames per user: every `send` and `read` is a durable
/// write, and one user wrote 2,721 messages of 4 KB a second. Now a user's frames beyond
/// the connection server's rate are answered `rate_limited` with `retry_after_ms`, and not
/// carried out.
#[tokio::test]
async fn a_users_frames_beyond_the_rate_are_refused_with_a_wait() {
    let server = TestServer::start_in_process_with(|options| {
        options.conn.frame_rate = Some(chat_net::ratelimit::Rate {
            per_second: 2,
            burst: 5,
        });
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut ws = alice.connect_ws().await.expect("connect");
    let count = 30;
    for i in 0..count {
        let send = ClientFrame::Send {
            id: format!("m{i}"),
            conv,
            body: "spam".into(),
        };
        ws.send(&send).await.expect("send");
    }
    let (mut sent, mut refused) = (0, 0);
    for _ in 0..count {
        match next_frame(&mut ws).await {
            ServerFrame::Sent { .. } => sent += 1,
            ServerFrame::Error {
                code,
                id,
                retry_after_ms,
                ..
            } => {
                assert_eq!(code, chat_client::ErrorCode::RateLimited);
                assert!(id.is_some_and(|id| id.starts_with('m')), "names the send");
                assert!(retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        (5..=8).contains(&sent),
        "the burst and what refilled meanwhile: {sent}"
    );
    assert_eq!(sent + refused, count);
    let page = bob.history(conv, None, Some(50)).await.expect("history");
    assert_eq!(page.messages.len(), sent, "refused frames are not stored");
    // Pings (heartbeats) are never limited.
    wait_ready(&mut ws).await;
}

/// Opens a TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all
/// this machine's), so a test can be two clients at two addresses.
async fn connect_from(from: [u8; 4], addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    socket.connect(addr).await.expect("connect")
}

/// Finding 6: request bodies could trickle in for ever (only headers had a timeout), and the
/// connection permit was taken before accept: one address trickling bodies held every permit
/// and stopped the accept loop for everyone. Now a whole request must arrive within the
/// request timeout (408 otherwise, and the connection closes), and one address holds at most
/// `connections_per_address_max` connections.
#[tokio::test]
async fn one_address_trickling_bodies_cannot_stop_the_server() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_in_process_with(|options| {
        options.http.connections_max = 12;
        options.http.connections_per_address_max = Some(4);
        options.http.request_timeout = Duration::from_secs(5);
    })
    .await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let trickle = b"POST /v1/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 1000\r\n\r\n{";
    // The attacker, from 127.0.0.1: more connections than the server holds in all.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from([127, 0, 0, 1], &addr).await;
        let _ = stream.write_all(trickle).await;
        held.push(stream);
    }
    // Someone else, from 127.0.0.2, is served at once: well before the attacker's requests
    // time out and would free their permits.
    let mut other = connect_from([127, 0, 0, 2], &addr).await;
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    other.write_all(request).await.expect("request");
    let mut answer = String::new();
    let read = other.read_to_string(&mut answer);
    tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .expect("an answer while one address trickles")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The first connection's trickled request is answered 408 once its time is up.
    let mut first = held.swap_remove(0);
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, first.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the trickling connection was not closed in time"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

/// `chat serve` as its own process (for what only a process shows: its memory), on a fresh
/// data directory; killed when dropped.
struct ServeProcess {
    child: std::process::Child,
    base: String,
    /// Its data directory.
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    fn start(args: &[&str]) -> ServeProcess {
        use std::io::BufRead;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start chat serve");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the listening line");
        let base = line
            .trim()
            .strip_prefix("chat: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        ServeProcess {
            child,
            base,
            data,
            _dir: dir,
        }
    }

    /// A `/proc/PID/status` figure in bytes (`VmRSS`, `VmHWM`: the peak).
    fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"));
        kib * 1024
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finding 3: 150 concurrent failed logins took the server from 124 MiB to 2.8 GiB (the
/// allocator kept each thread's freed 19 MiB Argon2 buffer), 300 more to 6.2 GiB, and a
/// legitimate login waited behind all of them. Now the hashes run at most a bound at once
/// in reused memory, and a login that cannot get its turn within a bounded wait is answered
/// 503 with `Retry-After`. Here the address limits are off, as for a flood from many
/// addresses; the hash cost is the default (19 MiB).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_refused_quickly_within_bounded_memory() {
    use chat_client::{Client, ErrorCode};
    use std::time::{Duration, Instant};
    let server = ServeProcess::start(&[
        "--rate-ip-per-sec",
        "0",
        "--rate-credentials-per-sec",
        "0",
        "--password-hashes-max",
        "2",
    ]);
    let anon = Client::new(&server.base).expect("client");
    anon.register("alice", PASSWORD).await.expect("register");
    let before = server.memory("VmRSS");

    let flood: Vec<_> = (0..450)
        .map(|i| {
            let client = anon.clone();
            tokio::spawn(async move { client.login(&format!("nobody{i}"), "wrong guess").await })
        })
        .collect();
    // Meanwhile alice logs in, as a client should: again after `Retry-After` when refused.
    let started = Instant::now();
    let mut refusals = 0;
    loop {
        match anon.login("alice", PASSWORD).await {
            Ok(_) => break,
            Err(err) if err.code() == Some(ErrorCode::Overloaded) && refusals < 30 => {
                refusals += 1;
                tokio::time::sleep(err.retry_after().expect("a wait")).await;
            }
            Err(err) => panic!("alice's login: {err}"),
        }
    }
    let legitimate = started.elapsed();
    let (mut wrong, mut overloaded) = (0, 0);
    for task in flood {
        match task.await.expect("task") {
            Err(err) if err.code() == Some(ErrorCode::InvalidCredentials) => wrong += 1,
            Err(err) if err.code() == Some(ErrorCode::Overloaded) => {
                let wait = err.retry_after().expect("503 says when to retry");
                assert!(wait >= Duration::from_secs(1), "{wait:?}");
                overloaded += 1;
            }
            other => panic!("a failed login answered {other:?}"),
        }
    }
    let flooded = started.elapsed();
    let peak = server.memory("VmHWM");
    let growth_mib = peak.saturating_sub(before) / (1 << 20);
    eprintln!(
        "450 failed logins: {wrong} answered 401, {overloaded} 503 in {flooded:?}; RSS {} MiB \
         before, peak {} MiB; alice's login took {legitimate:?} ({refusals} refusals)",
        before >> 20,
        peak >> 20,
    );
    assert!(
        overloaded > 0,
        "the flood outlasted the wait bound; some logins must be refused with 503"
    );
    // Two hashes of 19 MiB at once, plus 450 connections' buffers.
    assert!(
        growth_mib < 150,
        "RSS grew {growth_mib} MiB under the flood"
    );
}

/// Finding 3: a login flood aimed at one account could guess at the speed of the hashing.
/// Now after five failures each further attempt on that username waits longer (1 s, 2 s,
/// ... up to a minute), refused with 429 before any hashing, the right password included;
/// other accounts are not affected, and the right password after the wait ends it.
#[tokio::test]
async fn failed_logins_of_one_username_are_throttled() {
    use chat_client::ErrorCode;
    use std::time::Duration;
    let server = TestServer::start_in_process().await;
    let _alice = server.user("alice").await;
    let _bob = server.user("bob").await;
    let anon = server.anonymous();
    for i in 0..6 {
        let err = anon.login("alice", "wrong guess").await.expect_err("wrong");
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidCredentials),
            "attempt {i}"
        );
    }
    for password in ["another guess", PASSWORD] {
        let err = anon.login("alice", password).await.expect_err("throttled");
        assert_eq!(err.code(), Some(ErrorCode::RateLimited), "{err}");
        let wait = err.retry_after().expect("a wait");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
    }
    anon.login("bob", PASSWORD)
        .await
        .expect("bob is not throttled");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    anon.login("alice", PASSWORD)
        .await
        .expect("the right password after the wait");
    let err = anon.login("alice", "wrong guess").await.expect_err("wrong");
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidCredentials),
        "a success forgets the failures"
    );
}

/// Finding 3: registrations and logins from one address were limited only by the general
/// per-address limit (200/s, burst 1,000), enough to keep every hash busy. Now they have a
/// stricter one of their own (10/s, burst 100 by default), answered 429 with `Retry-After`,
/// while the address's other calls go on.
#[tokio::test]
async fn registrations_and_logins_from_one_address_are_limited() {
    use chat_client::ErrorCode;
    let server = TestServer::start_in_process().await;
    let alice = server.user("alice").await;
    let anon = server.anonymous();
    let mut refused = None;
    for i in 0..200 {
        match anon.login(&format!("nobody{i}"), "wrong guess").await {
            Err(err) if err.code() == Some(ErrorCode::InvalidCredentials) => {}
            Err(err) if err.code() == Some(ErrorCode::RateLimited) => {
                refused = Some((i, err));
                break;
            }
            other => panic!("login {i}: {other:?}"),
        }
    }
    let (at, err) = refused.expect("refused within 200 logins");
    // The burst of 100 less the two of alice's setup, and a few refilled meanwhile.
    assert!((90..120).contains(&at), "refused at login {at}");
    assert!(err.retry_after().is_some());
    alice
        .inbox(None)
        .await
        .expect("other calls from the address go on");
}

/// Finding 12: a WebSocket session outlived its token's expiry (a token stolen once gave a
/// session for ever). Now the connection is closed with 4001 when the token expires; the
/// same token is refused at the next upgrade, and a new log-in brings the session back.
#[tokio::test]
async fn a_session_is_closed_with_4001_when_its_token_expires() {
    use chat_client::WsEvent;
    use std::time::{Duration, Instant};
    let server = TestServer::start_in_process_with(|options| {
        options.common.token_ttl = Duration::from_secs(2);
    })
    .await;
    let alice = server.user("alice").await;
    let mut ws = alice.connect_ws().await.expect("connect");
    wait_ready(&mut ws).await;
    let started = Instant::now();
    let code = loop {
        match ws.recv_timeout(Duration::from_secs(5)).await {
            Ok(WsEvent::Closed { code, .. }) => break code,
            Ok(_) => {}
            Err(err) => panic!("no close within 5 s of a 2 s token: {err}"),
        }
    };
    assert_eq!(code, Some(4001), "closed after {:?}", started.elapsed());
    match alice.connect_ws().await {
        Err(err) => assert_eq!(err.status(), Some(401), "{err}"),
        Ok(_) => panic!("an upgrade with the expired token was accepted"),
    }
    let session = server
        .anonymous()
        .login("alice", PASSWORD)
        .await
        .expect("log in again");
    let mut ws = alice
        .with_token(session.token)
        .connect_ws()
        .await
        .expect("a new session");
    wait_ready(&mut ws).await;
}

/// Finding 12: `--token-secret` on the command line shows in `ps`. Now a secret can come from
/// a file (`--token-secret-file`), which must be readable by its owner only.
#[cfg(unix)]
#[test]
fn a_secret_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "ab".repeat(32)).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--token-secret-file")
        .arg(&file)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run chat serve");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chat serve started with a secret file other users can read");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let server = ServeProcess::start(&["--token-secret-file", file.to_str().expect("path")]);
    assert!(server.base.starts_with("http://"));
}

/// Finding 2: clients that never read kept their sockets for ever: the writer blocked in
/// `feed`/`flush`/ping with no timeout, the reader side left the hub, and with
/// `--connections-max 5` twenty such connections stayed open past the idle timeout while a
/// 21st was still accepted. Now every socket write is bounded by the write timeout, and a
/// connection counts until its writer has let go of the socket: the server closes each such
/// socket and only then takes a new connection in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_lose_their_sockets_and_their_places() {
    use futures::StreamExt;
    use std::time::{Duration, Instant};
    let server = TestServer::start_in_process_with(|options| {
        options.conn.connections_max = 6;
        options.conn.write_timeout = Duration::from_secs(2);
        // Pushes wait on the socket, not in a queue that would overflow first (1013).
        options.conn.outbound_queue_len_max = 4096;
        options.conn.frame_rate = None;
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let token = server.tokens.issue("bob").expect("token").token;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let url = format!("ws://{addr}/v1/ws?token={token}");

    // Five of bob's connections that never read, with small receive buffers.
    let mut sleepers = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket
            .connect(addr.parse().expect("addr"))
            .await
            .expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .expect("upgrade");
        sleepers.push(ws);
    }
    let mut writer = alice.connect_ws().await.expect("alice connects: the 6th");
    wait_ready(&mut writer).await;
    match bob.connect_ws().await {
        Err(err) => assert_eq!(err.status(), Some(503), "{err}"),
        Ok(_) => panic!("a 7th connection was accepted over connections_max 6"),
    }

    // 12 MiB of pushes to each sleeper: far more than its socket buffers hold.
    let body = "x".repeat(BODY_BYTES_MAX);
    let (mut sent, mut acked) = (0, 0);
    let pushes = 3000;
    while acked < pushes {
        while sent < pushes && sent - acked < 128 {
            let send = ClientFrame::Send {
                id: format!("m{sent}"),
                conv,
                body: body.clone(),
            };
            writer.send(&send).await.expect("send");
            sent += 1;
        }
        match next_frame(&mut writer).await {
            ServerFrame::Sent { .. } => acked += 1,
            other => panic!("expected sent, got {other:?}"),
        }
    }

    // The sleepers go on not reading for three write timeouts (reading would let the
    // server's writes go on); then each socket must hold what the kernel buffered (2.7 MiB
    // here, of 12 MiB pushed), then its end.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let started = Instant::now();
    for (i, mut sleeper) in sleepers.into_iter().enumerate() {
        let mut frames = 0;
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(_)) = sleeper.next().await {
                frames += 1;
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "sleeper {i}'s socket still open: {frames} pushes read in {:?}",
            started.elapsed()
        );
        assert!(
            frames < pushes,
            "sleeper {i} got every push: it was never cut off"
        );
    }
    let mut again = bob
        .connect_ws()
        .await
        .expect("the sleepers' places are free again");
    wait_ready(&mut again).await;
}

/// Finding 8: behind a reverse proxy every client has the proxy's address, so the
/// per-address limits put all of them in one bucket. Now a gateway told which proxies to
/// trust takes the client from their `X-Forwarded-For` (each client its own bucket, and the
/// proxy's connections are not capped per address), while anyone else's header is ignored,
/// so a client cannot escape its limit by writing one.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_have_their_own_limits_and_others_cannot_spoof() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_in_process_with(|options| {
        options.http.trusted_proxies = "127.0.0.1".parse().expect("ranges");
        options.http.connections_per_address_max = Some(2);
        options.rates.credentials = Some(chat_net::ratelimit::Rate {
            per_second: 1,
            burst: 3,
        });
    })
    .await;
    let anon = server.anonymous();
    // Made-up usernames, each failing once: the per-username throttle stays out of it.
    let body = |i: usize| format!(r#"{{"username":"nobody{i}","password":"wrong guess"}}"#);
    let attempts = std::sync::atomic::AtomicUsize::new(0);
    let login_as = |client: &'static str| {
        let anon = anon.clone();
        let body = body(attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).into_bytes();
        async move {
            anon.raw("POST", "/v1/sessions", &[("x-forwarded-for", client)], body)
                .await
                .expect("login")
                .status
        }
    };
    // The proxy (127.0.0.1) holds more connections than one address may.
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    for _ in 0..3 {
        assert_eq!(login_as("203.0.113.7").await, 401);
    }
    assert_eq!(
        login_as("203.0.113.7").await,
        429,
        "that client's burst is spent"
    );
    assert_eq!(
        login_as("203.0.113.8").await,
        401,
        "another client has its own bucket"
    );
    drop(held);

    // An untrusted peer (127.0.0.2) naming a new client in each request stays in its own bucket.
    let mut statuses = Vec::new();
    for i in 0..4 {
        let mut stream = connect_from([127, 0, 0, 2], &addr).await;
        let body = body(100 + i);
        let request = format!(
            "POST /v1/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             x-forwarded-for: 198.51.100.{i}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        stream.write_all(body.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"));
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 429],
        "a spoofed header does not help"
    );
}

/// Finding 9: anyone could push a user's real conversations out of their inbox: 100 groups
/// that include the victim, and the inbox showed at most 100 with no next page. Now the
/// inbox pages on with a cursor to the very end, and one user creates at most 50 groups an
/// hour (`rate_limited` with the wait beyond).
#[tokio::test]
async fn a_flood_of_groups_is_capped_and_cannot_hide_a_conversation() {
    use chat_client::ErrorCode;
    let server = TestServer::start_in_process().await;
    let [alice, bob, mallory] = server.users(["alice", "bob", "mallory"]).await;
    let _carol = server.user("carol").await;
    let real = direct(&alice, "bob").await.conv_id;
    let mut ws = bob.connect_ws().await.expect("connect");
    ws.send(&ClientFrame::Send {
        id: "hello".into(),
        conv: real,
        body: "hello alice".into(),
    })
    .await
    .expect("send");
    assert!(matches!(
        next_frame(&mut ws).await,
        ServerFrame::Sent { .. }
    ));

    let mut created = 0;
    let refused = loop {
        match mallory
            .create_conversation(["alice", "carol"], Some("look at me"))
            .await
        {
            Ok(_) => created += 1,
            Err(err) => break err,
        }
        assert!(created <= 50, "more than 50 groups in an hour");
    };
    assert_eq!(created, 50);
    assert_eq!(refused.code(), Some(ErrorCode::RateLimited), "{refused}");
    let wait = refused.retry_after().expect("a wait");
    assert!(wait > std::time::Duration::from_secs(3000), "{wait:?}");

    // Alice's first page is all mallory's; paging on finds her conversation with bob.
    let first = alice.inbox(None).await.expect("inbox");
    assert!(first.conversations.iter().all(|c| c.conv_id != real));
    let mut before = first.next_before;
    let mut found = false;
    while let Some(cursor) = before {
        let page = alice.inbox_page(None, Some(cursor)).await.expect("page");
        found |= page
            .conversations
            .iter()
            .any(|c| c.conv_id == real && c.unread == 1);
        before = page.next_before;
    }
    assert!(
        found,
        "the real conversation is on a later page, with its unread message"
    );
}
