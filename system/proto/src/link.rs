//! The seams between components.
//!
//! [`AppApi`] is everything an app server offers: the gateway calls it for REST, connection
//! servers call it for WebSocket frames. [`Delivery`] is the way back: an app server hands a
//! durable message to the connection servers holding its recipients. Both are in-process
//! calls in `chat serve`; the same traits are implemented over the network for a cluster.

use crate::error::ApiError;
use crate::model::{ConnAddr, ConvId, Message, Seq};
use crate::rest::{
    ConversationView, CreateConversation, Credentials, HistoryPage, HistoryQuery, Inbox,
    InboxQuery, Session, UserCreated,
};
use futures::future::BoxFuture;
use std::sync::Arc;

/// A `send` frame, with who sent it and from which connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendRequest {
    pub sender: String,
    /// The sending connection: it gets the `sent` ack, and no `message` push of its own message.
    pub origin: ConnAddr,
    pub conv: ConvId,
    pub client_msg_id: String,
    pub body: String,
}

/// The answer to a durable send (or to a repeated client id: the first send's `seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SendAck {
    pub conv: ConvId,
    pub seq: Seq,
    pub ts: u64,
}

/// One page of a `sync`: messages with `seq > after` in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncPage {
    pub messages: Vec<Message>,
    /// The conversation's newest `seq` when the page was read.
    pub last_seq: Seq,
}

/// An app server, seen from the gateway and the connection servers.
#[async_trait::async_trait]
pub trait AppApi: Send + Sync + 'static {
    async fn register(&self, credentials: Credentials) -> Result<UserCreated, ApiError>;
    async fn login(&self, credentials: Credentials) -> Result<Session, ApiError>;
    /// Returns the conversation and whether this call created it.
    async fn create_conversation(
        &self,
        caller: &str,
        request: CreateConversation,
    ) -> Result<(ConversationView, bool), ApiError>;
    async fn history(
        &self,
        caller: &str,
        conv: ConvId,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError>;
    async fn inbox(&self, caller: &str, query: InboxQuery) -> Result<Inbox, ApiError>;

    /// Sends a message. Not `async`: the request is ordered when this is called, before the
    /// future is polled, so sends issued one after another on a connection get increasing
    /// `seq`s even though their acks are awaited concurrently (pipelining).
    fn send(&self, request: SendRequest) -> BoxFuture<'static, Result<SendAck, ApiError>>;
    /// Moves the caller's read cursor forward to `seq` (capped at the newest message).
    async fn read(&self, user: &str, conv: ConvId, seq: Seq) -> Result<(), ApiError>;
    /// Reads up to `limit` messages with `seq > after`.
    async fn sync(
        &self,
        user: &str,
        conv: ConvId,
        after: Seq,
        limit: u32,
    ) -> Result<SyncPage, ApiError>;
}

/// A connection a message is for, and the user it must belong to.
///
/// The user travels with the address so a connection server can refuse a stale registry
/// entry whose connection id now belongs to someone else.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Target {
    pub user: String,
    pub addr: ConnAddr,
}

/// The connection servers, seen from an app server.
pub trait Delivery: Send + Sync + 'static {
    /// Queues `message` for each target connection and returns at once. An app server calls
    /// this in `seq` order per conversation; implementations keep that order per connection.
    /// A target that no longer exists is skipped: the message is durable, and the client's
    /// `sync` catches it up.
    fn deliver(&self, targets: &[Target], message: Arc<Message>);
}
