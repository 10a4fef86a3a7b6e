//! The client against scripted fake servers on `127.0.0.1:0`: what it sends, how it reads
//! answers (good, rejected, malformed, late), and the live session's gap and reconnect recipe.
//! Tests against the real server live elsewhere.

use chat_client::{
    Client, ClientError, ClientFrame, ErrorCode, LiveEvent, LiveSession, ServerFrame, Tracker,
    WsEvent,
};
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Reads one HTTP request (head and `Content-Length` body) as text.
async fn read_request(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before a full request");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return text;
            }
        }
    }
}

/// A server answering one request with `response` and handing back the request it read.
async fn one_shot(response: &'static str) -> (Client, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let request = read_request(&mut stream).await;
        stream.write_all(response.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        request
    });
    (Client::new(&format!("http://{addr}")).unwrap(), handle)
}

fn http_response(status: &str, body: &str) -> &'static str {
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(text.into_boxed_str())
}

#[tokio::test]
async fn create_conversation_sends_json_with_the_token_and_reads_201() {
    let (client, server) = one_shot(http_response(
        "201 Created",
        r#"{"conv_id":7,"kind":"direct","members":["alice","bob"],"title":null}"#,
    ))
    .await;
    let client = client.with_token("tok");
    let (view, created) = client.create_conversation(["bob"], None).await.unwrap();
    assert_eq!(view.conv_id, 7);
    assert!(created);
    let request = server.await.unwrap();
    let lower = request.to_ascii_lowercase();
    assert!(
        request.starts_with("POST /v1/conversations HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        lower.contains("\r\nauthorization: bearer tok\r\n"),
        "{request}"
    );
    assert!(
        lower.contains("\r\ncontent-type: application/json\r\n"),
        "{request}"
    );
    assert!(lower.contains("\r\nhost: 127.0.0.1:"), "{request}");
    assert!(
        request.ends_with(r#"{"members":["bob"],"title":null}"#),
        "{request}"
    );
}

#[tokio::test]
async fn an_existing_conversation_is_not_created() {
    let (client, _server) = one_shot(http_response(
        "200 OK",
        r#"{"conv_id":7,"kind":"group","members":["a","b","c"],"title":"t"}"#,
    ))
    .await;
    let (_, created) = client
        .create_conversation(vec!["b".to_string(), "c".to_string()], Some("t"))
        .await
        .unwrap();
    assert!(!created);
}

#[tokio::test]
async fn history_puts_its_parameters_in_the_query() {
    let (client, server) = one_shot(http_response("200 OK", r#"{"messages":[{"conv_id":3,"seq":9,"sender":"a","body":"x","client_msg_id":"m","ts":1}],"next_before":9}"#)).await;
    let page = client.history(3, Some(10), Some(1)).await.unwrap();
    assert_eq!(page.next_before, Some(9));
    assert_eq!(page.messages[0].seq, 9);
    assert!(
        server
            .await
            .unwrap()
            .starts_with("GET /v1/conversations/3/messages?before=10&limit=1 HTTP/1.1\r\n")
    );
}

#[tokio::test]
async fn rejections_carry_status_and_code() {
    let (client, _server) = one_shot(http_response(
        "409 Conflict",
        r#"{"error":{"code":"username_taken","message":"taken"}}"#,
    ))
    .await;
    let err = client.register("alice", "password1").await.unwrap_err();
    assert_eq!(err.status(), Some(409));
    assert_eq!(err.code(), Some(ErrorCode::UsernameTaken));
}

#[tokio::test]
async fn a_malformed_success_body_is_a_decode_error() {
    let (client, _server) = one_shot(http_response("200 OK", r#"{"token":5}"#)).await;
    let err = client.login("alice", "password1").await.unwrap_err();
    assert!(matches!(err, ClientError::Decode(_)), "{err:?}");
}

#[tokio::test]
async fn raw_returns_any_status_and_lets_headers_override() {
    let (client, server) = one_shot(http_response(
        "400 Bad Request",
        r#"{"error":{"code":"bad_request","message":"bad json"}}"#,
    ))
    .await;
    let client = client.with_token("tok");
    let response = client
        .raw(
            "POST",
            "/v1/users",
            &[
                ("content-type", "text/plain"),
                ("authorization", "Bearer other"),
            ],
            b"{oops".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(response.text().contains("bad_request"));
    let err = response.error_for_status().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest));
    let request = server.await.unwrap().to_ascii_lowercase();
    assert!(
        request.contains("\r\ncontent-type: text/plain\r\n")
            && !request.contains("application/json"),
        "{request}"
    );
    assert!(
        request.contains("\r\nauthorization: bearer other\r\n") && !request.contains("bearer tok"),
        "{request}"
    );
    assert!(request.ends_with("{oops"));
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let client = Client::new(&format!("http://{addr}"))
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let err = client.inbox(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_refused_upgrade_is_an_api_error_with_its_status() {
    let (client, server) = one_shot(http_response(
        "401 Unauthorized",
        r#"{"error":{"code":"unauthorized","message":"bad token"}}"#,
    ))
    .await;
    let err = client.with_token("a b/c").connect_ws().await.err().unwrap();
    assert_eq!(err.status(), Some(401), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    assert!(
        server
            .await
            .unwrap()
            .starts_with("GET /v1/ws?token=a%20b%2Fc HTTP/1.1\r\n")
    );
}

/// A WebSocket server for one connection at a time, running `script` on each.
async fn ws_server<F, Fut>(connections: usize, script: F) -> Client
where
    F: Fn(usize, tokio_tungstenite::WebSocketStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for i in 0..connections {
            let (stream, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            script(i, ws).await;
        }
    });
    Client::new(&format!("http://{addr}"))
        .unwrap()
        .with_token("tok")
}

async fn recv_frame(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> ClientFrame {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => return ClientFrame::parse(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn push(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, frame: ServerFrame) {
    ws.send(Message::text(frame.to_json())).await.unwrap();
}

fn message(conv: u64, seq: u64) -> ServerFrame {
    ServerFrame::Message {
        conv,
        seq,
        sender: "bob".into(),
        body: format!("m{seq}"),
        id: format!("b{seq}"),
        ts: 0,
        event: None,
        edited: false,
        deleted: false,
    }
}

#[tokio::test]
async fn frames_pongs_garbage_and_close_codes() {
    let client = ws_server(1, |_, mut ws| async move {
        assert_eq!(recv_frame(&mut ws).await, ClientFrame::Ping);
        push(&mut ws, ServerFrame::Pong).await;
        // The WebSocket ping: tungstenite queues its pong, the flush sends it.
        assert!(matches!(ws.next().await, Some(Ok(Message::Ping(_)))));
        ws.flush().await.unwrap();
        ws.send(Message::text("not json")).await.unwrap();
        ws.send(Message::text(format!(
            r#"{{"type":"message","body":"{}"}}"#,
            "x".repeat(200 * 1024)
        )))
        .await
        .ok();
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Size,
                reason: "frame too large".into(),
            }))
            .await;
    })
    .await;
    let mut ws = client.connect_ws().await.unwrap();
    ws.send(&ClientFrame::Ping).await.unwrap();
    ws.send_ping(b"hb".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(ws.recv().await.unwrap());
    }
    assert!(
        seen.contains(&WsEvent::Frame(ServerFrame::Pong)),
        "{seen:?}"
    );
    assert!(seen.contains(&WsEvent::Pong(b"hb".to_vec())), "{seen:?}");
    assert!(matches!(ws.recv().await, Err(ClientError::Decode(_))));
    // A message over the client's limit is an error, not an allocation of any size.
    let err = ws.recv().await.unwrap_err();
    assert!(matches!(err, ClientError::WebSocket(_)), "{err:?}");
}

#[tokio::test]
async fn close_code_is_reported_then_sticky() {
    let client = ws_server(1, |_, mut ws| async move {
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Again,
                reason: "slow".into(),
            }))
            .await;
        while ws.next().await.is_some() {}
    })
    .await;
    let mut ws = client.connect_ws().await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap(),
        WsEvent::Closed {
            code: Some(1013),
            reason: "slow".into()
        }
    );
    assert!(matches!(
        ws.recv().await,
        Err(ClientError::Closed {
            code: Some(1013),
            ..
        })
    ));
}

#[tokio::test]
async fn live_session_syncs_a_gap_and_resyncs_after_reconnect() {
    let client = ws_server(2, |i, mut ws| async move {
        if i == 0 {
            // Pushes 1 then 3: the client must ask for what follows 1.
            push(&mut ws, message(5, 1)).await;
            push(&mut ws, message(5, 3)).await;
            assert_eq!(
                recv_frame(&mut ws).await,
                ClientFrame::Sync { conv: 5, after: 1 }
            );
            push(&mut ws, message(5, 2)).await;
            push(&mut ws, message(5, 3)).await;
            push(&mut ws, ServerFrame::Synced { conv: 5, seq: 3 }).await;
            // A send, then the connection dies before the ack.
            let ClientFrame::Send { conv: 5, body, .. } = recv_frame(&mut ws).await else {
                panic!("expected a send")
            };
            assert_eq!(body, "hello");
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::Again,
                    reason: "slow".into(),
                }))
                .await;
        } else {
            // After the reconnect: a sync from the last seen seq, then the send again.
            assert_eq!(
                recv_frame(&mut ws).await,
                ClientFrame::Sync { conv: 5, after: 3 }
            );
            let ClientFrame::Send { id, conv: 5, .. } = recv_frame(&mut ws).await else {
                panic!("expected the resend")
            };
            push(&mut ws, ServerFrame::Synced { conv: 5, seq: 3 }).await;
            push(
                &mut ws,
                ServerFrame::Sent {
                    id,
                    conv: 5,
                    seq: 4,
                    ts: 9,
                },
            )
            .await;
            push(&mut ws, message(5, 5)).await;
            while ws.next().await.is_some() {}
        }
    })
    .await;
    let mut live = LiveSession::connect_with(client, Tracker::with_id_prefix("t"))
        .await
        .unwrap();
    live.follow(5, 0);
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        for event in live.next_events().await.unwrap() {
            if let LiveEvent::Message(m) = event {
                seqs.push(m.seq);
            }
        }
    }
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        live.next_events().await.unwrap(),
        [LiveEvent::Synced { conv: 5, seq: 3 }]
    );
    let id = live.send_message(5, "hello").await.unwrap();
    let err = live.next_events().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Closed {
                code: Some(1013),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(live.tracker().pending_ids(), std::slice::from_ref(&id));

    live.reconnect().await.unwrap();
    let mut events = Vec::new();
    while events.len() < 3 {
        events.extend(live.next_events().await.unwrap());
    }
    assert_eq!(events[0], LiveEvent::Synced { conv: 5, seq: 3 });
    assert_eq!(
        events[1],
        LiveEvent::Acked {
            id,
            conv: 5,
            seq: 4,
            ts: 9
        }
    );
    assert!(matches!(&events[2], LiveEvent::Message(m) if m.seq == 5));
    assert!(live.tracker().pending_ids().is_empty());
    assert_eq!(live.tracker().last_seen(5), Some(5));
}

#[tokio::test]
async fn live_session_pings_when_idle_and_gives_up_on_silence() {
    let client = ws_server(1, |_, mut ws| async move {
        // Answer the first heartbeat, then go silent (as in a partition).
        assert_eq!(recv_frame(&mut ws).await, ClientFrame::Ping);
        push(&mut ws, ServerFrame::Pong).await;
        push(&mut ws, message(1, 1)).await;
        assert_eq!(recv_frame(&mut ws).await, ClientFrame::Ping);
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    // The timeout also bounds the handshake and the answer to the first heartbeat, which a
    // loaded machine may not manage in a few hundred milliseconds.
    let client = client.with_timeout(Duration::from_secs(1));
    let mut live = LiveSession::connect(client)
        .await
        .unwrap()
        .with_heartbeat_interval(Duration::from_millis(100));
    assert!(
        matches!(&live.next_events().await.unwrap()[..], [LiveEvent::Message(m)] if m.seq == 1)
    );
    let err = live.next_events().await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Timeout {
                op: "heartbeat",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!live.is_connected());
}
