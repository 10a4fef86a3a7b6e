//! WebSocket frames of the v1 protocol: JSON text, one object per frame, tagged by `type`.
//!
//! Parsing is two steps, like mini-redis's `check` then `parse`: the text must be a JSON
//! object with a string `type` (else `bad_frame`), then the variant's fields are checked.
//! Whatever a peer sent, parsing returns an error value, never panics.

use crate::error::{ApiError, ErrorCode};
use crate::limits::BODY_BYTES_MAX;
use crate::model::{ConvEvent, ConvId, Message, Seq, is_valid_client_msg_id};
use crate::rest::ConversationView;
use serde::{Deserialize, Serialize};

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Send {
        id: String,
        conv: ConvId,
        body: String,
    },
    /// Replaces the body of the sender's own message at `seq`; acked with `sent` like a
    /// send (the edit takes the next `seq`).
    Edit {
        id: String,
        conv: ConvId,
        seq: Seq,
        body: String,
    },
    /// Deletes the sender's own message at `seq`: its body is gone; acked with `sent`.
    Delete {
        id: String,
        conv: ConvId,
        seq: Seq,
    },
    Read {
        conv: ConvId,
        seq: Seq,
    },
    Sync {
        conv: ConvId,
        after: Seq,
    },
    /// The user is typing in `conv`: the conversation's other members who are online see it
    /// for [`crate::limits::TYPING_SHOWN_MS`]. Send it again while typing goes on; the
    /// server passes on at most one per [`crate::limits::TYPING_INTERVAL_MS`].
    Typing {
        conv: ConvId,
    },
    Ping,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Sent {
        id: String,
        conv: ConvId,
        seq: Seq,
        ts: u64,
    },
    Message {
        conv: ConvId,
        seq: Seq,
        sender: String,
        body: String,
        id: String,
        ts: u64,
        /// A change to the conversation (members, roles, title, an edit or a delete) in its
        /// `seq` stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<ConvEvent>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        edited: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
    },
    /// A conversation the user is (or was just removed from) was created or changed: its
    /// current state. Not ordered with messages; the change itself is also an event in the
    /// conversation's `seq` stream.
    Conversation {
        conversation: ConversationView,
    },
    Synced {
        conv: ConvId,
        seq: Seq,
    },
    /// `user` has read `conv` up to `seq`: to the other members (unless `user` turned
    /// receipts off) and to `user`'s own devices (read state follows a user across devices).
    /// Coalesced: a burst of reads is one receipt, of the newest.
    Receipt {
        conv: ConvId,
        user: String,
        seq: Seq,
    },
    /// `user` is typing in `conv`: show it for `expires_in_ms` unless another comes. Never
    /// stored, never synced.
    Typing {
        conv: ConvId,
        user: String,
        expires_in_ms: u64,
    },
    Pong,
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// For an error answering a `sync` or a `read`: which of the two, and (`conv`) of
        /// what conversation, so a client knows that sync's `synced` will never come.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<FrameOp>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<ConvId>,
        /// With `rate_limited`: how long to wait before sending this frame again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// The client frames whose errors carry no `id`, named in their `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameOp {
    Sync,
    Read,
    Typing,
}

impl ServerFrame {
    pub fn message(m: &Message) -> Self {
        ServerFrame::Message {
            conv: m.conv,
            seq: m.seq,
            sender: m.sender.clone(),
            body: m.body.clone(),
            id: m.client_msg_id.clone(),
            ts: m.ts,
            event: m.event.clone(),
            edited: m.edited,
            deleted: m.deleted,
        }
    }

    pub fn error(err: &ApiError, id: Option<String>) -> Self {
        ServerFrame::Error {
            code: err.code,
            message: err.message.clone(),
            id,
            op: None,
            conv: None,
            retry_after_ms: err.retry_after_ms,
        }
    }

    /// The error answering a `sync` or a `read` of `conv`.
    pub fn error_for(err: &ApiError, op: FrameOp, conv: ConvId) -> Self {
        ServerFrame::Error {
            code: err.code,
            message: err.message.clone(),
            id: None,
            op: Some(op),
            conv: Some(conv),
            retry_after_ms: err.retry_after_ms,
        }
    }

    /// A frame refused by the sender's frame rate limit: `id` for a `send`, `op` and `conv`
    /// for a `read` or `sync`.
    pub fn rate_limited(
        wait: std::time::Duration,
        id: Option<String>,
        op: Option<FrameOp>,
        conv: Option<ConvId>,
    ) -> Self {
        let retry_after_ms = crate::error::retry_after_ms(wait);
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: format!("too many frames; send this again in {retry_after_ms} ms"),
            id,
            op,
            conv,
            retry_after_ms: Some(retry_after_ms),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// Why a client frame was rejected; answered as an `error` frame, the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `id` when it had a readable one, so the client can match the error to a send.
    pub id: Option<String>,
}

impl FrameError {
    fn bad(message: impl Into<String>, id: Option<String>) -> Self {
        FrameError {
            code: ErrorCode::BadFrame,
            message: message.into(),
            id,
        }
    }

    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            id: self.id.clone(),
            op: None,
            conv: None,
            retry_after_ms: None,
        }
    }
}

