//! Tracing spans of connections stay scoped to their own connection.
//!
//! A span guard held across an `.await` stays entered on the worker thread while other tasks
//! run there: every span they open becomes its child, and with thousands of connections the
//! spans chain into one tree whose recursive close overflowed the stack on shutdown (seen
//! with 10,000 WebSockets). Its own test binary: the subscriber is this thread's default.

mod common;

use common::{TestServer, wait_ready};

#[tokio::test(flavor = "current_thread")]
async fn a_connection_span_is_not_left_entered_while_its_task_waits() {
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let server = TestServer::start_in_process().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let mut first = alice.connect_ws().await.expect("connect");
    wait_ready(&mut first).await;
    let mut second = bob.connect_ws().await.expect("connect");
    wait_ready(&mut second).await;
    // Both connection tasks ran on this thread and now wait for frames.
    let current = tracing::Span::current();
    assert!(
        current.is_none(),
        "a span is still entered while its task waits: {:?}",
        current.metadata().map(|m| m.name())
    );
}
