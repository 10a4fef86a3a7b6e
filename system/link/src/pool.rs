//! [`AppPool`]: several app servers behind one [`AppApi`].
//!
//! Rendezvous (highest-random-weight) hashing picks an app server per key: a conversation's
//! sends go to one app server while it is up, so that server's sequencer batches them and
//! cross-server conflicts on the conversation's `head` key stay rare; a user's other
//! requests go to one server too. When the first choice is disconnected the next one in
//! that key's order is used, and only the keys of a lost server move.

use crate::LinkClient;
use chat_proto::link::{AppApi, SendAck, SendRequest, SyncPage};
use chat_proto::rest::*;
use chat_proto::{ApiError, ConvId, Seq};
use futures::future::BoxFuture;

#[derive(Clone)]
pub struct AppPool {
    clients: Vec<LinkClient>,
}

impl AppPool {
    pub fn new(clients: Vec<LinkClient>) -> AppPool {
        assert!(!clients.is_empty(), "an app pool needs at least one app server");
        AppPool { clients }
    }

    pub fn clients(&self) -> &[LinkClient] {
        &self.clients
    }

    /// The app server for `key`: the connected one with the highest weight.
    fn pick(&self, key: u64) -> &LinkClient {
        let weight = |c: &LinkClient| fnv1a(key, c.addr().to_string().as_bytes());
        let connected = self.clients.iter().filter(|c| c.is_connected()).max_by_key(|c| weight(c));
        // None connected: ask the first choice anyway; it answers `unavailable` at once.
        connected.unwrap_or_else(|| self.clients.iter().max_by_key(|c| weight(c)).unwrap_or(&self.clients[0]))
    }

    fn for_user(&self, user: &str) -> &LinkClient {
        self.pick(fnv1a(0, user.as_bytes()))
    }

    fn for_conv(&self, conv: ConvId) -> &LinkClient {
        self.pick(fnv1a(1, &conv.to_be_bytes()))
    }
}

/// FNV-1a, 64-bit: stable across processes and builds (std's hasher promises neither), so
/// every gateway and connection server ranks app servers the same way.
pub fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[async_trait::async_trait]
impl AppApi for AppPool {
    async fn register(&self, credentials: Credentials) -> Result<UserCreated, ApiError> {
        self.for_user(&credentials.username).clone().register(credentials).await
    }

    async fn login(&self, credentials: Credentials) -> Result<Session, ApiError> {
        self.for_user(&credentials.username).clone().login(credentials).await
    }

    async fn create_conversation(&self, caller: &str, request: CreateConversation) -> Result<(ConversationView, bool), ApiError> {
        self.for_user(caller).create_conversation(caller, request).await
    }

    async fn history(&self, caller: &str, conv: ConvId, query: HistoryQuery) -> Result<HistoryPage, ApiError> {
        self.for_user(caller).history(caller, conv, query).await
    }

    async fn inbox(&self, caller: &str, query: InboxQuery) -> Result<Inbox, ApiError> {
        self.for_user(caller).inbox(caller, query).await
    }

    fn send(&self, request: SendRequest) -> BoxFuture<'static, Result<SendAck, ApiError>> {
        self.for_conv(request.conv).send(request)
    }

    async fn read(&self, user: &str, conv: ConvId, seq: Seq) -> Result<(), ApiError> {
        self.for_user(user).read(user, conv, seq).await
    }

    async fn sync(&self, user: &str, conv: ConvId, after: Seq, limit: u32) -> Result<SyncPage, ApiError> {
        self.for_user(user).sync(user, conv, after, limit).await
    }
}
