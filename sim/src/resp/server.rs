//! The model's accept loop and connections, on the runtime alias (real sockets normally,
//! simulated ones under madsim).

use super::frame::{ProtocolError, REQUEST_BYTES_MAX, Replies, parse_request};
use super::state::RespState;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Client connections served at once; more wait in the listener's backlog.
pub const CONNECTIONS_MAX: usize = 1024;
/// Bytes read from a socket at a time.
const READ_BYTES: usize = 16 * 1024;
/// Waits after a failed accept, doubling up to the max (never a tight loop).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A Redis model server: the commands of `chat_registry::redis` over RESP2.
#[derive(Debug)]
pub struct RespServer;

impl RespServer {
    /// Serves `listener` until this future is dropped (or its node killed). Each connection
    /// runs in a task of its own; all share `state`.
    pub async fn serve(listener: TcpListener, state: Arc<RespState>) {
        let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return; // The semaphore is never closed.
            };
            match listener.accept().await {
                Ok((stream, _peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    let state = state.clone();
                    tokio::spawn(async move {
                        state.clients.fetch_add(1, Ordering::Relaxed);
                        if let Err(error) = serve_connection(stream, &state).await {
                            tracing::debug!(%error, "resp model: connection ended");
                        }
                        state.clients.fetch_sub(1, Ordering::Relaxed);
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: wait, then accept again.
                    tracing::warn!(%error, ?backoff, "resp model: accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Answers requests in order until the client closes or sends garbage. All the requests a
/// read brought in are answered with one write and one flush (a pipeline's replies leave
/// together; madsim's sockets send nothing before a flush).
async fn serve_connection(mut stream: TcpStream, state: &RespState) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut read = vec![0u8; READ_BYTES];
    let mut replies = Replies::default();
    loop {
        let mut used = 0;
        let failure = loop {
            match parse_request(&buf[used..]) {
                Ok(Some((args, len))) => {
                    used += len;
                    state.execute(&args, &mut replies);
                }
                Ok(None) => break None,
                Err(ProtocolError(reason)) => break Some(reason),
            }
        };
        buf.drain(..used);
        if let Some(reason) = &failure {
            replies.error(&format!("ERR Protocol error: {reason}"));
        }
        if !replies.out.is_empty() {
            stream.write_all(&replies.out).await?;
            stream.flush().await?;
            replies.out.clear();
        }
        if failure.is_some() {
            return Ok(());
        }
        if buf.len() > REQUEST_BYTES_MAX {
            // parse_request refuses requests over the cap before this; kept as a backstop.
            stream
                .write_all(b"-ERR Protocol error: request too big\r\n")
                .await?;
            stream.flush().await?;
            return Ok(());
        }
        let n = stream.read(&mut read).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&read[..n]);
    }
}
