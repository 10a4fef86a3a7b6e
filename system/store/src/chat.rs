//! The chat data model, written once over [`Kv`]: users, conversations, messages, inboxes
//! and read cursors. The key layout is in [`crate::keys`] and `KEYS.md`.
//!
//! Every method is one [`run`](crate::kv::run_with) transaction, so it is retried on
//! conflicts and must be idempotent when retried after
//! [`KvError::CommitUnknownResult`]: each method says how it is.

use crate::keys::{self, COUNTER_CONV, Key, value};
use crate::kv::{Kv, KvError, RunOptions, Tx, TxError, run_with};
use chat_proto::api::ConvChange;
use chat_proto::limits::CONV_MEMBERS_MAX;
use chat_proto::rest::{InboxCursor, ReadCursor, Settings, SettingsUpdate};
use chat_proto::{Amend, ConvEvent, ConvId, ConvKind, Conversation, Message, Role, Seq};
use futures::future::try_join_all;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

/// Why a chat store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("username taken")]
    UsernameTaken,
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    /// The conversation does not exist or the caller is not a member (one error for both, so
    /// membership does not leak).
    #[error("no such conversation")]
    UnknownConversation,
    /// A member asked for what only an owner may do.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A change the conversation does not allow (a direct conversation's members, a group's
    /// last owner leaving others behind, a full group).
    #[error("{0}")]
    NotAllowed(String),
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl StoreError {
    /// Whether the same call may succeed later (the store was busy or unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Kv(e) if e.is_retryable())
    }
}

impl TxError for StoreError {
    fn as_kv(&self) -> Option<&KvError> {
        match self {
            StoreError::Kv(e) => Some(e),
            _ => None,
        }
    }
}

/// Why one message of an append batch was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// An edit or delete of a message that does not exist, is an event, or was deleted.
    #[error("no such message")]
    NoSuchMessage,
    /// An edit or delete of someone else's message.
    #[error("only its sender may edit or delete a message")]
    NotTheSender,
    /// The conversation does not exist or the sender is not a member.
    #[error("no such conversation")]
    UnknownConversation,
    /// The sender already used this client id, in conversation `conv`.
    #[error("the id was used in conversation {conv}")]
    IdConflict { conv: ConvId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub password_hash: String,
    pub created_ts: u64,
}

/// One message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub sender: String,
    pub client_msg_id: String,
    pub body: String,
    /// An edit or delete of the sender's earlier message instead of a new one.
    pub amend: Option<Amend>,
}

/// The outcome of one appended message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: Seq,
    pub ts: u64,
    /// The stored message (for a repeated client id: the first one, which may belong to
    /// another conversation if the client reused the id there).
    pub message: Message,
    /// False when `(sender, client_msg_id)` was already stored, or repeated in the batch.
    pub fresh: bool,
    /// The conversation's members when the batch was committed: who a fresh message is
    /// delivered to. Read in the batch's transaction, so a member removed before the commit
    /// is never among them, whatever any app server cached.
    pub members: Arc<[String]>,
}

/// A read cursor that moved forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMoved {
    /// The cursor now.
    pub seq: Seq,
    /// The conversation's members, who may be told (a former member's read concerns
    /// nobody else any more: just themself).
    pub members: Vec<String>,
    /// Whether the reader shares receipts ([`Settings::receipts`]).
    pub receipts: bool,
}

/// What a [`ChatStore::change`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The conversation after the change.
    pub conv: Conversation,
    /// The change's event in the `seq` stream; `None` when nothing changed.
    pub event: Option<Message>,
    /// Who is told of it: the members after the change, and a member it removed.
    pub notify: Vec<String>,
}

/// One conversation of an inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxItem {
    pub conv: Conversation,
    pub last_seq: Seq,
    pub last_message: Option<Message>,
    /// Messages after the user's read cursor.
    pub unread: u64,
}

/// The chat store over any [`Kv`] backend.
#[derive(Clone)]
pub struct ChatStore {
    kv: Arc<dyn Kv>,
    run_options: RunOptions,
}

impl ChatStore {
    pub fn new(kv: Arc<dyn Kv>) -> ChatStore {
        ChatStore {
            kv,
            run_options: RunOptions::default(),
        }
    }

    pub fn with_run_options(kv: Arc<dyn Kv>, run_options: RunOptions) -> ChatStore {
        ChatStore { kv, run_options }
    }

    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnMut(Tx, bool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        run_with(&*self.kv, &self.run_options, f).await
    }

