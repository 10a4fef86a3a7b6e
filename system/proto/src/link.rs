//! The way back from app servers to connection servers.
//!
//! [`Delivery`] is how an app server hands a durable message to the connection servers
//! holding its recipients (the way there is [`crate::api::AppApi`]). Both are in-process
//! calls in `chat serve`; the link implements them over the network for a cluster.

use crate::model::{ConnAddr, Message};
use crate::rest::ConversationView;
use std::sync::Arc;

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

    /// Queues a `conversation` frame (a conversation created or changed) for each target
    /// connection, like [`Delivery::deliver`] but unordered with messages.
    fn announce(&self, targets: &[Target], conversation: Arc<ConversationView>);

    /// Queues a `receipt` frame (`user` read `conv` up to `seq`) for each target
    /// connection, unordered with messages.
    fn receipt(&self, targets: &[Target], receipt: Receipt);

    /// Queues a `typing` frame (`user` is typing in `conv`) for each target connection.
    fn typing(&self, targets: &[Target], conv: crate::ConvId, user: &str);
}

/// A member's read cursor moved: what a `receipt` frame says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub conv: crate::ConvId,
    pub user: String,
    pub seq: crate::Seq,
}
