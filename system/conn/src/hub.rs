//! The connections this server holds, and delivery into them.

use chat_proto::frame::ServerFrame;
use chat_proto::link::{Delivery, Receipt, Target};
use chat_proto::rest::ConversationView;
use chat_proto::{ConnAddr, ConnId, Message, ServerId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a connection's writer task is asked to do.
///
/// Kept to 32 bytes (big payloads behind a pointer): every connection's queue allocates room
/// for 32 of these up front (tokio's channel block), idle or not.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to send as is (acks, errors, pongs).
    Frame(Box<ServerFrame>),
    /// A frame encoded once for every connection it goes to (a `conversation` frame).
    Text(Box<Utf8Bytes>),
    /// A live message pushed by an app server, shared by all its recipients here.
    Push(Arc<Push>),
    /// Messages of a `sync`, in order: `Start`, `Page`s, then `End` or `Abort`.
    SyncStart(chat_proto::ConvId),
    SyncPage(Vec<Message>),
    SyncEnd {
        conv: chat_proto::ConvId,
        last_seq: chat_proto::Seq,
    },
    SyncAbort(chat_proto::ConvId),
}

/// A live message as its recipients on this server receive it: encoded once, shared by all
/// of them (the text is reference-counted), so a push into a big group costs one JSON
/// encoding, not one per connection.
#[derive(Debug)]
pub struct Push {
    pub conv: chat_proto::ConvId,
    pub seq: chat_proto::Seq,
    pub text: Utf8Bytes,
}

impl Push {
    pub fn new(message: &Message) -> Push {
        Push {
            conv: message.conv,
            seq: message.seq,
            text: ServerFrame::message(message).to_json().into(),
        }
    }
}

pub(crate) struct ConnHandle {
    pub user: String,
    pub outbound: mpsc::Sender<Outbound>,
    /// Woken when the connection must close because it fell behind.
    pub overflow: Arc<Notify>,
}

pub struct ConnHub {
    server: ServerId,
    /// High bits of every connection id: random per process, so ids of a restarted server
    /// do not repeat those a stale registry entry may still name.
    epoch: u64,
    next: AtomicU64,
    // A std Mutex: held for one map operation, never across an await.
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
}

impl ConnHub {
    pub fn new(server: ServerId) -> Arc<ConnHub> {
        let epoch = u64::from(rand::random::<u32>()) << 32;
        Arc::new(ConnHub {
            server,
            epoch,
            next: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
        })
    }

    pub fn server_id(&self) -> ServerId {
        self.server
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (user, connection) held, for registry refreshes.
    pub fn entries(&self) -> Vec<(String, ConnAddr)> {
        self.lock()
            .iter()
            .map(|(conn, handle)| {
                (
                    handle.user.clone(),
                    ConnAddr {
                        server: self.server,
                        conn: *conn,
                    },
                )
            })
            .collect()
    }

    pub(crate) fn add(
        &self,
        user: &str,
        outbound: mpsc::Sender<Outbound>,
        overflow: Arc<Notify>,
    ) -> ConnAddr {
        let conn = self.epoch | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff);
        self.lock().insert(
            conn,
            ConnHandle {
                user: user.to_owned(),
                outbound,
                overflow,
            },
        );
        ConnAddr {
            server: self.server,
            conn,
        }
    }

    pub(crate) fn remove(&self, conn: ConnId) {
        self.lock().remove(&conn);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, ConnHandle>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConnHub {
    /// Queues what `item` makes for each target connection held here.
    fn each_target(&self, targets: &[Target], item: impl Fn() -> Outbound) {
        let conns = self.lock();
        for target in targets {
            if target.addr.server != self.server {
                continue;
            }
            let Some(handle) = conns.get(&target.addr.conn) else {
                continue;
            };
            if handle.user != target.user {
                // A stale registry entry: that id is someone else's connection now.
                continue;
            }
            if handle.outbound.try_send(item()).is_err() {
                // Full (or closing): the client cannot keep up. Closing it is the only way to
                // keep per-connection order without unbounded memory; it syncs on reconnect.
                handle.overflow.notify_one();
            }
        }
    }
}

impl Delivery for ConnHub {
    fn deliver(&self, targets: &[Target], message: Arc<Message>) {
        // Encoded before the lock, which every connect and disconnect also takes; the router
        // sends each server only its own targets, so a push is almost never encoded for nothing.
        if !targets.iter().any(|t| t.addr.server == self.server) {
            return;
        }
        let push = Arc::new(Push::new(&message));
        self.each_target(targets, || Outbound::Push(push.clone()));
    }

    fn announce(&self, targets: &[Target], conversation: Arc<ConversationView>) {
        if !targets.iter().any(|t| t.addr.server == self.server) {
            return;
        }
        let text: Utf8Bytes = ServerFrame::Conversation {
            conversation: (*conversation).clone(),
        }
        .to_json()
        .into();
        self.each_target(targets, || Outbound::Text(Box::new(text.clone())));
    }

    fn typing(&self, targets: &[Target], conv: chat_proto::ConvId, user: &str) {
        if !targets.iter().any(|t| t.addr.server == self.server) {
            return;
        }
        let text: Utf8Bytes = ServerFrame::Typing {
            conv,
            user: user.to_owned(),
            expires_in_ms: chat_proto::limits::TYPING_SHOWN_MS,
        }
        .to_json()
        .into();
        self.each_target(targets, || Outbound::Text(Box::new(text.clone())));
    }

    fn receipt(&self, targets: &[Target], receipt: Receipt) {
        if !targets.iter().any(|t| t.addr.server == self.server) {
            return;
        }
        let text: Utf8Bytes = ServerFrame::Receipt {
            conv: receipt.conv,
            user: receipt.user,
            seq: receipt.seq,
        }
        .to_json()
        .into();
        self.each_target(targets, || Outbound::Text(Box::new(text.clone())));
    }
}

#[cfg(test)]
mod tests {
    /// The queue of every connection, idle or not, holds a block of 32 of these.
    #[test]
    fn an_outbound_item_stays_small() {
        assert!(
            std::mem::size_of::<super::Outbound>() <= 32,
            "{}",
            std::mem::size_of::<super::Outbound>()
        );
    }
}