    /// Creates a user. Idempotent under retry: after an unknown commit result, finding our
    /// own record (same salted hash and timestamp) counts as success.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        ts: u64,
    ) -> Result<(), StoreError> {
        let key = &keys::user(username);
        let record = &value::user(password_hash, ts);
        self.run(move |tx, maybe_committed| async move {
            if let Some(existing) = tx.get(key).await? {
                if maybe_committed && existing == *record {
                    return Ok(());
                }
                return Err(StoreError::UsernameTaken);
            }
            tx.set(key, record);
            Ok(())
        })
        .await
    }

    pub async fn get_user(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let key = &keys::user(username);
        self.run(move |tx, _| async move {
            let Some(raw) = tx.get(key).await? else {
                return Ok(None);
            };
            let (password_hash, created_ts) = value::decode_user(&raw)?;
            Ok(Some(UserRecord {
                password_hash,
                created_ts,
            }))
        })
        .await
    }

    /// Creates a conversation of `creator` and `others`, or finds the existing direct one.
    ///
    /// Members are `creator ∪ others`, sorted and deduplicated; each must exist. Exactly one
    /// other member and no title makes a direct conversation, unique per pair through the
    /// `("direct", a, b)` key: a second call from either side returns the first one with
    /// `created == false`. Anything else is a new group. Sizes (members, title) are checked
    /// by the caller.
    ///
    /// Retry after an unknown commit result: a direct conversation is found again (reported
    /// with `created == false`); a group written by an earlier attempt is found at the id
    /// that attempt took (same members, title and time) and returned as created, so one call
    /// never makes two groups (the simulation's `accounts` checker found that it did, seed 8).
    pub async fn create_conversation(
        &self,
        creator: &str,
        others: Vec<String>,
        title: Option<String>,
        ts: u64,
    ) -> Result<(Conversation, bool), StoreError> {
        let mut members = others;
        members.push(creator.to_owned());
        members.sort();
        members.dedup();
        let kind = if members.len() == 2 && title.is_none() {
            ConvKind::Direct
        } else {
            ConvKind::Group
        };
        let (members, title) = (&members, &title);
        // What each attempt wrote; after an unknown result one of them may have landed.
        let attempts: &std::sync::Mutex<Vec<Conversation>> = &std::sync::Mutex::new(Vec::new());
        self.run(move |tx, maybe_committed| async move {
            if maybe_committed {
                let tried = attempts.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for ours in tried {
                    if load_conv(&tx, ours.conv_id).await?.as_ref() == Some(&ours) {
                        return Ok((ours, true));
                    }
                }
            }
            let tx_ref = &tx;
            let found = try_join_all(
                members
                    .iter()
                    .map(|m| async move { tx_ref.get(&keys::user(m)).await }),
            )
            .await?;
            if let Some((missing, _)) = members.iter().zip(&found).find(|(_, f)| f.is_none()) {
                return Err(StoreError::UnknownUser(missing.clone()));
            }
            let direct_key = match kind {
                ConvKind::Direct => Some(keys::direct(&members[0], &members[1])),
                ConvKind::Group => None,
            };
            if let Some(direct_key) = &direct_key
                && let Some(raw) = tx.get(direct_key).await?
            {
                let conv_id = value::decode_int(keys::subspace::DIRECT, &raw)?;
                let conv = load_conv(&tx, conv_id).await?.ok_or_else(|| {
                    corrupt(format!(
                        "direct key points to missing conversation {conv_id}"
                    ))
                })?;
                return Ok((conv, false));
            }

            // Allocate the id. The counter is a hot key for concurrent creations, which are
            // rare next to sends; conflicts are retried by the run loop.
            let counter_key = keys::counter(COUNTER_CONV);
            let last_id = match tx.get(&counter_key).await? {
                Some(raw) => value::decode_int(keys::subspace::COUNTER, &raw)?,
                None => 0,
            };
            let conv_id = last_id
                .checked_add(1)
                .ok_or_else(|| corrupt("conversation ids exhausted".into()))?;
            tx.set(&counter_key, &value::int(conv_id));

            let owners = match kind {
                ConvKind::Group => vec![creator.to_owned()],
                ConvKind::Direct => Vec::new(),
            };
            let conv = Conversation {
                conv_id,
                kind,
                members: members.clone(),
                owners,
                title: title.clone(),
                created_ts: ts,
            };
            attempts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conv.clone());
            tx.set(&keys::conv(conv_id), &value::conv(&conv));
            // The head exists from creation on, with the creation time as last activity, so
            // the recency index always sits at `head.last_ts`.
            tx.set(&keys::head(conv_id), &value::head(0, ts));
            if let Some(direct_key) = &direct_key {
                tx.set(direct_key, &value::int(conv_id));
            }
            for member in members {
                tx.set(&keys::recent(member, ts, conv_id), &value::empty());
            }
            Ok((conv, true))
        })
        .await
    }

    pub async fn conversation(&self, conv_id: ConvId) -> Result<Option<Conversation>, StoreError> {
        self.run(move |tx, _| async move { Ok(load_conv(&tx, conv_id).await?) })
            .await
    }

    /// The conversation as `user` may see it: a member, or a former member (who sees it as
    /// it is now; their history ends at their removal).
    pub async fn conversation_for(
        &self,
        user: &str,
        conv_id: ConvId,
    ) -> Result<Conversation, StoreError> {
        self.run(move |tx, _| async move { Ok(load_visible(&tx, user, conv_id).await?.0) })
            .await
    }

    /// Applies `change`, asked by `caller`, to the group `conv_id`, and records it as an
    /// event at the next `seq`.
    ///
    /// A change that would change nothing (adding a member with the role they have,
    /// removing someone who is not a member, setting the title it has) records nothing and
    /// answers `event == None`. That is also what makes it idempotent under retry after an
    /// unknown commit result: if the first attempt landed, the retry finds it applied.
    ///
    /// A removed member keeps reading the history up to their removal event (a `gone` key
    /// holds its `seq`); a member added again reads all of it again. A member added for the
    /// first time starts with everything before their addition read.
    pub async fn change(
        &self,
        conv_id: ConvId,
        caller: &str,
        change: &ConvChange,
        ts: u64,
    ) -> Result<Changed, StoreError> {
        self.run(move |tx, _| async move { change_in(&tx, conv_id, caller, change, ts).await })
            .await
    }

    /// Appends a batch of messages to one conversation in ONE transaction.
    ///
    /// The app server batches the sends that arrive concurrently for a conversation, so a hot
    /// group chat costs one transaction (one conflict on its head key at most) per batch
    /// instead of one per message; hence a batch API.
    ///
    /// Per item: a non-member sender (or a missing conversation) gets
    /// [`AppendError::UnknownConversation`]; a `(sender, client_msg_id)` already stored, or
    /// repeated earlier in the batch, gets the stored message with `fresh == false`; anything
    /// else gets the next gapless `seq`. `ts` is raised to the conversation's last activity
    /// so recency never goes backwards.
    ///
    /// Idempotent under retry after an unknown commit result: if the first attempt landed,
    /// its `idem` keys are found and every item is answered with its stored `seq`.
    pub async fn append(
        &self,
        conv_id: ConvId,
        batch: Vec<NewMessage>,
        ts: u64,
    ) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
        let batch = &batch;
        self.run(move |tx, _| async move { append_in(&tx, conv_id, batch, ts).await })
            .await
    }

    /// The newest `limit` messages with `seq < before` (or the newest overall), ascending,
    /// and the `before` of the next older page when older messages exist.
    pub async fn history(
        &self,
        user: &str,
        conv_id: ConvId,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<(Vec<Message>, Option<Seq>), StoreError> {
        self.run(move |tx, _| async move {
            let (_, visible_last) = load_visible(&tx, user, conv_id).await?;
            if limit == 0 {
                return Ok((Vec::new(), None));
            }
            let (begin, end_all) = keys::msgs(conv_id);
            // A former member's history ends at their removal.
            let before = match (before, visible_last) {
                (Some(before), Some(last)) => Some(before.min(last.saturating_add(1))),
                (None, Some(last)) => Some(last.saturating_add(1)),
                (before, None) => before,
            };
            let end = before.map_or(end_all, |before| keys::msg(conv_id, before));
            let pairs = tx.get_range(&begin, &end, limit as usize, true).await?;
            let mut messages = decode_messages(conv_id, pairs)?;
            messages.reverse();
            fill_edits(&tx, conv_id, &mut messages).await?;
            // `seq` is gapless from 1, so older messages exist exactly when the oldest of
            // this page is not message 1.
            let next_before = messages.first().map(|m| m.seq).filter(|&seq| seq > 1);
            Ok((messages, next_before))
        })
        .await
    }

    /// Up to `limit` messages with `seq > after`, ascending, and the conversation's newest
    /// `seq` (for `sync`).
    pub async fn messages_after(
        &self,
        user: &str,
        conv_id: ConvId,
        after: Seq,
        limit: u32,
    ) -> Result<(Vec<Message>, Seq), StoreError> {
        self.run(move |tx, _| async move {
            let (conv, visible_last) = load_visible(&tx, user, conv_id).await?;
            let (last_seq, _) = load_head(&tx, &conv).await?;
            let last_seq = visible_last.map_or(last_seq, |last| last.min(last_seq));
            let Some(first) = after
                .checked_add(1)
                .filter(|&first| first <= last_seq && limit > 0)
            else {
                return Ok((Vec::new(), last_seq));
            };
            // Up to `last_seq`: a former member's ends at their removal.
            let end = keys::msg(conv_id, last_seq.saturating_add(1));
            let pairs = tx
                .get_range(&keys::msg(conv_id, first), &end, limit as usize, false)
                .await?;
            let mut messages = decode_messages(conv_id, pairs)?;
            fill_edits(&tx, conv_id, &mut messages).await?;
            Ok((messages, last_seq))
        })
        .await
    }

    /// The user's `limit` most recently active conversations, most recent first, after
    /// `before` (a place in the recency index: last activity and conversation), and the
    /// place the next page starts from if less recent ones exist.
    pub async fn inbox(
        &self,
        user: &str,
        limit: u32,
        before: Option<InboxCursor>,
    ) -> Result<(Vec<InboxItem>, Option<InboxCursor>), StoreError> {
        self.run(move |tx, _| async move {
            if limit == 0 {
                return Ok((Vec::new(), None));
            }
            let (begin, mut end) = keys::recents(user);
            if let Some(InboxCursor { ts, conv }) = before {
                end = keys::recent(user, ts, conv);
            }
            // One more than asked: whether a next page exists.
            let pairs = tx.get_range(&begin, &end, limit as usize + 1, true).await?;
            let mut places = pairs
                .iter()
                .map(|(key, _)| match Key::decode(key)? {
                    Key::Recent { conv, ts, .. } => Ok(InboxCursor { ts, conv }),
                    other => Err(corrupt(format!("{other:?} in the recency index"))),
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let more = places.len() > limit as usize;
            places.truncate(limit as usize);
            let next = places.last().copied().filter(|_| more);
            let tx = &tx;
            // One item per entry; their reads run concurrently (they matter over a network).
            let items = try_join_all(places.into_iter().map(|place| async move {
                let conv_id = place.conv;
                let conv = load_conv(tx, conv_id).await?.ok_or_else(|| {
                    corrupt(format!(
                        "recency index names missing conversation {conv_id}"
                    ))
                })?;
                let (last_seq, _) = load_head(tx, &conv).await?;
                let last_seq = match conv.is_member(user) {
                    true => last_seq,
                    false => match load_gone(tx, conv_id, user).await? {
                        Some((removed, _)) => removed.min(last_seq),
                        None => {
                            return Err(corrupt(format!(
                                "recency index of `{user}` names conversation {conv_id}, which they never left"
                            )));
                        }
                    },
                };
                let cursor = load_cursor(tx, user, conv_id).await?;
                let last_message = match last_seq {
                    0 => None,
                    seq => {
                        let last = load_message(tx, conv_id, seq).await?.ok_or_else(|| {
                            corrupt(format!(
                                "conversation {conv_id} head names missing message {seq}"
                            ))
                        })?;
                        let mut last = [last];
                        fill_edits(tx, conv_id, &mut last).await?;
                        let [last] = last;
                        Some(last)
                    }
                };
                Ok::<_, StoreError>(InboxItem {
                    conv,
                    last_seq,
                    last_message,
                    unread: last_seq.saturating_sub(cursor),
                })
            }))
            .await?;
            Ok((items, next))
        })
        .await
    }

    /// Moves the user's read cursor to `seq`, capped at the newest message; never backwards.
    /// Answers where it moved to, and whom to tell, when it moved. Idempotent (a retry after
    /// an unknown commit result finds it moved, and answers `None`).
    pub async fn mark_read(
        &self,
        user: &str,
        conv_id: ConvId,
        seq: Seq,
    ) -> Result<Option<ReadMoved>, StoreError> {
        self.run(move |tx, _| async move {
            let (conv, visible_last) = load_visible(&tx, user, conv_id).await?;
            let (last_seq, _) = load_head(&tx, &conv).await?;
            let last_seq = visible_last.map_or(last_seq, |last| last.min(last_seq));
            let old = load_cursor(&tx, user, conv_id).await?;
            let new = old.max(seq.min(last_seq));
            if new == old {
                return Ok(None);
            }
            tx.set(&keys::cursor(user, conv_id), &value::int(new));
            let settings = load_settings(&tx, user).await?;
            let members = match visible_last {
                None => conv.members,
                Some(_) => vec![user.to_owned()],
            };
            Ok(Some(ReadMoved {
                seq: new,
                members,
                receipts: settings.receipts,
            }))
        })
        .await
    }

    /// The read cursors of `conv_id`'s members who share receipts, and always the caller's
    /// own, by username. For members only.
    pub async fn reads(&self, user: &str, conv_id: ConvId) -> Result<Vec<ReadCursor>, StoreError> {
        self.run(move |tx, _| async move {
            // Members only: a former member would learn how the group reads after they left.
            let conv = load_member_conv(&tx, user, conv_id).await?;
            let tx = &tx;
            let readers: Vec<&str> = conv.members.iter().map(String::as_str).collect();
            let reads = try_join_all(readers.into_iter().map(|reader| async move {
                let shared = reader == user || load_settings(tx, reader).await?.receipts;
                let seq = match shared {
                    true => Some(load_cursor(tx, reader, conv_id).await?),
                    false => None,
                };
                Ok::<_, KvError>(seq.map(|seq| ReadCursor {
                    user: reader.to_owned(),
                    seq,
                }))
            }))
            .await?;
            let mut reads: Vec<ReadCursor> = reads.into_iter().flatten().collect();
            reads.sort_by(|a, b| a.user.cmp(&b.user));
            Ok(reads)
        })
        .await
    }

    /// The user's settings after applying `update` (none: just reads them). Idempotent.
    pub async fn settings(
        &self,
        user: &str,
        update: Option<&SettingsUpdate>,
    ) -> Result<Settings, StoreError> {
        self.run(move |tx, _| async move {
            let mut settings = load_settings(&tx, user).await?;
            if let Some(update) = update {
                if tx.get(&keys::user(user)).await?.is_none() {
                    return Err(StoreError::UnknownUser(user.to_owned()));
                }
                if let Some(receipts) = update.receipts {
                    settings.receipts = receipts;
                }
                tx.set(&keys::setting(user), &value::setting(&settings));
            }
            Ok(settings)
        })
        .await
    }
}

async fn append_in(
    tx: &Tx,
    conv_id: ConvId,
    batch: &[NewMessage],
    ts: u64,
) -> Result<Vec<Result<Appended, AppendError>>, StoreError> {
    let Some(conv) = load_conv(tx, conv_id).await? else {
        return Ok(batch
            .iter()
            .map(|_| Err(AppendError::UnknownConversation))
            .collect());
    };
    let (last_seq, last_ts) = load_head(tx, &conv).await?;
    let ts = ts.max(last_ts);
    let members: Arc<[String]> = conv.members.clone().into();
    let conv = &conv;
    let stored = try_join_all(batch.iter().map(|m| async move {
        if conv.is_member(&m.sender) {
            tx.get(&keys::idem(&m.sender, &m.client_msg_id)).await
        } else {
            Ok(None)
        }
    }))
    .await?;

    let mut seq = last_seq;
    let mut results = Vec::with_capacity(batch.len());
    let mut answered: HashMap<(&str, &str), Appended> = HashMap::new();
    let mut newest_by_sender: BTreeMap<&str, Seq> = BTreeMap::new();
    // Messages written (or amended) by this batch so far: an edit may name one of them.
    let mut written: HashMap<Seq, Message> = HashMap::new();
    for (item, stored) in batch.iter().zip(stored) {
        if !conv.is_member(&item.sender) {
            results.push(Err(AppendError::UnknownConversation));
            continue;
        }
        let id = (item.sender.as_str(), item.client_msg_id.as_str());
        if let Some(first) = answered.get(&id) {
            results.push(Ok(Appended {
                fresh: false,
                ..first.clone()
            }));
            continue;
        }
        let appended = match stored {
            Some(raw) => {
                let (stored_conv, stored_seq) = value::decode_idem(&raw)?;
                if stored_conv != conv_id {
                    // Answering the other conversation's `sent` would tell the client its
                    // message is stored here when it is not.
                    results.push(Err(AppendError::IdConflict { conv: stored_conv }));
                    continue;
                }
                let message = load_message(tx, stored_conv, stored_seq).await?.ok_or_else(|| {
                    corrupt(format!("idem key names missing message {stored_seq} of conversation {stored_conv}"))
                })?;
                Appended {
                    seq: stored_seq,
                    ts: message.ts,
                    message,
                    fresh: false,
                    members: members.clone(),
                }
            }
            None => {
                // An edit or delete names a message of its sender that is still there.
                let target = match item.amend {
                    None => None,
                    Some(amend) => {
                        let at = amend.target();
                        let found = match written.get(&at) {
                            Some(m) => Some(m.clone()),
                            None if (1..=seq).contains(&at) => {
                                load_message(tx, conv_id, at).await?
                            }
                            None => None,
                        };
                        match found {
                            Some(m) if m.event.is_none() && !m.deleted => {
                                if m.sender != item.sender {
                                    results.push(Err(AppendError::NotTheSender));
                                    continue;
                                }
                                Some((amend, m))
                            }
                            _ => {
                                results.push(Err(AppendError::NoSuchMessage));
                                continue;
                            }
                        }
                    }
                };
                seq += 1;
                let event = target.as_ref().map(|(amend, _)| match amend {
                    Amend::Edit(at) => ConvEvent::Edited { seq: *at },
                    Amend::Delete(at) => ConvEvent::Deleted { seq: *at },
                });
                let message = Message {
                    conv: conv_id,
                    seq,
                    sender: item.sender.clone(),
                    body: item.body.clone(),
                    client_msg_id: item.client_msg_id.clone(),
                    ts,
                    event,
                    edited: false,
                    deleted: false,
                };
                if let Some((amend, mut amended)) = target {
                    // The body lives in the amended message only: an edit event is stored
                    // without it (reads fill it in), so a delete leaves no copy behind.
                    tx.set(
                        &keys::msg(conv_id, seq),
                        &value::msg(&Message {
                            body: String::new(),
                            ..message.clone()
                        }),
                    );
                    match amend {
                        Amend::Edit(_) => {
                            amended.body = item.body.clone();
                            amended.edited = true;
                        }
                        Amend::Delete(_) => {
                            amended.body.clear();
                            amended.deleted = true;
                        }
                    }
                    tx.set(&keys::msg(conv_id, amended.seq), &value::msg(&amended));
                    written.insert(amended.seq, amended);
                } else {
                    tx.set(&keys::msg(conv_id, seq), &value::msg(&message));
                    written.insert(seq, message.clone());
                }
                tx.set(
                    &keys::idem(&item.sender, &item.client_msg_id),
                    &value::idem(conv_id, seq),
                );
                newest_by_sender.insert(&item.sender, seq);
                Appended {
                    seq,
                    ts,
                    message,
                    fresh: true,
                    members: members.clone(),
                }
            }
        };
        answered.insert(id, appended.clone());
        results.push(Ok(appended));
    }

    if seq > last_seq {
        tx.set(&keys::head(conv_id), &value::head(seq, ts));
        for member in &conv.members {
            // Clear first: when `ts == last_ts` the set below must win.
            tx.clear(&keys::recent(member, last_ts, conv_id));
            tx.set(&keys::recent(member, ts, conv_id), &value::empty());
        }
        // The sender has read what it sent. Cursors never exceed the old head, so the new seq
        // is always a move forward.
        for (sender, newest) in newest_by_sender {
            tx.set(&keys::cursor(sender, conv_id), &value::int(newest));
        }
        tracing::debug!(
            conv = conv_id,
            first_seq = last_seq + 1,
            last_seq = seq,
            "appended messages"
        );
    }
    Ok(results)
}

async fn change_in(
    tx: &Tx,
    conv_id: ConvId,
    caller: &str,
    change: &ConvChange,
    ts: u64,
) -> Result<Changed, StoreError> {
    let conv = load_member_conv(tx, caller, conv_id).await?;
    if conv.kind == ConvKind::Direct {
        return Err(StoreError::NotAllowed(
            "a direct conversation's members and title cannot change".into(),
        ));
    }
    let owner = conv.is_owner(caller);
    let mut next = conv.clone();
    let mut added = None;
    let mut removed = None;
    let event = match change {
        ConvChange::SetMember { user, role } => {
            if !owner {
                return Err(StoreError::Forbidden(
                    "only an owner may add members or set roles",
                ));
            }
            match conv.role(user) {
                Some(now) if now == *role => None,
                Some(_) => {
                    if *role == Role::Member && conv.owners == [user.as_str()] {
                        return Err(StoreError::NotAllowed(
                            "a group needs an owner: make another member owner first".into(),
                        ));
                    }
                    set_sorted(&mut next.owners, user, *role == Role::Owner);
                    Some(ConvEvent::RoleChanged {
                        user: user.clone(),
                        role: *role,
                    })
                }
                None => {
                    if tx.get(&keys::user(user)).await?.is_none() {
                        return Err(StoreError::UnknownUser(user.clone()));
                    }
                    if conv.members.len() >= CONV_MEMBERS_MAX {
                        return Err(StoreError::NotAllowed(format!(
                            "a conversation has at most {CONV_MEMBERS_MAX} members"
                        )));
                    }
                    set_sorted(&mut next.members, user, true);
                    set_sorted(&mut next.owners, user, *role == Role::Owner);
                    added = Some(user.as_str());
                    Some(ConvEvent::MemberAdded {
                        user: user.clone(),
                        role: *role,
                    })
                }
            }
        }
        ConvChange::RemoveMember { user } => {
            if user != caller && !owner {
                return Err(StoreError::Forbidden("only an owner may remove members"));
            }
            if !conv.is_member(user) {
                None
            } else {
                if conv.owners == [user.as_str()] && conv.members.len() > 1 {
                    return Err(StoreError::NotAllowed(
                        "you are the group's only owner: make another member owner first".into(),
                    ));
                }
                set_sorted(&mut next.members, user, false);
                set_sorted(&mut next.owners, user, false);
                removed = Some(user.as_str());
                Some(ConvEvent::MemberRemoved { user: user.clone() })
            }
        }
        ConvChange::SetTitle { title } => {
            if !owner {
                return Err(StoreError::Forbidden("only an owner may set the title"));
            }
            (conv.title != *title).then(|| {
                next.title = title.clone();
                ConvEvent::TitleChanged {
                    title: title.clone(),
                }
            })
        }
    };
    let mut notify = next.members.clone();
    notify.extend(removed.map(str::to_owned));
    let Some(event) = event else {
        return Ok(Changed {
            conv,
            event: None,
            notify,
        });
    };

    let (last_seq, last_ts) = load_head(tx, &conv).await?;
    let ts = ts.max(last_ts);
    let seq = last_seq + 1;
    let message = Message {
        conv: conv_id,
        seq,
        sender: caller.to_owned(),
        body: String::new(),
        client_msg_id: String::new(),
        ts,
        event: Some(event),
        edited: false,
        deleted: false,
    };
    tx.set(&keys::msg(conv_id, seq), &value::msg(&message));
    tx.set(&keys::conv(conv_id), &value::conv(&next));
    tx.set(&keys::head(conv_id), &value::head(seq, ts));
    // Clear first: when `ts` equals an old entry's the set below must win.
    for member in &conv.members {
        tx.clear(&keys::recent(member, last_ts, conv_id));
    }
    if let Some(user) = added
        && let Some((_, gone_ts)) = load_gone(tx, conv_id, user).await?
    {
        // Back in a group they left: their old place in the recency index goes, and they
        // read all of its history again.
        tx.clear(&keys::recent(user, gone_ts, conv_id));
        tx.clear(&keys::gone(conv_id, user));
    }
    for user in &notify {
        tx.set(&keys::recent(user, ts, conv_id), &value::empty());
    }
    if let Some(user) = added {
        // A newcomer has nothing to catch up on but their addition.
        let cursor = load_cursor(tx, user, conv_id).await?;
        if cursor < last_seq {
            tx.set(&keys::cursor(user, conv_id), &value::int(last_seq));
        }
    }
    if let Some(user) = removed {
        tx.set(&keys::gone(conv_id, user), &value::gone(seq, ts));
    }
    // The caller has seen what they did.
    tx.set(&keys::cursor(caller, conv_id), &value::int(seq));
    tracing::debug!(conv = conv_id, seq, caller, "conversation changed");
    Ok(Changed {
        conv: next,
        event: Some(message),
        notify,
    })
}

/// Inserts `user` into (or with `present == false` removes it from) a sorted list.
fn set_sorted(list: &mut Vec<String>, user: &str, present: bool) {
    match (list.binary_search_by(|m| m.as_str().cmp(user)), present) {
        (Err(at), true) => list.insert(at, user.to_owned()),
        (Ok(at), false) => {
            list.remove(at);
        }
        _ => {}
    }
}

fn corrupt(why: String) -> StoreError {
    StoreError::Kv(KvError::Corrupt(why))
}

async fn load_conv(tx: &Tx, conv_id: ConvId) -> Result<Option<Conversation>, KvError> {
    match tx.get(&keys::conv(conv_id)).await? {
        Some(raw) => value::decode_conv(conv_id, &raw).map(Some),
        None => Ok(None),
    }
}

/// The conversation if it exists and `user` is a member.
async fn load_member_conv(
    tx: &Tx,
    user: &str,
    conv_id: ConvId,
) -> Result<Conversation, StoreError> {
    match load_conv(tx, conv_id).await? {
        Some(conv) if conv.is_member(user) => Ok(conv),
        _ => Err(StoreError::UnknownConversation),
    }
}

/// The conversation if `user` may read it, and the last `seq` they may read: `None` for a
/// member, their removal's for a former member.
async fn load_visible(
    tx: &Tx,
    user: &str,
    conv_id: ConvId,
) -> Result<(Conversation, Option<Seq>), StoreError> {
    let Some(conv) = load_conv(tx, conv_id).await? else {
        return Err(StoreError::UnknownConversation);
    };
    if conv.is_member(user) {
        return Ok((conv, None));
    }
    match load_gone(tx, conv_id, user).await? {
        Some((removed, _)) => Ok((conv, Some(removed))),
        None => Err(StoreError::UnknownConversation),
    }
}

/// The user's settings; the defaults until they change one.
async fn load_settings(tx: &Tx, user: &str) -> Result<Settings, KvError> {
    match tx.get(&keys::setting(user)).await? {
        Some(raw) => value::decode_setting(&raw),
        None => Ok(Settings::default()),
    }
}

/// A former member's removal: its `seq` and time.
async fn load_gone(tx: &Tx, conv_id: ConvId, user: &str) -> Result<Option<(Seq, u64)>, KvError> {
    match tx.get(&keys::gone(conv_id, user)).await? {
        Some(raw) => value::decode_gone(&raw).map(Some),
        None => Ok(None),
    }
}

/// `(last_seq, last_ts)`; a conversation without a head has no messages yet.
async fn load_head(tx: &Tx, conv: &Conversation) -> Result<(Seq, u64), KvError> {
    match tx.get(&keys::head(conv.conv_id)).await? {
        Some(raw) => value::decode_head(&raw),
        None => Ok((0, conv.created_ts)),
    }
}

async fn load_cursor(tx: &Tx, user: &str, conv_id: ConvId) -> Result<Seq, KvError> {
    match tx.get(&keys::cursor(user, conv_id)).await? {
        Some(raw) => value::decode_int(keys::subspace::CURSOR, &raw),
        None => Ok(0),
    }
}

async fn load_message(tx: &Tx, conv_id: ConvId, seq: Seq) -> Result<Option<Message>, KvError> {
    match tx.get(&keys::msg(conv_id, seq)).await? {
        Some(raw) => value::decode_msg(conv_id, seq, &raw).map(Some),
        None => Ok(None),
    }
}

/// Fills in the body of each `edited` event: the edited message's body now (none once it is
/// deleted). From the same page when it holds the message, else one read each.
async fn fill_edits(tx: &Tx, conv_id: ConvId, messages: &mut [Message]) -> Result<(), KvError> {
    let first = messages.first().map_or(0, |m| m.seq);
    for i in 0..messages.len() {
        let Some(ConvEvent::Edited { seq: at }) = messages[i].event else {
            continue;
        };
        let in_page = at
            .checked_sub(first)
            .and_then(|k| messages.get(k as usize))
            .filter(|m| m.seq == at)
            .map(|m| m.body.clone());
        let body = match in_page {
            Some(body) => body,
            None => load_message(tx, conv_id, at)
                .await?
                .map(|m| m.body)
                .unwrap_or_default(),
        };
        messages[i].body = body;
    }
    Ok(())
}

fn decode_messages(
    conv_id: ConvId,
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<Vec<Message>, KvError> {
    pairs
        .into_iter()
        .map(|(key, raw)| match Key::decode(&key)? {
            Key::Msg { conv, seq } if conv == conv_id => value::decode_msg(conv, seq, &raw),
            other => Err(KvError::Corrupt(format!(
                "{other:?} in the messages of conversation {conv_id}"
            ))),
        })
        .collect()
}
