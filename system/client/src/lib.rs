//! Client library: REST and WebSocket, usable from tests, the CLI and the simulator.
//!
//! # Layout
//! - [`url`]: the server's base URL ([`BaseUrl`]).
//! - [`rest`]: [`Client`], the REST calls, a raw request for contract tests, and the
//!   WebSocket upgrade.
//! - [`ws`]: [`WsConnection`], JSON frames over one WebSocket ([`WsEvent`]).
//! - [`tracker`]: [`Tracker`], the client side of ordering and idempotency without I/O:
//!   last seen `seq` per conversation, gap detection, pending sends matched to their acks.
//! - [`live`]: [`LiveSession`], a tracker on a WebSocket with heartbeats and reconnection.
//! - [`error`]: the one error type, [`ClientError`].
//!
//! # Runtime
//! Everything runs on the `tokio` alias (madsim-tokio): real tokio normally, the simulator
//! under `--cfg madsim`. The client connects its own `TcpStream`s, drives hyper's HTTP/1
//! client connection on an alias-spawned task and uses `tokio_tungstenite::client_async`;
//! it never touches a pooled client, an executor or a timer that would call the real tokio.
//! Every wait on the network is bounded by the client's timeout (10 s by default).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), chat_client::ClientError> {
//! use chat_client::Client;
//! let anon = Client::new("http://127.0.0.1:8080")?;
//! anon.register("alice", "correct horse").await?;
//! let session = anon.login("alice", "correct horse").await?;
//! let alice = anon.with_token(session.token);
//! let (conv, _created) = alice.create_conversation(["bob"], None).await?;
//! let mut live = chat_client::LiveSession::connect(alice.clone()).await?;
//! live.follow(conv.conv_id, 0);
//! live.send_message(conv.conv_id, "hi bob").await?;
//! let events = live.next_events().await?;
//! # let _ = events; Ok(()) }
//! ```

pub mod error;
mod io;
pub mod live;
pub mod rest;
pub mod tracker;
pub mod url;
pub mod ws;

pub use chat_proto::api::ConvChange;
pub use chat_proto::frame::{ClientFrame, ServerFrame};
pub use chat_proto::rest::{
    ConvChanged, ConversationView, HistoryPage, Inbox, InboxEntry, MessageView, ReadCursor, Reads,
    Session, Settings, SettingsUpdate, UserCreated,
};
pub use chat_proto::{ApiError, ConvEvent, ConvId, ConvKind, ErrorCode, Message, Role, Seq};
pub use error::ClientError;
pub use live::LiveSession;
pub use rest::{Client, RawResponse, TIMEOUT_DEFAULT};
pub use tracker::{LiveEvent, Step, Tracker};
pub use url::BaseUrl;
pub use ws::{WsConnection, WsEvent, WsReceiver, WsSender};
