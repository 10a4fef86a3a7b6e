//! [`WsConnection`]: one WebSocket to the server, JSON frames in and out, every wait bounded.

use crate::error::{ClientError, error_from_answer};
use crate::io::QuietFlush;
use crate::url::BaseUrl;
use chat_proto::deadline::Deadline;
use chat_proto::frame::{ClientFrame, ServerFrame};
use chat_proto::limits::FRAME_BYTES_MAX;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http::HeaderValue;
use http::header::HeaderName;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The largest message the client accepts from the server: a frame is at most 64 KiB, plus
/// slack so a server that is slightly generous is still readable.
pub const INCOMING_MESSAGE_BYTES_MAX: usize = FRAME_BYTES_MAX + 16 * 1024;
/// The read buffer of one connection (and what tungstenite zero-fills before each read);
/// small, as load generators open thousands and frames are mostly under 1 KiB.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// What the server sent on a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A JSON text frame of the protocol.
    Frame(ServerFrame),
    /// The answer to [`WsConnection::send_ping`] (a WebSocket-level pong, not the JSON `pong`).
    Pong(Vec<u8>),
    /// The server closed the connection: 1009 for a frame over 64 KiB, 1013 when the connection
    /// could not keep up with its pushes (reconnect and `sync`), 4001 when the session's token
    /// expired (log in again, then reconnect and `sync`). `code` is `None` when the
    /// connection ended without a close frame. Later calls return [`ClientError::Closed`].
    Closed { code: Option<u16>, reason: String },
}

type Stream = WebSocketStream<QuietFlush<TcpStream>>;

/// The WebSocket configuration of every client connection.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(INCOMING_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(INCOMING_MESSAGE_BYTES_MAX))
}

/// One WebSocket connection. Made by [`crate::Client::connect_ws`].
///
/// `recv` is cancel-safe (a frame is never half-read), so it can sit in `select!` next to
/// other work. Use [`WsConnection::split`] to send and receive from different tasks.
pub struct WsConnection {
    sender: WsSender,
    receiver: WsReceiver,
    local_addr: Option<std::net::SocketAddr>,
}

/// The sending half of a [`WsConnection`].
pub struct WsSender {
    sink: SplitSink<Stream, Message>,
    timeout: Duration,
    closed: bool,
}

/// The receiving half of a [`WsConnection`].
pub struct WsReceiver {
    stream: SplitStream<Stream>,
    timeout: Duration,
    /// One timer for every `recv`'s bound rather than one per call.
    deadline: Deadline<tokio::time::Instant, tokio::time::Sleep>,
    /// The close seen, returned as an error by every later `recv`.
    closed: Option<(Option<u16>, String)>,
}

impl WsConnection {
    pub(crate) async fn handshake(
        stream: TcpStream,
        base: &BaseUrl,
        path_and_query: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<WsConnection, ClientError> {
        let local_addr = stream.local_addr().ok();
        let uri = format!("ws://{}{}", base.authority(), path_and_query);
        let mut request = uri
            .into_client_request()
            .map_err(|e| ClientError::Http(format!("bad WebSocket request: {e}")))?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| ClientError::Http(format!("bad header name `{name}`: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| ClientError::Http(format!("bad header value: {e}")))?;
            request.headers_mut().insert(name, value);
        }
        let handshake = tokio_tungstenite::client_async_with_config(
            request,
            QuietFlush::new(stream),
            Some(ws_config()),
        );
        let (stream, _response) = match tokio::time::timeout(timeout, handshake).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    op: "websocket handshake",
                    after: timeout,
                });
            }
            Ok(Err(WsError::Http(response))) => {
                let status = response.status().as_u16();
                return Err(error_from_answer(
                    status,
                    response.body().as_deref().unwrap_or_default(),
                ));
            }
            Ok(Err(e)) => return Err(ws_error(e)),
            Ok(Ok(done)) => done,
        };
        let (sink, stream) = stream.split();
        Ok(WsConnection {
            sender: WsSender {
                sink,
                timeout,
                closed: false,
            },
            receiver: WsReceiver {
                stream,
                timeout,
                deadline: Deadline::new(tokio::time::Instant::now, tokio::time::sleep_until),
                closed: None,
            },
            local_addr,
        })
    }

    /// This end's socket address: what the server sees as the peer (to find the connection
    /// in its logs; the simulator uses it to stall the socket).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local_addr
    }

    /// Sends one protocol frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.sender.send(frame).await
    }

    /// Sends any text, for contract tests (malformed JSON, unknown types...).
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.sender.send_text(text).await
    }

    /// Sends a binary message (the server answers `bad_frame`).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.sender.send_binary(bytes).await
    }

    /// Sends a WebSocket ping; its pong comes back as [`WsEvent::Pong`].
    pub async fn send_ping(&mut self, payload: Vec<u8>) -> Result<(), ClientError> {
        self.sender.send_ping(payload).await
    }

    /// The next event, waiting at most the client's timeout.
    pub async fn recv(&mut self) -> Result<WsEvent, ClientError> {
        self.receiver.recv().await
    }

    /// The next event, waiting at most `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<WsEvent, ClientError> {
        self.receiver.recv_timeout(timeout).await
    }

    /// Closes cleanly (code 1000) and waits, within the timeout, for the server's close.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.sender.close().await?;
        let deadline = self.receiver.timeout;
        let drain = async {
            loop {
                match self.receiver.stream.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => {}
                }
            }
        };
        tokio::time::timeout(deadline, drain)
            .await
            .map_err(|_| ClientError::Timeout {
                op: "websocket close",
                after: deadline,
            })
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
    }
}

