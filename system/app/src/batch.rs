//! The sequencer's batching decisions, without I/O: where a submitted send goes
//! (`Joins::admit`) and what the next batch of a conversation holds (`fill`).
//!
//! [`crate::sequencer`] keeps the queues and tasks, the commit, the answers and the routing.

use chat_proto::ConvId;
use std::collections::HashMap;

/// Resends of one id that wait for the copy already queued, at most.
pub(crate) const JOINED_WAITERS_MAX: usize = 16;

/// Room a batch reserves up front, at most: most batches of a quiet conversation hold one
/// send, and must not each allocate for `batch_messages_max`.
const BATCH_MESSAGES_RESERVED_MAX: usize = 64;

/// A send queued or being written: (conversation, sender, client id).
pub(crate) type Key = (ConvId, String, String);

/// Someone waiting for a send's answer.
pub(crate) trait Waiter {
    /// True once it stopped waiting (it timed out, and resends the same id later).
    fn gave_up(&self) -> bool;
}

impl<T> Waiter for tokio::sync::oneshot::Sender<T> {
    fn gave_up(&self) -> bool {
        self.is_closed()
    }
}

/// Where a submitted send goes, and who waits for its answer.
#[derive(Debug)]
pub(crate) enum Admit<'q, W, Q> {
    /// The same send is queued already: the waiter gets that one's answer.
    Joined,
    /// Into its conversation's queue (refused after all if that queue is full); once it is
    /// in, [`Joins::queued`].
    Queue(W, &'q Q),
    /// Into a new queue for its conversation, with a task to drain it; once it is in,
    /// [`Joins::queued`].
    Start(W),
    /// Refused with `overloaded`: [`JOINED_WAITERS_MAX`] resends wait for the queued copy
    /// already, or `convs_active_max` conversations have a queue.
    Refuse(W),
}

/// Every send queued or being written, with the resends of the same id that joined it
/// instead of queueing again. Clients resend an unanswered id every few seconds; when the
/// store is slow, queueing every copy makes each one cost a transaction and the queue never
/// drains (a retry storm that outlives its cause: found by the simulator with one message a
/// transaction).
#[derive(Debug)]
pub(crate) struct Joins<W> {
    waiting: HashMap<Key, Vec<W>>,
}

impl<W: Waiter> Joins<W> {
    pub(crate) fn new() -> Joins<W> {
        Joins {
            waiting: HashMap::new(),
        }
    }

    /// Where a send of `key` goes, `waiter` waiting for it, given the conversations that
    /// have a queue.
    pub(crate) fn admit<'q, Q>(
        &mut self,
        key: &Key,
        waiter: W,
        queues: &'q HashMap<ConvId, Q>,
        convs_active_max: usize,
    ) -> Admit<'q, W, Q> {
        match self.waiting.get_mut(key) {
            Some(joined) if joined.len() < JOINED_WAITERS_MAX => {
                joined.push(waiter);
                Admit::Joined
            }
            Some(_) => Admit::Refuse(waiter),
            None => match queues.get(&key.0) {
                Some(queue) => Admit::Queue(waiter, queue),
                None if queues.len() >= convs_active_max => Admit::Refuse(waiter),
                None => Admit::Start(waiter),
            },
        }
    }

    /// The send of `key` is in its queue: resends of it join it from now on.
    pub(crate) fn queued(&mut self, key: Key) {
        self.waiting.insert(key, Vec::new());
    }

    /// The resends that joined the send of `key`, which is answered now: resends from now
    /// on queue anew.
    pub(crate) fn take(&mut self, key: &Key) -> Vec<W> {
        self.waiting.remove(key).unwrap_or_default()
    }

    /// True (and forgotten) when nobody waits for the send of `key` any more: its caller
    /// `waiter` and every resend that joined it gave up. It is then not written; a later
    /// resend queues anew.
    pub(crate) fn abandoned(&mut self, key: &Key, waiter: &W) -> bool {
        let nobody = waiter.gave_up()
            && self
                .waiting
                .get(key)
                .is_none_or(|joined| joined.iter().all(|w| w.gave_up()));
        if nobody {
            self.waiting.remove(key);
        }
        nobody
    }
}

