//! [`Tracker`]: the client side of the ordering and idempotency guarantees, without I/O.
//!
//! It follows the last `seq` seen per conversation, delivers pushes in `seq` order exactly
//! once, asks for a `sync` when it sees a gap, and keeps unacknowledged sends so they can be
//! resent with the same id after a reconnect. It only turns server frames into events and
//! client frames to send; [`crate::LiveSession`] wires it to a [`crate::WsConnection`].

use chat_proto::frame::{ClientFrame, FrameOp, ServerFrame};
use chat_proto::{ApiError, ConvId, Message, Seq};
use std::collections::{BTreeMap, HashMap};

/// Messages buffered per conversation while waiting for a missing `seq`; beyond this they are
/// dropped (the `sync` already requested brings them again).
pub const EARLY_MESSAGES_MAX: usize = 1024;

/// What a server frame meant to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// A message seen for the first time; per conversation these come in `seq` order,
    /// without gaps after the first one (unless the server lost messages).
    Message(Message),
    /// The server stored our send `id` as `seq` (also for a repeated id: the first `seq`).
    Acked {
        id: String,
        conv: ConvId,
        seq: Seq,
        ts: u64,
    },
    /// The server refused our send `id`. A retryable error (`overloaded`, `unavailable`) keeps
    /// the send pending: [`Tracker::resend`] it later, or it goes again on reconnect.
    SendFailed {
        id: String,
        conv: ConvId,
        error: ApiError,
    },
    /// A `sync` finished; the conversation's newest `seq` was `seq`.
    Synced { conv: ConvId, seq: Seq },
    /// The JSON `pong` answer to a `ping` frame.
    Pong,
    /// A conversation was created or changed (members, roles, title): its state now. A
    /// conversation the user was just removed from no longer lists them.
    Conversation(chat_proto::rest::ConversationView),
    /// `user` has read `conv` up to `seq` (another member, or this user on another device);
    /// never a move backwards.
    Receipt {
        conv: ConvId,
        user: String,
        seq: Seq,
    },
    /// `user` is typing in `conv`: show it for `expires_in_ms` unless another comes.
    Typing {
        conv: ConvId,
        user: String,
        expires_in_ms: u64,
    },
    /// An `error` frame not tied to one of our pending sends.
    Error(ApiError),
}

/// The result of one server frame: events for the application, frames to send back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Step {
    pub events: Vec<LiveEvent>,
    pub outgoing: Vec<ClientFrame>,
}

#[derive(Debug, Clone, Default)]
struct ConvState {
    /// Every `seq <= last` has been delivered (or predates what we follow).
    last: Seq,
    /// Arrivals beyond `last + 1`: a pushed message, or `None` for one of our own sends.
    early: BTreeMap<Seq, Option<Message>>,
    /// `Some(last at the time)` while a `sync` we asked for is in flight.
    syncing_from: Option<Seq>,
}

#[derive(Debug, Clone)]
struct PendingSend {
    /// Order of first send, so resends keep the original order.
    order: u64,
    conv: ConvId,
    body: String,
}

/// Per-conversation `seq` tracking and pending sends. See the module documentation.
#[derive(Debug, Clone)]
pub struct Tracker {
    convs: BTreeMap<ConvId, ConvState>,
    pending: BTreeMap<String, PendingSend>,
    id_prefix: String,
    ids_issued: u64,
    sends_recorded: u64,
    /// The newest receipt per (conversation, reader), at most [`RECEIPTS_TRACKED_MAX`].
    receipts: HashMap<(ConvId, String), Seq>,
}

