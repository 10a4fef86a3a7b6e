//! [`AppPool`]: several app servers behind one [`AppApi`].
//!
//! Rendezvous (highest-random-weight) hashing picks an app server per key: a conversation's
//! sends go to one app server while it is up, so that server's sequencer batches them and
//! cross-server conflicts on the conversation's `head` key stay rare; a user's other
//! requests go to one server too. When the first choice is disconnected the next one in
//! that key's order is used, and only the keys of a lost server move.
//!
//! A conversation's sends stay on the app server that has sends of it in flight from this
//! pool, while that server is connected: otherwise a server coming back (its link
//! reconnected) would take the next send while the previous one still waits in the other
//! server's queue, and the later send would get the smaller `seq`, breaking the
//! per-connection send order (found by the simulator's `send_order` checker when an
//! isolated app server rejoined). Sends in flight on a server whose link is lost fail at once
//! (retryable), so the conversation moves on as soon as the loss is noticed.

use crate::LinkClient;
use chat_proto::link::{AppApi, SendAck, SendRequest, SyncPage};
use chat_proto::rest::*;
use chat_proto::{ApiError, ConvId, Seq};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct AppPool {
    clients: Vec<LinkClient>,
    /// Per conversation with sends in flight: the server they went to.
    in_flight: Arc<Mutex<HashMap<ConvId, InFlight>>>,
}

/// Sends of one conversation in flight on one app server.
struct InFlight {
    client: usize,
    /// Bumped when the conversation moves to another server, so answers from the old one
    /// do not count down the new one's sends.
    generation: u64,
    count: usize,
}

/// One send in flight, counted down on drop.
struct Ticket {
    in_flight: Arc<Mutex<HashMap<ConvId, InFlight>>>,
    conv: ConvId,
    generation: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map
            .get_mut(&self.conv)
            .filter(|e| e.generation == self.generation)
        {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                map.remove(&self.conv);
            }
        }
    }
}

impl AppPool {
    pub fn new(clients: Vec<LinkClient>) -> AppPool {
        assert!(
            !clients.is_empty(),
            "an app pool needs at least one app server"
        );
        AppPool {
            clients,
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<ConvId, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clients(&self) -> &[LinkClient] {
        &self.clients
    }

    /// The app server for `key` (its index): the connected one with the highest weight.
    fn pick(&self, key: u64) -> usize {
        let weight = |i: &usize| fnv1a(key, self.clients[*i].addr().to_string().as_bytes());
        let all = 0..self.clients.len();
        let connected = all
            .clone()
            .filter(|i| self.clients[*i].is_connected())
            .max_by_key(weight);
        // None connected: ask the first choice anyway; it answers `unavailable` at once.
        connected.or_else(|| all.max_by_key(weight)).unwrap_or(0)
    }

    fn for_user(&self, user: &str) -> &LinkClient {
        &self.clients[self.pick(fnv1a(0, user.as_bytes()))]
    }

    fn for_conv(&self, conv: ConvId) -> usize {
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
        self.for_user(&credentials.username)
            .clone()
            .register(credentials)
            .await
    }

    async fn login(&self, credentials: Credentials) -> Result<Session, ApiError> {
        self.for_user(&credentials.username)
            .clone()
            .login(credentials)
            .await
    }

    async fn create_conversation(
        &self,
        caller: &str,
        request: CreateConversation,
    ) -> Result<(ConversationView, bool), ApiError> {
        self.for_user(caller)
            .create_conversation(caller, request)
            .await
    }

    async fn history(
        &self,
        caller: &str,
        conv: ConvId,
        query: HistoryQuery,
    ) -> Result<HistoryPage, ApiError> {
        self.for_user(caller).history(caller, conv, query).await
    }

    async fn inbox(&self, caller: &str, query: InboxQuery) -> Result<Inbox, ApiError> {
        self.for_user(caller).inbox(caller, query).await
    }

    fn send(&self, request: SendRequest) -> BoxFuture<'static, Result<SendAck, ApiError>> {
        let conv = request.conv;
        let (client, generation) = {
            let mut in_flight = self.lock_in_flight();
            let chosen = match in_flight.get(&conv) {
                Some(f) if f.count > 0 && self.clients[f.client].is_connected() => f.client,
                _ => self.for_conv(conv),
            };
            let entry = in_flight.entry(conv).or_insert(InFlight {
                client: chosen,
                generation: 0,
                count: 0,
            });
            if entry.client != chosen {
                entry.client = chosen;
                entry.generation += 1;
                entry.count = 0;
            }
            entry.count += 1;
            (chosen, entry.generation)
        };
        // Submitted now (in the caller's order); only the answer is awaited.
        let answer = self.clients[client].send(request);
        // Counted down when answered, or when the caller stops waiting (dropped).
        let ticket = Ticket {
            in_flight: self.in_flight.clone(),
            conv,
            generation,
        };
        async move {
            let result = answer.await;
            drop(ticket);
            result
        }
        .boxed()
    }

    async fn read(&self, user: &str, conv: ConvId, seq: Seq) -> Result<(), ApiError> {
        self.for_user(user).read(user, conv, seq).await
    }

    async fn sync(
        &self,
        user: &str,
        conv: ConvId,
        after: Seq,
        limit: u32,
    ) -> Result<SyncPage, ApiError> {
        self.for_user(user).sync(user, conv, after, limit).await
    }
}
