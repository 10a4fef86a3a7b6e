//! REST bodies of the v1 protocol.

use crate::model::{ConvEvent, ConvId, ConvKind, Conversation, Message, Role, Seq};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCreated {
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub token: String,
    pub username: String,
    /// Seconds since the Unix epoch (the token's `exp`).
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConversation {
    pub members: Vec<String>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationView {
    pub conv_id: ConvId,
    pub kind: ConvKind,
    pub members: Vec<String>,
    /// The members who are owners (empty for a direct conversation).
    #[serde(default)]
    pub owners: Vec<String>,
    pub title: Option<String>,
}

impl From<&Conversation> for ConversationView {
    fn from(c: &Conversation) -> Self {
        ConversationView {
            conv_id: c.conv_id,
            kind: c.kind,
            members: c.members.clone(),
            owners: c.owners.clone(),
            title: c.title.clone(),
        }
    }
}

/// A message as REST shows it (history, inbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub conv_id: ConvId,
    pub seq: Seq,
    pub sender: String,
    pub body: String,
    pub client_msg_id: String,
    pub ts: u64,
    /// A change to the conversation (see the protocol's events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ConvEvent>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        MessageView {
            conv_id: m.conv,
            seq: m.seq,
            sender: m.sender.clone(),
            body: m.body.clone(),
            client_msg_id: m.client_msg_id.clone(),
            ts: m.ts,
            event: m.event.clone(),
            edited: m.edited,
            deleted: m.deleted,
        }
    }
}

impl From<MessageView> for Message {
    fn from(m: MessageView) -> Self {
        Message {
            conv: m.conv_id,
            seq: m.seq,
            sender: m.sender,
            body: m.body,
            client_msg_id: m.client_msg_id,
            ts: m.ts,
            event: m.event,
            edited: m.edited,
            deleted: m.deleted,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuery {
    pub before: Option<Seq>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// Ascending `seq`.
    pub messages: Vec<MessageView>,
    /// The smallest `seq` of this page when older messages exist, else `null`.
    pub next_before: Option<Seq>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxQuery {
    pub limit: Option<u32>,
    /// The `next_before` of the page before: conversations less recently active than it.
    pub before: Option<InboxCursor>,
}

/// A place in a user's inbox: a conversation's last activity (ms) and id, written
/// `<ts>.<conv_id>`. Opaque to clients: they pass back the `next_before` they were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InboxCursor {
    pub ts: u64,
    pub conv: ConvId,
}

impl std::fmt::Display for InboxCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.ts, self.conv)
    }
}

impl std::str::FromStr for InboxCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{text}` is not an inbox cursor (a `next_before` from the inbox)");
        let (ts, conv) = text.split_once('.').ok_or_else(bad)?;
        Ok(InboxCursor {
            ts: ts.parse().map_err(|_| bad())?,
            conv: conv.parse().map_err(|_| bad())?,
        })
    }
}

impl TryFrom<String> for InboxCursor {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<InboxCursor> for String {
    fn from(cursor: InboxCursor) -> String {
        cursor.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    pub conv_id: ConvId,
    pub kind: ConvKind,
    /// The members now: a user removed from a group still finds it here (without
    /// themself), with `last_seq` and `last_message` at their removal.
    pub members: Vec<String>,
    #[serde(default)]
    pub owners: Vec<String>,
    pub title: Option<String>,
    pub last_seq: Seq,
    pub last_message: Option<MessageView>,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox {
    /// Most recent activity first.
    pub conversations: Vec<InboxEntry>,
    /// Where the next page starts (`?before=`) when less recent conversations exist, else
    /// `null`.
    #[serde(default)]
    pub next_before: Option<InboxCursor>,
}

/// One member's read cursor: they have read the conversation up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCursor {
    pub user: String,
    pub seq: Seq,
}

/// `GET /v1/conversations/{id}/reads`: the members' read cursors, by username; members who
/// turned receipts off are left out (the caller's own is always there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reads {
    pub reads: Vec<ReadCursor>,
}

/// A user's settings (`GET /v1/settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Others see how far this user has read (receipts, `GET .../reads`).
    pub receipts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { receipts: true }
    }
}

/// `PATCH /v1/settings`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    #[serde(default)]
    pub receipts: Option<bool>,
}

/// `PUT /v1/conversations/{id}/members/{user}`: adds `user`, or sets a member's role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// `member` when absent.
    #[serde(default)]
    pub role: Option<Role>,
}

/// `PATCH /v1/conversations/{id}`: a group's new title (`null` removes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TitleUpdate {
    pub title: Option<String>,
}

/// The answer to a change of members or title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvChanged {
    /// The conversation after the change, as the caller may see it.
    pub conversation: ConversationView,
    /// The change's event in the conversation's `seq` stream; `null` when nothing changed
    /// (the member was already there with that role, or already gone, or this repeats a
    /// change already applied).
    pub seq: Option<Seq>,
}
