//! A connection server's own endpoint, over real sockets: it checks the token itself (its
//! port is reachable by whoever reaches the gateway's network) and its connection limit.

use chat_auth::Tokens;
use chat_conn::hub::ConnHub;
use chat_conn::{ConnConfig, ConnServer};
use chat_proto::api::{AppApi, Call, Request};
use chat_proto::{ApiError, ErrorCode};
use futures::FutureExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::StatusCode;

/// No app server behind: this test never sends a frame.
struct NoApp;

impl AppApi for NoApp {
    fn call(&self, _request: Request) -> Call {
        futures::future::ready(Err(ApiError::new(ErrorCode::Unavailable, "no app server"))).boxed()
    }
}

async fn endpoint(tokens: Tokens, connections_max: usize) -> SocketAddr {
    let config = ConnConfig {
        connections_max,
        ..ConnConfig::default()
    };
    let registry = Arc::new(chat_registry::LocalRegistry::new());
    let conn = ConnServer::new(ConnHub::new(1), Arc::new(NoApp), registry, config);
    let router = chat_conn::endpoint::router(conn, tokens);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(chat_net::http::serve(
        listener,
        router,
        chat_net::http::HttpConfig::default(),
        std::future::pending(),
    ));
    addr
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The upgrade's status: 101 with the socket, or the refusal's status.
async fn upgrade(addr: SocketAddr, token: Option<&str>) -> Result<Socket, StatusCode> {
    let url = match token {
        Some(token) => format!("ws://{addr}/v1/ws?token={token}"),
        None => format!("ws://{addr}/v1/ws"),
    };
    let request = url.into_client_request().expect("request");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let handshake = tokio_tungstenite::client_async(request, stream);
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => Err(response.status()),
        Ok(Err(err)) => panic!("handshake failed: {err}"),
        Err(_) => panic!("no answer to the upgrade in 5 s"),
    }
}

#[tokio::test]
async fn the_endpoint_checks_the_token_and_its_capacity() {
    let tokens = Tokens::new(
        b"the endpoint test's secret, 32 bytes+",
        Duration::from_secs(60),
    );
    let addr = endpoint(tokens.clone(), 1).await;

    assert_eq!(
        upgrade(addr, None).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        upgrade(addr, Some("forged")).await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let other = Tokens::new(
        b"another deployment's secret, 32 bytes",
        Duration::from_secs(60),
    );
    let foreign = other.issue("ann").expect("token").token;
    assert_eq!(
        upgrade(addr, Some(&foreign)).await.err(),
        Some(StatusCode::UNAUTHORIZED),
        "a token signed with another secret is no session"
    );

    let ann = tokens.issue("ann").expect("token").token;
    let first = upgrade(addr, Some(&ann))
        .await
        .expect("a valid token is accepted");
    // The server counts a connection once its socket is served; allow it a moment.
    let mut refused = None;
    for _ in 0..100 {
        match upgrade(addr, Some(&ann)).await {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(extra) => drop(extra),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused,
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "past connections_max the endpoint answers 503"
    );
    drop(first);
}
