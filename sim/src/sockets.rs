//! Send windows for simulated sockets.
//!
//! madsim's TCP never fills up: a write succeeds however long the peer has not read. Real
//! sockets have buffers, and a client that stops reading makes the server's writes wait,
//! which is where a server's slow-consumer handling (1013, write timeouts, bounded queues)
//! is exercised. So the listeners of gateways, connection servers and `chat serve` are
//! wrapped in a [`ShapedListener`]: while the workload has a client stop reading
//! ([`Stalls::stop_reading`]), the server may write it at most a window of bytes more (the
//! socket buffers of both ends), then its writes wait until the client reads again.
//!
//! Only the accepted side is shaped, keyed by the client's address: a gateway's splice to a
//! connection server is not, so a stalled client behind a gateway stalls the gateway (whose
//! splice must give up on it), not the connection server.

use chat_net::accept::Listener;
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Which clients have stopped reading, shared by the servers' listeners and the workload.
#[derive(Default)]
pub struct Stalls {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    stalled: HashMap<SocketAddr, Stall>,
    /// Stalled clients whose server side has been dropped (the server gave up on them).
    dropped: HashSet<SocketAddr>,
}

struct Stall {
    /// What the server may still write before its writes wait.
    window_bytes: usize,
    wakers: Vec<Waker>,
    /// When a server write first had to wait (simulated time), for the trace.
    blocked_at: Option<std::time::Instant>,
}

impl Stalls {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The client at `client` stops reading: the server may write `window_bytes` more.
    pub fn stop_reading(&self, client: SocketAddr, window_bytes: usize) {
        self.lock().stalled.insert(
            client,
            Stall {
                window_bytes,
                wakers: Vec::new(),
                blocked_at: None,
            },
        );
    }

    /// The client reads again: writes waiting on it go on.
    pub fn resume(&self, client: SocketAddr) {
        let stall = self.lock().stalled.remove(&client);
        for waker in stall.into_iter().flat_map(|s| s.wakers) {
            waker.wake();
        }
    }

    /// When the server's writes to a stalled client first had to wait.
    pub fn blocked_at(&self, client: SocketAddr) -> Option<std::time::Instant> {
        self.lock().stalled.get(&client).and_then(|s| s.blocked_at)
    }

    /// Whether the server dropped its side of a stalled client's socket.
    pub fn dropped(&self, client: SocketAddr) -> bool {
        self.lock().dropped.contains(&client)
    }
}

/// A listener whose accepted sockets honour [`Stalls`].
pub struct ShapedListener {
    listener: TcpListener,
    stalls: Arc<Stalls>,
}

impl ShapedListener {
    pub fn new(listener: TcpListener, stalls: Arc<Stalls>) -> ShapedListener {
        ShapedListener { listener, stalls }
    }
}

impl Listener for ShapedListener {
    type Io = Shaped;

    async fn accept(&mut self) -> io::Result<(Shaped, SocketAddr)> {
        let (io, peer) = Listener::accept(&mut self.listener).await?;
        Ok((
            Shaped {
                io,
                peer,
                stalls: self.stalls.clone(),
            },
            peer,
        ))
    }
}

/// The server's side of one accepted socket.
pub struct Shaped {
    io: TcpStream,
    peer: SocketAddr,
    stalls: Arc<Stalls>,
}

impl Drop for Shaped {
    fn drop(&mut self) {
        let mut inner = self.stalls.lock();
        if inner.stalled.contains_key(&self.peer) {
            inner.dropped.insert(self.peer);
        }
    }
}

impl AsyncRead for Shaped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Shaped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let allowed = {
            let mut inner = self.stalls.lock();
            match inner.stalled.get_mut(&self.peer) {
                None => buf.len(),
                Some(stall) if stall.window_bytes == 0 => {
                    stall.blocked_at.get_or_insert_with(std::time::Instant::now);
                    if !stall.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                        stall.wakers.push(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Some(stall) => {
                    let n = buf.len().min(stall.window_bytes);
                    stall.window_bytes -= n;
                    n
                }
            }
        };
        Pin::new(&mut self.io).poll_write(cx, &buf[..allowed])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
