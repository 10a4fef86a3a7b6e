//! Delivery routing: from durable messages to the connections of their recipients.

use chat_proto::ConnAddr;
use chat_proto::Message;
use chat_proto::link::{Delivery, Target};
use chat_proto::rest::ConversationView;
use chat_registry::Registry;
use std::sync::Arc;
use std::time::Duration;

pub struct Router {
    registry: Arc<dyn Registry>,
    delivery: Arc<dyn Delivery>,
    registry_timeout: Duration,
}

impl Router {
    pub fn new(
        registry: Arc<dyn Registry>,
        delivery: Arc<dyn Delivery>,
        registry_timeout: Duration,
    ) -> Router {
        Router {
            registry,
            delivery,
            registry_timeout,
        }
    }

    /// Every connection of `users`, from one registry lookup; none when the lookup fails
    /// or times out (the messages are durable, clients `sync`).
    pub async fn targets(&self, users: &[String]) -> Vec<Target> {
        let lookup = tokio::time::timeout(self.registry_timeout, self.registry.lookup(users)).await;
        let connections = match lookup {
            Ok(Ok(connections)) => connections,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "registry lookup failed; recipients will sync");
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!("registry lookup timed out; recipients will sync");
                return Vec::new();
            }
        };
        // Fault point: recipients move between the lookup and the delivery.
        if let Some(delay) = chat_proto::sim::buggify_delay(0.03, Duration::from_secs(2)) {
            tokio::time::sleep(delay).await;
        }
        users
            .iter()
            .zip(connections)
            .flat_map(|(user, addrs)| {
                addrs.into_iter().map(move |addr| Target {
                    user: user.clone(),
                    addr,
                })
            })
            .collect()
    }

    /// Delivers `messages` (one conversation, ascending `seq`) to every connection of
    /// `members` except each message's origin (the sending connection, if any). One registry
    /// lookup for the whole batch. Failures only cost latency: the messages are durable and
    /// clients `sync`.
    pub async fn route(&self, members: &[String], messages: &[(Arc<Message>, Option<ConnAddr>)]) {
        let targets = self.targets(members).await;
        self.deliver(&targets, messages);
    }

    /// Delivers `messages` to `targets` (see [`Router::route`]).
    pub fn deliver(&self, targets: &[Target], messages: &[(Arc<Message>, Option<ConnAddr>)]) {
        if targets.is_empty() {
            return;
        }
        for (message, origin) in messages {
            let these: Vec<Target> = targets
                .iter()
                .filter(|t| Some(t.addr) != *origin)
                .cloned()
                .collect();
            if !these.is_empty() {
                self.delivery.deliver(&these, message.clone());
            }
        }
    }

    /// Tells `targets` that a member's read cursor moved.
    pub fn receipt(&self, targets: &[Target], receipt: chat_proto::link::Receipt) {
        if !targets.is_empty() {
            self.delivery.receipt(targets, receipt);
        }
    }

    /// Tells `targets` that `user` is typing in `conv`.
    pub fn typing(&self, targets: &[Target], conv: chat_proto::ConvId, user: &str) {
        if !targets.is_empty() {
            self.delivery.typing(targets, conv, user);
        }
    }

    /// Tells `targets` of a conversation created or changed.
    pub fn announce(&self, targets: &[Target], conversation: ConversationView) {
        if !targets.is_empty() {
            self.delivery.announce(targets, Arc::new(conversation));
        }
    }
}
