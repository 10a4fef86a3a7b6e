//! A client that falls behind is closed with 1013; one that stops reading altogether cannot
//! hold its connection (or the server's buffers) forever.
//!
//! In process only: what a gateway's splice does with such a client is judged by the
//! simulation's `slow_consumers` checker, on simulated sockets with a send window.

mod common;

use chat_client::{Client, ClientFrame, ServerFrame, WsConnection, WsEvent};
use chat_proto::ConvId;
use common::*;
use std::time::{Duration, Instant};

/// 4 KiB pushes worth more than the socket buffers of both ends on loopback (a few MiB each).
const PUSHES: usize = 4000;

/// Alice sends [`PUSHES`] messages to Bob, whose connection `sleeper` never reads meanwhile.
async fn flood(alice: &Client, conv: ConvId) {
    let mut writer = alice.connect_ws().await.unwrap();
    let body = "x".repeat(chat_proto::limits::BODY_BYTES_MAX);
    let (mut sent, mut acked) = (0, 0);
    while acked < PUSHES {
        while sent < PUSHES && sent - acked < 128 {
            writer
                .send(&ClientFrame::Send {
                    id: format!("m{sent}"),
                    conv,
                    body: body.clone(),
                })
                .await
                .unwrap();
            sent += 1;
        }
        match next_frame(&mut writer).await {
            ServerFrame::Sent { .. } => acked += 1,
            other => panic!("expected sent, got {other:?}"),
        }
    }
}

/// Reads what the sleeper was sent until the connection ends; returns the close code (None
/// for a connection dropped without a close frame) and the messages read.
async fn read_to_end(sleeper: &mut WsConnection) -> (Option<u16>, usize) {
    let started = Instant::now();
    let mut messages = 0;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the connection never ends"
        );
        match sleeper.recv_timeout(Duration::from_secs(5)).await {
            Ok(WsEvent::Frame(ServerFrame::Message { .. })) => messages += 1,
            Ok(WsEvent::Frame(_) | WsEvent::Pong(_)) => {}
            Ok(WsEvent::Closed { code, .. }) => return (code, messages),
            Err(chat_client::ClientError::Timeout { .. }) => {
                panic!("the connection of a client that stopped reading is still open")
            }
            // Reset, or a frame cut short: dropped.
            Err(_) => return (None, messages),
        }
    }
}

/// Bob comes back and catches up on everything with `sync`.
async fn catch_up(bob: &Client, conv: ConvId) {
    let mut back = bob.connect_ws().await.unwrap();
    back.send(&ClientFrame::Sync { conv, after: 0 })
        .await
        .unwrap();
    let mut last = 0;
    loop {
        match next_frame(&mut back).await {
            ServerFrame::Message { seq, .. } => last = seq,
            ServerFrame::Synced { seq, .. } => {
                assert_eq!(seq, PUSHES as u64);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(last, PUSHES as u64);
}

#[tokio::test]
async fn a_client_that_falls_behind_is_closed_with_1013() {
    let server = TestServer::start_in_process_with(|options| {
        options.conn.outbound_queue_len_max = 64;
        // The flood is the test's instrument, far over one user's frame limit (which has
        // tests of its own in abuse.rs).
        options.conn.frame_rate = None;
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut sleeper = bob.connect_ws().await.unwrap();
    wait_ready(&mut sleeper).await;

    flood(&alice, conv).await;
    let (code, messages) = read_to_end(&mut sleeper).await;
    assert_eq!(code, Some(1013));
    assert!(
        messages < PUSHES,
        "every push arrived: the queue never overflowed"
    );
    catch_up(&bob, conv).await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped() {
    // A queue longer than the flood: only the blocked socket can stop the writer.
    let server = TestServer::start_in_process_with(|options| {
        options.conn.write_timeout = Duration::from_secs(1);
        options.conn.outbound_queue_len_max = 2 * PUSHES;
        options.conn.frame_rate = None;
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = direct(&alice, "bob").await.conv_id;
    let mut sleeper = bob.connect_ws().await.unwrap();
    wait_ready(&mut sleeper).await;

    flood(&alice, conv).await;
    // Well past the write timeout: the server has given up on the sleeper.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // What the sleeper reads now is what was in the sockets, then the end, with no close
    // frame (it could not be written). A close frame now would mean that the server waited
    // for the client to read again.
    let (code, messages) = read_to_end(&mut sleeper).await;
    assert_eq!(code, None);
    assert!(
        messages < PUSHES,
        "every push arrived: the sockets never filled ({messages} of {PUSHES})"
    );
    catch_up(&bob, conv).await;
}