/// The next batch: `first` (just received), then what `queue` yields without waiting, in
/// queue order, up to `batch_messages_max`. Sends that `abandoned` says nobody waits for
/// are left out and take no room; `queue` is read no further than the batch needs.
///
/// Empty when every send read was abandoned: under overload, committing those would only
/// keep the queue full of work nobody waits for, and every resend would join it
/// (congestion collapse, found by the simulator with batches of two).
pub(crate) fn fill<P>(
    first: P,
    mut queue: impl FnMut() -> Option<P>,
    batch_messages_max: usize,
    mut abandoned: impl FnMut(&P) -> bool,
) -> Vec<P> {
    let mut batch = Vec::with_capacity(batch_messages_max.min(BATCH_MESSAGES_RESERVED_MAX));
    if !abandoned(&first) {
        batch.push(first);
    }
    while batch.len() < batch_messages_max {
        match queue() {
            Some(pending) if abandoned(&pending) => {}
            Some(pending) => batch.push(pending),
            None => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A caller that still waits, or gave up.
    #[derive(Debug, PartialEq)]
    struct Caller(&'static str, bool);

    impl Waiter for Caller {
        fn gave_up(&self) -> bool {
            self.1
        }
    }

    fn waiting(name: &'static str) -> Caller {
        Caller(name, false)
    }

    fn gone(name: &'static str) -> Caller {
        Caller(name, true)
    }

    fn key(conv: ConvId, id: &str) -> Key {
        (conv, "alice".into(), id.into())
    }

    /// Conversations 1..=n with a queue.
    fn active(n: ConvId) -> HashMap<ConvId, ()> {
        (1..=n).map(|conv| (conv, ())).collect()
    }

    fn name<W, Q>(admit: &Admit<'_, W, Q>) -> &'static str {
        match admit {
            Admit::Joined => "joined",
            Admit::Queue(..) => "queue",
            Admit::Start(_) => "start",
            Admit::Refuse(_) => "refuse",
        }
    }

    #[test]
    fn a_first_send_queues_in_its_conversation_or_starts_one() {
        let mut joins = Joins::new();
        let queues = active(1);
        assert_eq!(
            name(&joins.admit(&key(1, "a"), waiting("a"), &queues, 8)),
            "queue"
        );
        assert_eq!(
            name(&joins.admit(&key(2, "b"), waiting("b"), &queues, 8)),
            "start"
        );
    }

    #[test]
    fn a_resend_joins_the_queued_copy_and_gets_its_answer() {
        let mut joins = Joins::new();
        let queues = active(1);
        joins.queued(key(1, "a"));
        assert_eq!(
            name(&joins.admit(&key(1, "a"), waiting("again"), &queues, 8)),
            "joined"
        );
        // Another id, or the same id from another sender or conversation, is another send.
        assert_eq!(
            name(&joins.admit(&key(1, "b"), waiting("b"), &queues, 8)),
            "queue"
        );
        let other_sender = (1, "bob".to_owned(), "a".to_owned());
        assert_eq!(
            name(&joins.admit(&other_sender, waiting("bob"), &queues, 8)),
            "queue"
        );
        assert_eq!(joins.take(&key(1, "a")), [waiting("again")]);
        // Answered: a resend from now on queues anew.
        assert_eq!(
            name(&joins.admit(&key(1, "a"), waiting("late"), &queues, 8)),
            "queue"
        );
        assert!(joins.take(&key(1, "a")).is_empty());
    }

    #[test]
    fn joined_resends_are_bounded() {
        let mut joins = Joins::new();
        let queues = active(1);
        joins.queued(key(1, "a"));
        for _ in 0..JOINED_WAITERS_MAX {
            assert_eq!(
                name(&joins.admit(&key(1, "a"), waiting("r"), &queues, 8)),
                "joined"
            );
        }
        let refused = joins.admit(&key(1, "a"), waiting("over"), &queues, 8);
        assert!(matches!(refused, Admit::Refuse(Caller("over", false))));
        assert_eq!(joins.take(&key(1, "a")).len(), JOINED_WAITERS_MAX);
    }

    #[test]
    fn too_many_active_conversations_refuse_a_new_one_only() {
        let mut joins = Joins::new();
        let queues = active(2);
        let refused = joins.admit(&key(3, "a"), waiting("new"), &queues, 2);
        assert!(matches!(refused, Admit::Refuse(Caller("new", false))));
        assert_eq!(
            name(&joins.admit(&key(2, "a"), waiting("old"), &queues, 2)),
            "queue"
        );
    }

    #[test]
    fn a_send_is_abandoned_once_its_caller_and_every_joined_resend_gave_up() {
        let mut joins = Joins::new();
        let queues = active(1);
        joins.queued(key(1, "a"));
        joins.admit(&key(1, "a"), gone("r1"), &queues, 8);
        joins.admit(&key(1, "a"), waiting("r2"), &queues, 8);
        assert!(!joins.abandoned(&key(1, "a"), &waiting("caller")));
        assert!(!joins.abandoned(&key(1, "a"), &gone("caller")));

        joins.queued(key(1, "b"));
        joins.admit(&key(1, "b"), gone("r1"), &queues, 8);
        assert!(joins.abandoned(&key(1, "b"), &gone("caller")));
        // Forgotten: a later resend queues anew rather than joining what is not written.
        assert_eq!(
            name(&joins.admit(&key(1, "b"), waiting("r3"), &queues, 8)),
            "queue"
        );
        // Nobody joined and the caller gave up.
        assert!(joins.abandoned(&key(1, "c"), &gone("caller")));
    }

    /// Fills a batch from `sends` (the first one as just received); returns it and what is
    /// left queued. Odd sends are abandoned when `odd_abandoned`.
    fn batch(sends: &[u32], max: usize, odd_abandoned: bool) -> (Vec<u32>, Vec<u32>) {
        let mut queue: VecDeque<u32> = sends.iter().copied().collect();
        let first = queue.pop_front().expect("a first send");
        let batch = fill(
            first,
            || queue.pop_front(),
            max,
            |s| odd_abandoned && s % 2 == 1,
        );
        (batch, queue.into())
    }

    #[test]
    fn a_batch_takes_the_queue_in_order_up_to_its_max() {
        assert_eq!(
            batch(&[1, 2, 3, 4, 5], 3, false),
            (vec![1, 2, 3], vec![4, 5])
        );
        assert_eq!(batch(&[1, 2], 3, false), (vec![1, 2], vec![]));
        assert_eq!(batch(&[7], 1, false), (vec![7], vec![]));
    }

    #[test]
    fn abandoned_sends_are_left_out_and_take_no_room() {
        assert_eq!(
            batch(&[1, 2, 3, 4, 5, 6, 7, 8], 2, true),
            (vec![2, 4], vec![5, 6, 7, 8])
        );
        assert_eq!(batch(&[1, 3, 5], 4, true), (vec![], vec![]));
    }
}
