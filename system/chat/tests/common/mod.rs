//! A server on 127.0.0.1:0 for integration tests: the same `chat::serve::run` as the binary,
//! over the durable embedded store in a temporary directory; or, with `CHAT_TEST_CLUSTER=1`,
//! a cluster of processes (see [`cluster`]) whose gateway the same tests talk to.

#![allow(dead_code)]

pub mod cluster;

use chat::serve::{Options, run};
use chat_auth::{PasswordCost, Tokens};
use chat_client::{Client, ClientFrame, ConversationView, ServerFrame, WsConnection, WsEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

pub const PASSWORD: &str = "correct horse battery";
pub const SECRET: &[u8] = b"integration-test-secret-0123456789abcdef";

pub struct TestServer {
    pub base: String,
    pub tokens: Tokens,
    shutdown: Option<oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
    _cluster: Option<cluster::Cluster>,
}

impl TestServer {
    /// In-process by default; a process cluster when `CHAT_TEST_CLUSTER` is set.
    pub async fn start() -> TestServer {
        if std::env::var_os("CHAT_TEST_CLUSTER").is_some() {
            return Self::start_cluster(cluster::ClusterOptions::default()).await;
        }
        Self::start_in_process().await
    }

    pub async fn start_cluster(options: cluster::ClusterOptions) -> TestServer {
        let cluster = tokio::task::spawn_blocking(move || cluster::Cluster::start(options))
            .await
            .expect("cluster start");
        TestServer {
            base: cluster.base.clone(),
            tokens: Tokens::new(&cluster.secret(), Tokens::TTL_DEFAULT),
            shutdown: None,
            _dir: None,
            _cluster: Some(cluster),
        }
    }

    pub fn cluster(&mut self) -> &mut cluster::Cluster {
        self._cluster.as_mut().expect("a cluster test server")
    }

    pub async fn start_in_process() -> TestServer {
        Self::start_in_process_with(|_| {}).await
    }

    /// In process, with `tune` applied to the options first.
    pub async fn start_in_process_with(tune: impl FnOnce(&mut Options)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = chat_store::RedbKv::open(dir.path().join("messages.redb")).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut options = Options::new(SECRET.to_vec());
        options.app.password_cost = PasswordCost::TESTING;
        tune(&mut options);
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            run(listener, Arc::new(kv), options, async {
                let _ = rx.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            base: format!("http://{addr}"),
            tokens: Tokens::new(SECRET, Tokens::TTL_DEFAULT),
            shutdown: Some(tx),
            _dir: Some(dir),
            _cluster: None,
        }
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.base).expect("client")
    }

    /// Registers `name` and returns a client logged in as them.
    pub async fn user(&self, name: &str) -> Client {
        let anon = self.anonymous();
        anon.register(name, PASSWORD).await.expect("register");
        let session = anon.login(name, PASSWORD).await.expect("login");
        anon.with_token(session.token)
    }

    pub async fn users<const N: usize>(&self, names: [&str; N]) -> [Client; N] {
        let mut out = Vec::with_capacity(N);
        for name in names {
            out.push(self.user(name).await);
        }
        out.try_into().unwrap_or_else(|_| unreachable!())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

/// The next protocol frame, skipping WebSocket pongs; panics on close or timeout.
pub async fn next_frame(ws: &mut WsConnection) -> ServerFrame {
    loop {
        match ws.recv_timeout(WAIT).await.expect("a frame") {
            WsEvent::Frame(frame) => return frame,
            WsEvent::Pong(_) => continue,
            WsEvent::Closed { code, reason } => panic!("closed unexpectedly: {code:?} {reason}"),
        }
    }
}

/// Waits until the server reads frames from `ws`. A connection server registers a new
/// connection for pushes after the 101 and starts reading it only then, so once the `pong`
/// is back every message sent to the user from then on is pushed to `ws`. Right after
/// `connect_ws` returns, a message can still miss the connection (pushes are best effort).
pub async fn wait_ready(ws: &mut WsConnection) {
    ws.send(&ClientFrame::Ping).await.expect("ping");
    assert_eq!(next_frame(ws).await, ServerFrame::Pong);
}

/// Asserts nothing arrives on `ws` for a short while.
pub async fn assert_quiet(ws: &mut WsConnection) {
    match ws.recv_timeout(Duration::from_millis(300)).await {
        Err(chat_client::ClientError::Timeout { .. }) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

pub async fn direct(a: &Client, b: &str) -> ConversationView {
    a.create_conversation([b], None)
        .await
        .expect("create direct")
        .0
}
