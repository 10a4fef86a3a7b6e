//! [`PushOrder`]: the order of one connection's `message` frames, without I/O.
//!
//! Per conversation, `message` frames leave in increasing `seq`: the highest `seq` sent is
//! remembered and an older live push (one a sync already carried) is skipped; while a `sync`
//! of the conversation streams, its live pushes are held back and released after the sync's
//! pages, in `seq` order. The writer task in [`crate::connection`] feeds it what it is asked
//! to send and writes the [`Write`]s it gets back.

use crate::hub::Push;
use chat_proto::{ConvId, Message, Seq};
use std::collections::HashMap;
use std::sync::Arc;

/// What the writer sends for an event, in order.
#[derive(Debug)]
pub enum Write {
    /// A live push, as encoded once for all its recipients.
    Push(Arc<Push>),
    /// The `synced` frame that ends a sync of `conv`; `seq` is the newest that the sync or
    /// a push carried.
    Synced { conv: ConvId, seq: Seq },
    /// More pushes arrived during a sync than may be held: the connection closes with 1013,
    /// and the client catches up with `sync` after reconnecting.
    CloseTryAgainLater,
}

/// Per-conversation ordering of one connection's `message` frames. See the module documentation.
#[derive(Debug)]
pub struct PushOrder {
    /// Live pushes held per conversation while its sync streams, at most (the close beyond
    /// bounds the memory a client that syncs slowly can hold on the server).
    held_messages_max: usize,
    /// Highest `seq` sent per conversation on this connection.
    last_sent: HashMap<ConvId, Seq>,
    /// Conversations with a sync streaming, and the live pushes held back meanwhile.
    syncing: HashMap<ConvId, Vec<Arc<Push>>>,
}

impl PushOrder {
    pub fn new(held_messages_max: usize) -> PushOrder {
        PushOrder {
            held_messages_max,
            last_sent: HashMap::new(),
            syncing: HashMap::new(),
        }
    }

    /// A live push: sent if it is newer than what was sent, held while its conversation syncs.
    pub fn push(&mut self, push: Arc<Push>) -> Vec<Write> {
        let mut writes = Vec::new();
        if let Some(held) = self.syncing.get_mut(&push.conv) {
            if held.len() >= self.held_messages_max {
                writes.push(Write::CloseTryAgainLater);
            } else {
                held.push(push);
            }
        } else {
            self.pass(push, &mut writes);
        }
        writes
    }

    /// A sync of `conv` starts streaming: its live pushes are held until it ends.
    pub fn sync_start(&mut self, conv: ConvId) {
        self.syncing.entry(conv).or_default();
    }

    /// A page of a sync is sent, every message of it: they were asked for explicitly, so
    /// even one a live push already carried goes again. Held pushes it covers are skipped.
    pub fn sync_page(&mut self, messages: &[Message]) {
        for message in messages {
            let last = self.last_sent.entry(message.conv).or_insert(0);
            *last = (*last).max(message.seq);
        }
    }

    /// The sync of `conv` is complete up to `last_seq`: the held pushes it did not cover,
    /// then `synced` with the higher of `last_seq` and the highest `seq` sent (a push held
    /// meanwhile may be newer than the sync's view).
    pub fn sync_end(&mut self, conv: ConvId, last_seq: Seq) -> Vec<Write> {
        let mut writes = Vec::new();
        let sent = self.release(conv, &mut writes);
        writes.push(Write::Synced {
            conv,
            seq: last_seq.max(sent),
        });
        writes
    }

    /// The sync of `conv` failed (the client gets an error): the held pushes it did not cover.
    pub fn sync_abort(&mut self, conv: ConvId) -> Vec<Write> {
        let mut writes = Vec::new();
        self.release(conv, &mut writes);
        writes
    }

    /// Ends the sync of `conv`, passing its held pushes in `seq` order; returns the highest
    /// `seq` sent in `conv` after them.
    fn release(&mut self, conv: ConvId, writes: &mut Vec<Write>) -> Seq {
        let mut held = self.syncing.remove(&conv).unwrap_or_default();
        held.sort_by_key(|m| m.seq);
        for push in held {
            self.pass(push, writes);
        }
        self.last_sent.get(&conv).copied().unwrap_or(0)
    }

