//! The WebSocket upgrade.
//!
//! The token is checked, and the user's and address's rate limits applied, before the
//! upgrade (401 / 429 otherwise). Then:
//! - [`WsBackend::Local`]: the in-process connection server accepts the upgrade
//!   ([`chat_conn::ConnServer::upgrade`], the same call its own endpoint makes);
//! - [`WsBackend::Splice`]: the upgrade request is forwarded to a connection server chosen
//!   by [`crate::placement`], with the client's key and token, and its answer returned to the
//!   client; after the 101 the gateway copies bytes both ways. It never parses a frame, and
//!   the client keeps one URL (`/v1/ws` on the gateway), which browsers need: a WebSocket
//!   cannot follow a redirect. The cost is two sockets and a copy per connection on the
//!   gateway; a client able to connect to connection servers directly could skip it.

use crate::routes::rate_limited;
use crate::{Gateway, SpliceConfig, WsBackend};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use chat_net::error::{HttpError, error};
use chat_net::http::PeerAddr;
use chat_net::websocket::{check_handshake, switching_protocols};
use chat_proto::ErrorCode;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

/// Bytes of a connection server's refusal passed back to the client.
const REFUSAL_BYTES_MAX: usize = 16 * 1024;

pub async fn upgrade(
    State(gw): State<Gateway>,
    mut request: Request,
) -> Result<Response, HttpError> {
    let (session, token) = chat_conn::endpoint::authenticate(&gw.tokens, &request)?;
    let user = session.user.clone();
    if let Some(PeerAddr(peer)) = request.extensions().get::<PeerAddr>() {
        gw.limits.check_ip(peer.ip()).map_err(rate_limited)?;
    }
    gw.limits.check_user(&user).map_err(rate_limited)?;
    match &gw.ws {
        WsBackend::Local(conn) => conn.upgrade(session, &mut request),
        WsBackend::Splice(placement, config) => {
            let key = check_handshake(request.headers())?;
            for addr in placement.candidates(&user) {
                match splice(&mut request, addr, &key, &token, config).await {
                    Ok(response) => return Ok(response),
                    Err(err) => {
                        tracing::warn!(%addr, %err, "connection server unreachable; trying the next");
                        placement.mark(addr, false);
                    }
                }
            }
            Err(error(
                ErrorCode::Unavailable,
                "no connection server is available; retry later",
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SpliceError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("handshake: {0}")]
    Handshake(String),
}

/// Forwards the upgrade to `addr`. A refusal from the connection server (401, 503...) is
/// passed back to the client as is; only an unreachable server is an error here.
async fn splice(
    request: &mut Request,
    addr: SocketAddr,
    key: &str,
    token: &str,
    config: &SpliceConfig,
) -> Result<Response, SpliceError> {
    let (timeout, write_timeout) = (config.connect_timeout, config.write_timeout);
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(SpliceError::Connect(err.to_string())),
        Err(_) => return Err(SpliceError::Connect("timed out".into())),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = tokio::time::timeout(
        timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| SpliceError::Handshake("timed out".into()))?
    .map_err(|e| SpliceError::Handshake(e.to_string()))?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let forward = hyper::Request::get("/v1/ws")
        .header(header::HOST, addr.to_string())
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, key)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| SpliceError::Handshake(e.to_string()))?;
    let mut answer = tokio::time::timeout(timeout, sender.send_request(forward))
        .await
        .map_err(|_| SpliceError::Handshake("no answer in time".into()))?
        .map_err(|e| SpliceError::Handshake(e.to_string()))?;

    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body = tokio::time::timeout(
            timeout,
            Limited::new(answer.into_body(), REFUSAL_BYTES_MAX).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = status;
        if let Some(content_type) = content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, content_type);
        }
        return Ok(response);
    }
    let accept = answer
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let server_side = hyper::upgrade::on(&mut answer);
    let client_side = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let (client, server) = match (client_side.await, server_side.await) {
            (Ok(client), Ok(server)) => (client, server),
            _ => return,
        };
        copy_both_ways(TokioIo::new(client), TokioIo::new(server), write_timeout).await;
    });
    Ok(switching_protocols(&accept))
}

/// Bytes copied per read, each way. Every spliced WebSocket holds two of these for its whole
/// life, idle or not; chat frames are a few hundred bytes, and a bigger one takes a few more
/// reads. 8 KiB made the buffers 16 of the 33 KiB a cluster held per WebSocket.
const SPLICE_CHUNK_BYTES: usize = 2 * 1024;

/// Copies bytes both ways until both ends are done; no frame is parsed here.
///
/// Unlike `tokio::io::copy_bidirectional`, every write is bounded by `write_timeout`: a
/// client that stops reading would otherwise hold this task, both sockets and the
/// connection server's buffers forever. Once one way ends (its reader closed, its writer
/// shut down), the other is given `write_timeout` to finish, for the close handshake.
async fn copy_both_ways<C, S>(client: C, server: S, write_timeout: std::time::Duration)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let up = copy_one_way(client_read, server_write, write_timeout);
    let down = copy_one_way(server_read, client_write, write_timeout);
    tokio::pin!(up, down);
    let rest = tokio::select! {
        ended = &mut up => if ended.is_ok() { futures::future::Either::Left(down) } else { return },
        ended = &mut down => if ended.is_ok() { futures::future::Either::Right(up) } else { return },
    };
    let _ = tokio::time::timeout(write_timeout, rest).await;
}

/// Copies until `from` ends, then shuts `to` down. Err: a read failed or a write stalled.
async fn copy_one_way<R, W>(
    mut from: R,
    mut to: W,
    write_timeout: std::time::Duration,
) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer stopped reading");
    let mut chunk = vec![0u8; SPLICE_CHUNK_BYTES];
    loop {
        let n = from.read(&mut chunk).await?;
        if n == 0 {
            let _ = tokio::time::timeout(write_timeout, to.shutdown()).await;
            return Ok(());
        }
        let written = async {
            to.write_all(&chunk[..n]).await?;
            to.flush().await
        };
        tokio::time::timeout(write_timeout, written)
            .await
            .map_err(|_| stalled())??;
    }
}