impl WsSender {
    /// Sends one protocol frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.send_message(Message::text(frame.to_json())).await
    }

    /// Sends any text.
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        self.send_message(Message::text(text)).await
    }

    /// Sends a binary message.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.send_message(Message::binary(bytes)).await
    }

    /// Sends a WebSocket ping (payload at most 125 bytes).
    pub async fn send_ping(&mut self, payload: Vec<u8>) -> Result<(), ClientError> {
        self.send_message(Message::Ping(payload.into())).await
    }

    /// Sends a close frame with code 1000.
    pub async fn close(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let result = self.send_message(Message::Close(Some(frame))).await;
        self.closed = true;
        result
    }

    async fn send_message(&mut self, message: Message) -> Result<(), ClientError> {
        if self.closed {
            return Err(ClientError::Closed {
                code: None,
                reason: "closed by the client".into(),
            });
        }
        // `send` writes and flushes: under the simulator bytes leave only on flush.
        match tokio::time::timeout(self.timeout, self.sink.send(message)).await {
            Err(_) => Err(ClientError::Timeout {
                op: "websocket send",
                after: self.timeout,
            }),
            Ok(result) => result.map_err(ws_error),
        }
    }
}

impl WsReceiver {
    /// The next event, waiting at most the client's timeout.
    pub async fn recv(&mut self) -> Result<WsEvent, ClientError> {
        self.recv_timeout(self.timeout).await
    }

    /// The next event, waiting at most `timeout`. Cancel-safe.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<WsEvent, ClientError> {
        if let Some((code, reason)) = &self.closed {
            return Err(ClientError::Closed {
                code: *code,
                reason: reason.clone(),
            });
        }
        match self
            .deadline
            .within(timeout, Self::next_event(&mut self.stream))
            .await
        {
            Err(_) => Err(ClientError::Timeout {
                op: "websocket recv",
                after: timeout,
            }),
            Ok(Ok(WsEvent::Closed { code, reason })) => {
                self.closed = Some((code, reason.clone()));
                Ok(WsEvent::Closed { code, reason })
            }
            Ok(other) => other,
        }
    }

    async fn next_event(stream: &mut SplitStream<Stream>) -> Result<WsEvent, ClientError> {
        loop {
            let message = match stream.next().await {
                None => return Ok(WsEvent::Closed { code: None, reason: "connection ended".into() }),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Ok(WsEvent::Closed { code: None, reason: "connection ended".into() });
                }
                Some(Err(WsError::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake))) => {
                    return Ok(WsEvent::Closed { code: None, reason: "connection reset without a close frame".into() });
                }
                Some(Err(e)) => return Err(ws_error(e)),
                Some(Ok(message)) => message,
            };
            return match message {
                Message::Text(text) => serde_json::from_str::<ServerFrame>(text.as_str())
                    .map(WsEvent::Frame)
                    .map_err(|e| ClientError::Decode(format!("{e}: {}", truncate(text.as_str())))),
                Message::Binary(bytes) => Err(ClientError::Decode(format!(
                    "unexpected binary message of {} bytes",
                    bytes.len()
                ))),
                Message::Pong(payload) => Ok(WsEvent::Pong(payload.to_vec())),
                Message::Close(frame) => Ok(match frame {
                    Some(frame) => WsEvent::Closed {
                        code: Some(u16::from(frame.code)),
                        reason: frame.reason.to_string(),
                    },
                    None => WsEvent::Closed {
                        code: None,
                        reason: String::new(),
                    },
                }),
                // tungstenite answers pings by itself; raw frames are never returned by reads.
                Message::Ping(_) | Message::Frame(_) => continue,
            };
        }
    }
}

fn ws_error(e: WsError) -> ClientError {
    match e {
        WsError::Io(e) => ClientError::Io(e),
        WsError::ConnectionClosed | WsError::AlreadyClosed => ClientError::Closed {
            code: None,
            reason: e.to_string(),
        },
        e => ClientError::WebSocket(e.to_string()),
    }
}

/// The start of a text, for error messages.
fn truncate(text: &str) -> String {
    const CHARS_MAX: usize = 200;
    let mut out: String = text.chars().take(CHARS_MAX).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
