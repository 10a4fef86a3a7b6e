//! Link frames and their codec.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of JSON. JSON keeps the
//! link debuggable with a packet capture; the cost is small next to a durable write.
//! Requests and responses are the app server's API itself ([`chat_proto::api`]).

use chat_proto::api::{Request, Response};
use chat_proto::deadline::Deadline;
use chat_proto::limits::{
    INBOX_ENTRY_JSON_BYTES_MAX, INBOX_LIMIT_MAX, MESSAGE_JSON_BYTES_MAX, PAGE_BYTES_MAX,
};
use chat_proto::link::{Receipt, Target};
use chat_proto::rest::ConversationView;
use chat_proto::{ApiError, Message, ServerId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame larger than this is a protocol error and drops the connection.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A frame before `Hello` larger than this drops the connection: an unauthenticated peer
/// cannot make the server allocate a full frame.
pub const HELLO_BYTES_MAX: usize = 1024;

// Every answer fits a frame, so a large page cannot drop the link for everyone on it: a
// history or sync page is cut at PAGE_BYTES_MAX of JSON (plus the message that crosses it),
// an inbox page holds at most INBOX_LIMIT_MAX entries of bounded size. 64 KiB is room for
// the envelope. An answer over the limit anyway (a bug) fails that one request.
const _: () = assert!(PAGE_BYTES_MAX + MESSAGE_JSON_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX);
const _: () =
    assert!(INBOX_LIMIT_MAX as usize * INBOX_ENTRY_JSON_BYTES_MAX + 64 * 1024 <= FRAME_BYTES_MAX);

/// Version of the link protocol, checked in `Hello`.
pub const LINK_VERSION: u32 = 2;

/// Who opened a link connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    /// A connection server: the app server routes deliveries for `ServerId` over this connection.
    Conn(ServerId),
    /// A gateway: requests only.
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum LinkFrame {
    /// The first frame, from the client ([`crate::auth`]).
    Hello {
        version: u32,
        peer: Peer,
        nonce: String,
    },
    /// The server's answer to `Hello`: its nonce and its proof.
    Challenge {
        nonce: String,
        proof: String,
    },
    /// The client's proof; the link is up once the server has checked it.
    Proof {
        proof: String,
    },
    Request {
        id: u64,
        request: Request,
    },
    Response {
        id: u64,
        result: Result<Response, ApiError>,
    },
    Deliver {
        targets: Vec<Target>,
        message: Message,
    },
    /// A conversation created or changed, for its members' connections.
    Announce {
        targets: Vec<Target>,
        conversation: ConversationView,
    },
    /// A member's read cursor moved, for the connections it concerns.
    Receipt {
        targets: Vec<Target>,
        receipt: Receipt,
    },
    /// `user` is typing in `conv`, for the other members' connections.
    Typing {
        targets: Vec<Target>,
        conv: chat_proto::ConvId,
        user: String,
    },
    Ping,
    Pong,
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// The frames of one connection, each read within `idle_timeout` of the previous one: the
/// peer's heartbeats keep a healthy connection from falling silent that long, and a partition
/// raises no error, so silence is how one shows.
pub struct Frames<R> {
    reader: R,
    idle_timeout: Duration,
    // One timer for the whole connection rather than one per frame.
    idle: Deadline<tokio::time::Instant, tokio::time::Sleep>,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    pub fn new(reader: R, idle_timeout: Duration) -> Frames<R> {
        Frames {
            reader,
            idle_timeout,
            idle: Deadline::new(tokio::time::Instant::now, tokio::time::sleep_until),
        }
    }

    /// The next frame; `None` once the connection failed or fell silent (logged, naming
    /// `peer`).
    pub async fn next(&mut self, peer: &(dyn std::fmt::Debug + Sync)) -> Option<LinkFrame> {
        match self
            .idle
            .within(self.idle_timeout, read_frame(&mut self.reader))
            .await
        {
            Ok(Ok(frame)) => Some(frame),
            Ok(Err(err)) => {
                tracing::debug!(?peer, error = %err, "link read failed");
                None
            }
            Err(_) => {
                tracing::warn!(?peer, "link silent past the idle timeout");
                None
            }
        }
    }
}

pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<LinkFrame, CodecError> {
    read_frame_within(reader, FRAME_BYTES_MAX).await
}

/// Reads a frame of at most `bytes_max` bytes.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    reader: &mut R,
    bytes_max: usize,
) -> Result<LinkFrame, CodecError> {
    let len = reader.read_u32().await? as usize;
    if len > bytes_max {
        return Err(CodecError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    reader.read_exact(&mut bytes).await?;
    serde_json::from_slice(&bytes).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Buffers one frame; the caller flushes (madsim's streams send nothing before a flush).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &LinkFrame,
) -> Result<(), CodecError> {
    let bytes = serde_json::to_vec(frame).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    writer.write_u32(bytes.len() as u32).await?;
    writer.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let frames = vec![
            LinkFrame::Hello {
                version: LINK_VERSION,
                peer: Peer::Conn(3),
                nonce: "00".repeat(16),
            },
            LinkFrame::Request {
                id: 7,
                request: Request::Read {
                    user: "bob".into(),
                    conv: 1,
                    seq: 2,
                },
            },
            LinkFrame::Response {
                id: 7,
                result: Err(ApiError::unknown_conversation()),
            },
            LinkFrame::Response {
                id: 8,
                result: Ok(Response::Done),
            },
            LinkFrame::Ping,
        ];
        let mut buf = Vec::new();
        for f in &frames {
            write_frame(&mut buf, f).await.unwrap();
        }
        let mut reader = &buf[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut reader).await.unwrap(), f);
        }
        let mut huge = Vec::new();
        huge.extend_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(CodecError::TooLarge(_))
        ));
        let mut garbage = Vec::new();
        garbage.extend_from_slice(&3u32.to_be_bytes());
        garbage.extend_from_slice(b"{{{");
        assert!(matches!(
            read_frame(&mut &garbage[..]).await,
            Err(CodecError::Malformed(_))
        ));
    }
}
