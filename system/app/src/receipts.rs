//! Read receipts: a member's read cursor moved; the other members' devices and the reader's
//! own learn of it, coalesced.
//!
//! A client marks read as it scrolls, often several times a second; each move told to every
//! member's every device would make reading a big group cost more than writing in it. So a
//! move is held for [`AppConfig::receipt_window`](crate::AppConfig::receipt_window): moves of
//! the same (conversation, reader) that come meanwhile replace it, and one receipt, of the
//! newest cursor, goes out. Reads of one user go to one app server (they are routed by user),
//! so that is where their moves meet.

use crate::routing::Router;
use chat_proto::ConvId;
use chat_proto::link::Receipt;
use chat_store::ReadMoved;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Receipts {
    router: Arc<Router>,
    window: Duration,
    /// Moves held at most; beyond, a move goes out at once (uncoalesced, never lost).
    held_max: usize,
    // A std Mutex: held for one map operation, never across an await.
    held: Mutex<HashMap<(ConvId, String), ReadMoved>>,
}

impl Receipts {
    pub fn new(router: Arc<Router>, window: Duration, held_max: usize) -> Arc<Receipts> {
        Arc::new(Receipts {
            router,
            window,
            held_max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// `user`'s cursor in `conv` moved: tell whom it concerns within the window.
    pub fn moved(self: &Arc<Self>, conv: ConvId, user: &str, moved: ReadMoved) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let full = held.len() >= self.held_max;
        let key = (conv, user.to_owned());
        match held.entry(key) {
            Entry::Occupied(mut newer) => {
                // Its flush is on the way; it takes the newest cursor.
                if moved.seq > newer.get().seq {
                    newer.insert(moved);
                }
            }
            Entry::Vacant(_) if full => {
                drop(held);
                let receipts = self.clone();
                let user = user.to_owned();
                tokio::spawn(async move { receipts.send(conv, user, moved).await });
            }
            Entry::Vacant(slot) => {
                let key = slot.key().clone();
                slot.insert(moved);
                let receipts = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(receipts.window).await;
                    let newest = receipts
                        .held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    if let Some(newest) = newest {
                        receipts.send(key.0, key.1, newest).await;
                    }
                });
            }
        }
    }

    /// To every member's devices, or only the reader's own when they keep receipts to
    /// themself.
    async fn send(&self, conv: ConvId, user: String, moved: ReadMoved) {
        let whom = match moved.receipts {
            true => moved.members,
            false => vec![user.clone()],
        };
        let targets = self.router.targets(&whom).await;
        self.router.receipt(
            &targets,
            Receipt {
                conv,
                user,
                seq: moved.seq,
            },
        );
    }
}