    /// Sends `push` unless something as new was sent in its conversation already.
    fn pass(&mut self, push: Arc<Push>, writes: &mut Vec<Write>) {
        let last = self.last_sent.entry(push.conv).or_insert(0);
        if push.seq <= *last {
            return;
        }
        *last = push.seq;
        writes.push(Write::Push(push));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(conv: ConvId, seq: Seq) -> Arc<Push> {
        Arc::new(Push::new(&message(conv, seq)))
    }

    fn message(conv: ConvId, seq: Seq) -> Message {
        Message {
            conv,
            seq,
            sender: "bob".into(),
            client_msg_id: format!("b{seq}"),
            body: format!("m{seq}"),
            ts: seq,
            event: None,
            edited: false,
            deleted: false,
        }
    }

    /// The writes, each as (what, conv, seq); a close has neither conv nor seq, so 0s.
    fn sent(writes: &[Write]) -> Vec<(&'static str, ConvId, Seq)> {
        writes
            .iter()
            .map(|w| match w {
                Write::Push(p) => ("push", p.conv, p.seq),
                Write::Synced { conv, seq } => ("synced", *conv, *seq),
                Write::CloseTryAgainLater => ("close", 0, 0),
            })
            .collect()
    }

    /// Each push's writes, one after another.
    fn pushes(
        order: &mut PushOrder,
        conv: ConvId,
        seqs: &[Seq],
    ) -> Vec<(&'static str, ConvId, Seq)> {
        seqs.iter()
            .flat_map(|&seq| sent(&order.push(push(conv, seq))))
            .collect()
    }

    #[test]
    fn in_order_pushes_pass() {
        let mut order = PushOrder::new(8);
        assert_eq!(
            pushes(&mut order, 1, &[1, 2, 3, 4]),
            [
                ("push", 1, 1),
                ("push", 1, 2),
                ("push", 1, 3),
                ("push", 1, 4)
            ]
        );
    }

    #[test]
    fn a_duplicate_or_older_push_is_skipped() {
        let mut order = PushOrder::new(8);
        assert_eq!(
            pushes(&mut order, 1, &[1, 3, 3, 2, 4]),
            [("push", 1, 1), ("push", 1, 3), ("push", 1, 4)]
        );
    }

    #[test]
    fn conversations_are_ordered_apart() {
        let mut order = PushOrder::new(8);
        let mut writes = pushes(&mut order, 1, &[5]);
        writes.extend(pushes(&mut order, 2, &[1]));
        assert_eq!(writes, [("push", 1, 5), ("push", 2, 1)]);
    }

    #[test]
    fn pushes_during_a_sync_are_held_and_released_after_it_in_seq_order() {
        let mut order = PushOrder::new(8);
        assert_eq!(pushes(&mut order, 1, &[1]), [("push", 1, 1)]);
        order.sync_start(1);
        // Out of order, one the page below sends too, and one of another conversation.
        assert!(pushes(&mut order, 1, &[5, 3, 4]).is_empty());
        assert_eq!(pushes(&mut order, 2, &[1]), [("push", 2, 1)]);
        order.sync_page(&[message(1, 2), message(1, 3)]);
        assert_eq!(
            sent(&order.sync_end(1, 3)),
            [("push", 1, 4), ("push", 1, 5), ("synced", 1, 5)]
        );
        // Synced is over: pushes pass again, and what was sent stays skipped.
        assert_eq!(pushes(&mut order, 1, &[5, 6]), [("push", 1, 6)]);
    }

    #[test]
    fn a_page_is_sent_whole_and_covers_later_pushes() {
        let mut order = PushOrder::new(8);
        assert_eq!(
            pushes(&mut order, 1, &[1, 2]),
            [("push", 1, 1), ("push", 1, 2)]
        );
        order.sync_start(1);
        // The page repeats 2 (asked for explicitly); only the pushes past it follow.
        order.sync_page(&[message(1, 2), message(1, 3), message(1, 4)]);
        assert!(pushes(&mut order, 1, &[3, 4, 5]).is_empty());
        assert_eq!(
            sent(&order.sync_end(1, 4)),
            [("push", 1, 5), ("synced", 1, 5)]
        );
        assert!(pushes(&mut order, 1, &[4]).is_empty());
    }

    #[test]
    fn synced_reports_the_higher_of_the_sync_and_what_was_sent() {
        let mut order = PushOrder::new(8);
        pushes(&mut order, 1, &[7]);
        order.sync_start(1);
        order.sync_page(&[message(1, 3)]);
        assert_eq!(sent(&order.sync_end(1, 3)), [("synced", 1, 7)]);
        order.sync_start(1);
        assert_eq!(sent(&order.sync_end(1, 9)), [("synced", 1, 9)]);
        // A sync of a conversation never pushed: 0 when it is empty too.
        order.sync_start(2);
        assert_eq!(sent(&order.sync_end(2, 0)), [("synced", 2, 0)]);
    }

    #[test]
    fn too_many_held_pushes_close_with_try_again_later() {
        let mut order = PushOrder::new(2);
        order.sync_start(1);
        assert!(pushes(&mut order, 1, &[1, 2]).is_empty());
        assert_eq!(pushes(&mut order, 1, &[3]), [("close", 0, 0)]);
        // Other conversations are not held, so never counted.
        assert_eq!(pushes(&mut order, 2, &[1]), [("push", 2, 1)]);
    }

    #[test]
    fn an_abort_releases_the_held_pushes() {
        let mut order = PushOrder::new(8);
        order.sync_start(1);
        assert!(pushes(&mut order, 1, &[3, 2]).is_empty());
        order.sync_page(&[message(1, 1), message(1, 2)]);
        assert_eq!(sent(&order.sync_abort(1)), [("push", 1, 3)]);
        // No longer syncing: the next push passes at once.
        assert_eq!(pushes(&mut order, 1, &[4]), [("push", 1, 4)]);
    }

    #[test]
    fn an_end_or_abort_without_a_start_holds_nothing() {
        let mut order = PushOrder::new(8);
        assert!(order.sync_abort(1).is_empty());
        assert_eq!(sent(&order.sync_end(1, 2)), [("synced", 1, 2)]);
        assert_eq!(pushes(&mut order, 1, &[1]), [("push", 1, 1)]);
    }
}