/// Readers whose newest receipt is remembered; past it the memory starts over (an old
/// receipt may then be reported again, which only repeats a cursor already shown).
const RECEIPTS_TRACKED_MAX: usize = 10_000;

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracker {
    /// A tracker whose message ids start with a random prefix, so two devices (or two runs) of
    /// one user never reuse an id. Randomness comes from rand 0.9, which the simulator seeds.
    pub fn new() -> Tracker {
        Self::with_id_prefix(&format!("{:016x}", rand::random::<u64>()))
    }

    /// A tracker whose message ids are `<prefix>-<n>` (the prefix must be `A-Za-z0-9_-` and at
    /// most 40 characters for ids to stay valid).
    pub fn with_id_prefix(prefix: &str) -> Tracker {
        Tracker {
            convs: BTreeMap::new(),
            pending: BTreeMap::new(),
            receipts: HashMap::new(),
            id_prefix: prefix.to_owned(),
            ids_issued: 0,
            sends_recorded: 0,
        }
    }

    /// Follows `conv` from `last_seen`: the next message expected is `last_seen + 1`, and a push
    /// beyond it triggers a `sync`. Conversations not followed are adopted at their first push
    /// (no sync for what came before it). Following again moves the mark forward only.
    pub fn follow(&mut self, conv: ConvId, last_seen: Seq) {
        let state = self.convs.entry(conv).or_default();
        state.last = state.last.max(last_seen);
        let last = state.last;
        state.early = state.early.split_off(&(last + 1));
    }

    /// The newest `seq` delivered in `conv`, if it is followed.
    pub fn last_seen(&self, conv: ConvId) -> Option<Seq> {
        self.convs.get(&conv).map(|s| s.last)
    }

    /// The followed conversations and their last seen `seq`, in `conv` order.
    pub fn conversations(&self) -> impl Iterator<Item = (ConvId, Seq)> + '_ {
        self.convs.iter().map(|(conv, s)| (*conv, s.last))
    }

    /// A fresh client message id.
    pub fn next_id(&mut self) -> String {
        self.ids_issued += 1;
        format!("{}-{}", self.id_prefix, self.ids_issued)
    }

    /// Records a send of `body` to `conv` under a fresh id and returns the frame to send.
    pub fn send(&mut self, conv: ConvId, body: impl Into<String>) -> ClientFrame {
        let id = self.next_id();
        self.send_with_id(id, conv, body)
    }

    /// Records a send under a caller-chosen id (e.g. one persisted across restarts).
    pub fn send_with_id(
        &mut self,
        id: String,
        conv: ConvId,
        body: impl Into<String>,
    ) -> ClientFrame {
        let body = body.into();
        self.sends_recorded += 1;
        let order = self
            .pending
            .get(&id)
            .map_or(self.sends_recorded, |p| p.order);
        self.pending.insert(
            id.clone(),
            PendingSend {
                order,
                conv,
                body: body.clone(),
            },
        );
        ClientFrame::Send { id, conv, body }
    }

    /// The frame to send a pending send again (same id: the server stores it once).
    pub fn resend(&self, id: &str) -> Option<ClientFrame> {
        self.pending.get(id).map(|p| ClientFrame::Send {
            id: id.to_owned(),
            conv: p.conv,
            body: p.body.clone(),
        })
    }

    /// Ids of sends not acknowledged yet, oldest first.
    pub fn pending_ids(&self) -> Vec<String> {
        let mut ids: Vec<_> = self
            .pending
            .iter()
            .map(|(id, p)| (p.order, id.clone()))
            .collect();
        ids.sort();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// A `read` frame moving the read cursor of `conv` to the last seen `seq`.
    pub fn read_frame(&self, conv: ConvId) -> Option<ClientFrame> {
        self.convs
            .get(&conv)
            .filter(|s| s.last > 0)
            .map(|s| ClientFrame::Read { conv, seq: s.last })
    }

    /// The frames to send on a new connection: a `sync` of every followed conversation from
    /// its last seen `seq`, then every pending send again, oldest first.
    pub fn on_connect(&mut self) -> Vec<ClientFrame> {
        let mut frames = Vec::new();
        for (conv, state) in &mut self.convs {
            state.syncing_from = Some(state.last);
            frames.push(ClientFrame::Sync {
                conv: *conv,
                after: state.last,
            });
        }
        frames.extend(self.pending_ids().iter().filter_map(|id| self.resend(id)));
        frames
    }

    /// Interprets one server frame.
    pub fn on_frame(&mut self, frame: ServerFrame) -> Step {
        let mut step = Step::default();
        match frame {
            ServerFrame::Message {
                conv,
                seq,
                sender,
                body,
                id,
                ts,
                event,
                edited,
                deleted,
            } => {
                let message = Message {
                    conv,
                    seq,
                    sender,
                    body,
                    client_msg_id: id,
                    ts,
                    event,
                    edited,
                    deleted,
                };
                self.arrive(conv, seq, Some(message), &mut step);
            }
            ServerFrame::Sent { id, conv, seq, ts } => {
                self.pending.remove(&id);
                step.events.push(LiveEvent::Acked { id, conv, seq, ts });
                self.arrive(conv, seq, None, &mut step);
            }
            ServerFrame::Synced { conv, seq } => {
                step.events.push(LiveEvent::Synced { conv, seq });
                if let Some(state) = self.convs.get_mut(&conv) {
                    let from = state.syncing_from.take();
                    let behind = state.last < seq || !state.early.is_empty();
                    // Ask again only if the last sync made progress, so a server that reports
                    // more than it sends cannot make us loop.
                    let progressed = from.is_some_and(|from| state.last > from);
                    if behind && progressed {
                        state.syncing_from = Some(state.last);
                        step.outgoing.push(ClientFrame::Sync {
                            conv,
                            after: state.last,
                        });
                    }
                }
            }
            ServerFrame::Conversation { conversation } => {
                step.events.push(LiveEvent::Conversation(conversation))
            }
            ServerFrame::Typing {
                conv,
                user,
                expires_in_ms,
            } => step.events.push(LiveEvent::Typing {
                conv,
                user,
                expires_in_ms,
            }),
            ServerFrame::Receipt { conv, user, seq } => {
                // Receipts may come out of order (after a failover): only a move forward is one.
                let key = (conv, user.clone());
                if self.receipts.len() >= RECEIPTS_TRACKED_MAX && !self.receipts.contains_key(&key)
                {
                    self.receipts.clear();
                }
                let newest = self.receipts.entry(key).or_insert(0);
                if seq > *newest {
                    *newest = seq;
                    step.events.push(LiveEvent::Receipt { conv, user, seq });
                }
            }
            ServerFrame::Pong => step.events.push(LiveEvent::Pong),
            ServerFrame::Error {
                code,
                message,
                id,
                op,
                conv,
                retry_after_ms,
            } => {
                let error = ApiError {
                    retry_after_ms,
                    ..ApiError::new(code, message)
                };
                if let (Some(FrameOp::Sync), Some(conv)) = (op, conv) {
                    // That sync's `synced` will never come: the next gap asks again.
                    if let Some(state) = self.convs.get_mut(&conv) {
                        state.syncing_from = None;
                    }
                }
                match id.and_then(|id| self.pending.get(&id).map(|p| (id, p.conv))) {
                    Some((id, conv)) => {
                        if !code.is_retryable() {
                            self.pending.remove(&id);
                        }
                        step.events.push(LiveEvent::SendFailed { id, conv, error });
                    }
                    None => step.events.push(LiveEvent::Error(error)),
                }
            }
        }
        step
    }

    /// A message (or, with `None`, our own acknowledged send) at `seq` in `conv`.
    fn arrive(&mut self, conv: ConvId, seq: Seq, message: Option<Message>, step: &mut Step) {
        let state = self.convs.entry(conv).or_insert_with(|| ConvState {
            last: seq.saturating_sub(1),
            ..ConvState::default()
        });
        if seq <= state.last {
            return; // Seen already (a sync overlapping pushes, or a repeated ack).
        }
        if seq > state.last + 1 {
            let is_push = message.is_some();
            if state.early.len() < EARLY_MESSAGES_MAX || state.early.contains_key(&seq) {
                // Keep a message over an ack marker for the same seq (cannot happen with a
                // correct server, but never lose a message).
                let slot = state.early.entry(seq).or_insert(None);
                if slot.is_none() {
                    *slot = message;
                }
            }
            // A push beyond the next seq means one was missed. An ack beyond it usually means
            // the pushes before it are still on their way: they get no sync of their own.
            if is_push && state.syncing_from.is_none() {
                state.syncing_from = Some(state.last);
                step.outgoing.push(ClientFrame::Sync {
                    conv,
                    after: state.last,
                });
            }
            return;
        }
        state.last = seq;
        step.events.extend(message.map(LiveEvent::Message));
        while let Some(entry) = state.early.first_entry() {
            if *entry.key() != state.last + 1 {
                break;
            }
            state.last += 1;
            step.events.extend(entry.remove().map(LiveEvent::Message));
        }
        // Anything left at or below `last` was delivered through another path.
        let last = state.last;
        state.early = state.early.split_off(&(last + 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_proto::ErrorCode;

    fn push(conv: ConvId, seq: Seq) -> ServerFrame {
        ServerFrame::Message {
            conv,
            seq,
            sender: "bob".into(),
            body: format!("m{seq}"),
            id: format!("b{seq}"),
            ts: seq,
            event: None,
            edited: false,
            deleted: false,
        }
    }

    fn delivered(step: &Step) -> Vec<Seq> {
        step.events
            .iter()
            .filter_map(|e| match e {
                LiveEvent::Message(m) => Some(m.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn in_order_pushes_are_delivered_once() {
        let mut t = Tracker::with_id_prefix("t");
        t.follow(1, 0);
        assert_eq!(delivered(&t.on_frame(push(1, 1))), [1]);
        assert_eq!(delivered(&t.on_frame(push(1, 2))), [2]);
        let again = t.on_frame(push(1, 2));
        assert!(again.events.is_empty() && again.outgoing.is_empty());
        assert_eq!(t.last_seen(1), Some(2));
    }

    #[test]
    fn a_gap_asks_for_one_sync_and_the_sync_fills_it() {
        let mut t = Tracker::with_id_prefix("t");
        t.follow(1, 2);
        let step = t.on_frame(push(1, 5));
        assert!(delivered(&step).is_empty());
        assert_eq!(step.outgoing, [ClientFrame::Sync { conv: 1, after: 2 }]);
        // A second push beyond the gap does not ask again while the sync is in flight.
        assert!(t.on_frame(push(1, 6)).outgoing.is_empty());
        // The sync streams 3..=6; 5 and 6 were buffered and come out right after 4.
        assert_eq!(delivered(&t.on_frame(push(1, 3))), [3]);
        assert_eq!(delivered(&t.on_frame(push(1, 4))), [4, 5, 6]);
        assert!(delivered(&t.on_frame(push(1, 5))).is_empty());
        assert!(delivered(&t.on_frame(push(1, 6))).is_empty());
        let done = t.on_frame(ServerFrame::Synced { conv: 1, seq: 6 });
        assert_eq!(done.events, [LiveEvent::Synced { conv: 1, seq: 6 }]);
        assert!(done.outgoing.is_empty());
        assert_eq!(t.last_seen(1), Some(6));
    }

    #[test]
    fn a_failed_sync_does_not_stop_the_next_gap_from_asking_again() {
        let mut t = Tracker::with_id_prefix("t");
        t.follow(1, 2);
        assert_eq!(
            t.on_frame(push(1, 5)).outgoing,
            [ClientFrame::Sync { conv: 1, after: 2 }]
        );
        // The sync fails: its `synced` never comes.
        let failed = t.on_frame(ServerFrame::error_for(
            &ApiError::unavailable("store"),
            FrameOp::Sync,
            1,
        ));
        assert!(
            matches!(failed.events.as_slice(), [LiveEvent::Error(e)] if e.code == ErrorCode::Unavailable)
        );
        assert_eq!(
            t.on_frame(push(1, 6)).outgoing,
            [ClientFrame::Sync { conv: 1, after: 2 }]
        );
    }

    #[test]
    fn a_sync_that_ends_behind_is_repeated_only_after_progress() {
        let mut t = Tracker::with_id_prefix("t");
        t.follow(1, 0);
        assert_eq!(t.on_frame(push(1, 3)).outgoing.len(), 1);
        t.on_frame(push(1, 1));
        // The server says 5 but sent only up to 1 (and 3 buffered): progress, so ask again.
        let step = t.on_frame(ServerFrame::Synced { conv: 1, seq: 5 });
        assert_eq!(step.outgoing, [ClientFrame::Sync { conv: 1, after: 1 }]);
        // No progress this time: do not loop.
        assert!(
            t.on_frame(ServerFrame::Synced { conv: 1, seq: 5 })
                .outgoing
                .is_empty()
        );
        // The next gap asks again.
        assert_eq!(
            t.on_frame(push(1, 7)).outgoing,
            [ClientFrame::Sync { conv: 1, after: 1 }]
        );
    }

    #[test]
    fn unknown_conversations_are_adopted_at_their_first_push() {
        let mut t = Tracker::with_id_prefix("t");
        let step = t.on_frame(push(9, 40));
        assert_eq!(delivered(&step), [40]);
        assert!(step.outgoing.is_empty());
        assert_eq!(t.last_seen(9), Some(40));
        assert_eq!(
            t.on_frame(push(9, 42)).outgoing,
            [ClientFrame::Sync { conv: 9, after: 40 }]
        );
    }

    #[test]
    fn own_sends_fill_the_sequence_without_a_sync() {
        let mut t = Tracker::with_id_prefix("me");
        t.follow(1, 3);
        let ClientFrame::Send { id, .. } = t.send(1, "hello") else {
            panic!()
        };
        assert_eq!(t.pending_ids(), std::slice::from_ref(&id));
        // Our message got seq 5; the push of 4 (someone else's) is still on its way.
        let step = t.on_frame(ServerFrame::Sent {
            id: id.clone(),
            conv: 1,
            seq: 5,
            ts: 0,
        });
        assert_eq!(
            step.events,
            [LiveEvent::Acked {
                id,
                conv: 1,
                seq: 5,
                ts: 0
            }]
        );
        assert!(step.outgoing.is_empty());
        assert!(t.pending_ids().is_empty());
        assert_eq!(t.last_seen(1), Some(3));
        assert_eq!(delivered(&t.on_frame(push(1, 4))), [4]);
        assert_eq!(t.last_seen(1), Some(5));
        assert_eq!(delivered(&t.on_frame(push(1, 6))), [6]);
    }

    #[test]
    fn reconnect_syncs_followed_conversations_and_resends_in_order() {
        let mut t = Tracker::with_id_prefix("me");
        t.follow(2, 7);
        t.follow(1, 3);
        let a = t.send(1, "a");
        let b = t.send(2, "b");
        let c = t.send(1, "c");
        if let ClientFrame::Send { id, .. } = &b {
            t.on_frame(ServerFrame::Sent {
                id: id.clone(),
                conv: 2,
                seq: 8,
                ts: 0,
            });
        }
        let frames = t.on_connect();
        assert_eq!(
            frames,
            [
                ClientFrame::Sync { conv: 1, after: 3 },
                ClientFrame::Sync { conv: 2, after: 8 },
                a,
                c
            ]
        );
    }

    #[test]
    fn send_errors_are_matched_by_id() {
        let mut t = Tracker::with_id_prefix("me");
        let ClientFrame::Send { id: busy, .. } = t.send(1, "x") else {
            panic!()
        };
        let ClientFrame::Send { id: bad, .. } = t.send(1, "y") else {
            panic!()
        };
        let step = t.on_frame(ServerFrame::error(
            &ApiError::new(ErrorCode::Overloaded, "busy"),
            Some(busy.clone()),
        ));
        assert!(
            matches!(&step.events[..], [LiveEvent::SendFailed { id, conv: 1, .. }] if *id == busy)
        );
        let step = t.on_frame(ServerFrame::error(
            &ApiError::new(ErrorCode::UnknownConversation, "no"),
            Some(bad.clone()),
        ));
        assert!(matches!(&step.events[..], [LiveEvent::SendFailed { id, .. }] if *id == bad));
        // The retryable one stays pending; the other is gone.
        assert_eq!(t.pending_ids(), std::slice::from_ref(&busy));
        assert_eq!(
            t.resend(&busy),
            Some(ClientFrame::Send {
                id: busy,
                conv: 1,
                body: "x".into()
            })
        );
        let step = t.on_frame(ServerFrame::error(
            &ApiError::new(ErrorCode::BadFrame, "?"),
            None,
        ));
        assert!(matches!(&step.events[..], [LiveEvent::Error(e)] if e.code == ErrorCode::BadFrame));
    }

    #[test]
    fn ids_are_fresh_and_valid() {
        let mut t = Tracker::new();
        let a = t.next_id();
        let b = t.next_id();
        assert_ne!(a, b);
        assert!(chat_proto::model::is_valid_client_msg_id(&a), "{a}");
        assert_ne!(Tracker::new().next_id(), Tracker::new().next_id());
    }

    #[test]
    fn read_frame_uses_the_last_seen_seq() {
        let mut t = Tracker::with_id_prefix("t");
        assert_eq!(t.read_frame(1), None);
        t.follow(1, 0);
        assert_eq!(t.read_frame(1), None);
        t.on_frame(push(1, 1));
        assert_eq!(t.read_frame(1), Some(ClientFrame::Read { conv: 1, seq: 1 }));
    }

    #[test]
    fn the_early_buffer_is_bounded() {
        let mut t = Tracker::with_id_prefix("t");
        t.follow(1, 0);
        for seq in 2..(EARLY_MESSAGES_MAX as Seq + 100) {
            t.on_frame(push(1, seq));
        }
        // Only the buffered ones come out; the rest waits for the sync.
        assert_eq!(
            delivered(&t.on_frame(push(1, 1))).len(),
            EARLY_MESSAGES_MAX + 1
        );
    }
}