impl ClientFrame {
    /// Parses and validates one text frame.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| FrameError::bad(format!("not JSON: {e}"), None))?;
        let object = value
            .as_object()
            .ok_or_else(|| FrameError::bad("frame must be a JSON object", None))?;
        let id = object.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let Some(kind) = object.get("type").and_then(|v| v.as_str()) else {
            return Err(FrameError::bad("missing string field `type`", id));
        };
        if !matches!(
            kind,
            "send" | "edit" | "delete" | "read" | "sync" | "typing" | "ping"
        ) {
            return Err(FrameError::bad(format!("unknown frame type `{kind}`"), id));
        }
        let kind = kind.to_owned();
        let frame: ClientFrame = serde_json::from_value(value)
            .map_err(|e| FrameError::bad(format!("invalid `{kind}` frame: {e}"), id.clone()))?;
        frame.validate(id)?;
        Ok(frame)
    }

    fn validate(&self, id: Option<String>) -> Result<(), FrameError> {
        if let ClientFrame::Delete { id: msg_id, .. } = self
            && !is_valid_client_msg_id(msg_id)
        {
            return Err(FrameError::bad(
                "`id` must be 1-64 characters of A-Za-z0-9_-",
                id,
            ));
        }
        if let ClientFrame::Send {
            id: msg_id, body, ..
        }
        | ClientFrame::Edit {
            id: msg_id, body, ..
        } = self
        {
            if !is_valid_client_msg_id(msg_id) {
                return Err(FrameError::bad(
                    "`id` must be 1-64 characters of A-Za-z0-9_-",
                    id,
                ));
            }
            if body.is_empty() {
                return Err(FrameError::bad("`body` must not be empty", id));
            }
            if body.len() > BODY_BYTES_MAX {
                return Err(FrameError {
                    code: ErrorCode::BodyTooLarge,
                    message: format!(
                        "`body` is {} bytes, at most {BODY_BYTES_MAX} are allowed",
                        body.len()
                    ),
                    id,
                });
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_frame() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"send","id":"m1","conv":7,"body":"hi"}"#),
            Ok(ClientFrame::Send {
                id: "m1".into(),
                conv: 7,
                body: "hi".into()
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"read","conv":7,"seq":3}"#),
            Ok(ClientFrame::Read { conv: 7, seq: 3 })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"sync","conv":7,"after":0}"#),
            Ok(ClientFrame::Sync { conv: 7, after: 0 })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
    }

    #[test]
    fn rejects_bad_frames_with_their_id() {
        let cases = [
            ("nope", None),
            ("[1,2]", None),
            (r#"{"id":"a"}"#, Some("a")),
            (r#"{"type":"shout","id":"a"}"#, Some("a")),
            (r#"{"type":"send","id":"a","conv":1}"#, Some("a")),
            (
                r#"{"type":"send","id":"a","conv":-1,"body":"x"}"#,
                Some("a"),
            ),
            (
                r#"{"type":"send","id":"a b","conv":1,"body":"x"}"#,
                Some("a b"),
            ),
            (r#"{"type":"send","id":"a","conv":1,"body":""}"#, Some("a")),
            (r#"{"type":7}"#, None),
        ];
        for (text, id) in cases {
            let err = ClientFrame::parse(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadFrame, "{text}");
            assert_eq!(err.id.as_deref(), id, "{text}");
        }
    }

    #[test]
    fn body_limit_is_in_bytes() {
        let ok = format!(
            r#"{{"type":"send","id":"a","conv":1,"body":"{}"}}"#,
            "é".repeat(BODY_BYTES_MAX / 2)
        );
        assert!(ClientFrame::parse(&ok).is_ok());
        let big = format!(
            r#"{{"type":"send","id":"a","conv":1,"body":"{}x"}}"#,
            "é".repeat(BODY_BYTES_MAX / 2)
        );
        let err = ClientFrame::parse(&big).unwrap_err();
        assert_eq!(err.code, ErrorCode::BodyTooLarge);
        assert_eq!(err.id.as_deref(), Some("a"));
    }

    #[test]
    fn server_frames_match_the_contract() {
        let f = ServerFrame::Sent {
            id: "m1".into(),
            conv: 1,
            seq: 2,
            ts: 3,
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"sent","id":"m1","conv":1,"seq":2,"ts":3}"#
        );
        let e = ServerFrame::error(&ApiError::new(ErrorCode::BadFrame, "x"), None);
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"bad_frame","message":"x"}"#
        );
        let e = ServerFrame::error_for(&ApiError::unavailable("store"), FrameOp::Sync, 7);
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","code":"unavailable","message":"store","op":"sync","conv":7}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
    }
}
