//! Identifiers and records shared by every component, with their validation.

use crate::error::ApiError;
use crate::limits::*;
use serde::{Deserialize, Serialize};

/// A conversation id, allocated by the store from a counter starting at 1.
pub type ConvId = u64;
/// A message's position in its conversation: gapless, starting at 1.
pub type Seq = u64;
/// Identifies a connection server in the registry.
pub type ServerId = u32;
/// Identifies one WebSocket on its connection server; never reused by a server's process.
pub type ConnId = u64;

/// Where one connected device of a user can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnAddr {
    pub server: ServerId,
    pub conn: ConnId,
}

impl std::fmt::Display for ConnAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.server, self.conn)
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: String,
    pub body: String,
    pub client_msg_id: String,
    /// Milliseconds since the Unix epoch, from the app server's clock at commit.
    pub ts: u64,
    /// Set for a change to the conversation (its `sender` made it; `body` and
    /// `client_msg_id` are empty): changes take their place in the `seq` stream, so they are
    /// durable, ordered and synced like messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ConvEvent>,
    /// Its sender changed the body after sending it (an `edited` event says when).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    /// Its sender deleted it: the body is gone (from storage too), the place in the `seq`
    /// stream stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// A send that changes an earlier message of the same sender instead of adding one. The
/// change itself takes the next `seq` (an `edited` or `deleted` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amend {
    /// The message at this `seq` gets the send's body.
    Edit(Seq),
    /// The message at this `seq` loses its body.
    Delete(Seq),
}

impl Amend {
    pub fn target(self) -> Seq {
        match self {
            Amend::Edit(seq) | Amend::Delete(seq) => seq,
        }
    }
}

/// A member's standing in a group: owners add and remove members, set roles and the title.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Role, ApiError> {
        match text {
            "owner" => Ok(Role::Owner),
            "member" => Ok(Role::Member),
            other => Err(ApiError::bad_request(format!(
                "`{other}` is not a role (owner or member)"
            ))),
        }
    }
}

/// A change to a conversation, recorded in its `seq` stream (see [`Message::event`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConvEvent {
    /// `user` became a member with `role`.
    MemberAdded {
        user: String,
        role: Role,
    },
    /// `user` is no longer a member: removed by an owner, or left (the event's sender is
    /// then `user`). They keep the history up to this event and receive nothing after it.
    MemberRemoved {
        user: String,
    },
    /// The member `user` has `role` now.
    RoleChanged {
        user: String,
        role: Role,
    },
    TitleChanged {
        title: Option<String>,
    },
    /// The message at `seq` was edited by its sender; this event's `body` is its body now.
    Edited {
        seq: Seq,
    },
    /// The message at `seq` was deleted by its sender.
    Deleted {
        seq: Seq,
    },
}

impl Message {
    /// An upper bound on this message's size as JSON, without encoding it: the body's
    /// escapes counted at their longest. Pages are cut by it
    /// ([`crate::limits::PAGE_BYTES_MAX`]).
    pub fn json_bytes_max(&self) -> usize {
        let body: usize = self
            .body
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' => 2,
                0..0x20 | 0x7f => 6,
                _ => 1,
            })
            .sum();
        // The sender and the id were validated: their alphabets need no escapes. An event
        // names a user and a role, or a title (escaped at its longest).
        let event = match &self.event {
            None => 0,
            Some(ConvEvent::TitleChanged { title }) => {
                64 + 6 * title.as_ref().map_or(0, String::len)
            }
            Some(ConvEvent::Edited { .. } | ConvEvent::Deleted { .. }) => 64,
            Some(_) => 64 + USERNAME_LEN_MAX,
        };
        body + self.sender.len() + self.client_msg_id.len() + event + 256
    }
}

/// Cuts `messages` (ascending `seq`) to at most [`crate::limits::PAGE_BYTES_MAX`] of JSON, keeping
/// the `keep` end, and never to nothing: one message always fits a page.
pub fn cut_page(messages: &mut Vec<Message>, keep: PageEnd) {
    let mut bytes = 0;
    let fits = |m: &Message, bytes: &mut usize| {
        *bytes += m.json_bytes_max();
        *bytes <= crate::limits::PAGE_BYTES_MAX
    };
    match keep {
        PageEnd::Oldest => {
            let n = messages.iter().take_while(|m| fits(m, &mut bytes)).count();
            messages.truncate(n.max(1));
        }
        PageEnd::Newest => {
            let n = messages
                .iter()
                .rev()
                .take_while(|m| fits(m, &mut bytes))
                .count();
            let drop = messages.len().saturating_sub(n.max(1));
            messages.drain(..drop);
        }
    }
}

/// Which end of a page [`cut_page`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageEnd {
    /// A `sync` page: it continues after its newest message.
    Oldest,
    /// A history page: it continues before its oldest message.
    Newest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    Direct,
    Group,
}

impl ConvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvKind::Direct => "direct",
            ConvKind::Group => "group",
        }
    }
}

/// A conversation's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub conv_id: ConvId,
    pub kind: ConvKind,
    /// Sorted, without duplicates, creator included.
    pub members: Vec<String>,
    /// The members who are owners, sorted: a group's creator at first. A direct
    /// conversation has none (its members never change).
    pub owners: Vec<String>,
    pub title: Option<String>,
    pub created_ts: u64,
}

impl Conversation {
    pub fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
    }

    pub fn is_owner(&self, user: &str) -> bool {
        self.owners
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
    }

    pub fn role(&self, user: &str) -> Option<Role> {
        match (self.is_member(user), self.is_owner(user)) {
            (true, true) => Some(Role::Owner),
            (true, false) => Some(Role::Member),
            (false, _) => None,
        }
    }
}

/// `a-z0-9_`, 3 to 32 characters.
pub fn validate_username(name: &str) -> Result<(), ApiError> {
    let ok_len = (USERNAME_LEN_MIN..=USERNAME_LEN_MAX).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "username must be {USERNAME_LEN_MIN}-{USERNAME_LEN_MAX} characters of a-z, 0-9 and _"
        )))
    }
}

pub fn validate_password(password: &str) -> Result<(), ApiError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "password must be {PASSWORD_BYTES_MIN}-{PASSWORD_BYTES_MAX} bytes"
        )))
    }
}

/// `A-Za-z0-9_-`, 1 to 64 characters.
pub fn is_valid_client_msg_id(id: &str) -> bool {
    (1..=CLIENT_MSG_ID_LEN_MAX).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Milliseconds since the Unix epoch. Under madsim `SystemTime` is simulated, so this is
/// the clock seam for every component.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("bob").is_ok());
        assert!(validate_username("a_1").is_ok());
        assert!(validate_username(&"x".repeat(32)).is_ok());
        assert!(validate_username("ab").is_err());
        assert!(validate_username(&"x".repeat(33)).is_err());
        assert!(validate_username("Bob").is_err());
        assert!(validate_username("bo b").is_err());
        assert!(validate_username("bö").is_err());
    }

    #[test]
    fn client_msg_ids() {
        assert!(is_valid_client_msg_id("a"));
        assert!(is_valid_client_msg_id("A-z_09"));
        assert!(is_valid_client_msg_id(&"x".repeat(64)));
        assert!(!is_valid_client_msg_id(""));
        assert!(!is_valid_client_msg_id(&"x".repeat(65)));
        assert!(!is_valid_client_msg_id("a b"));
        assert!(!is_valid_client_msg_id("a.b"));
    }

    #[test]
    fn passwords() {
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"p".repeat(128)).is_ok());
        assert!(validate_password(&"p".repeat(129)).is_err());
    }
}

#[cfg(test)]
mod page_tests {
    use super::*;

    fn message(seq: Seq, body: &str) -> Message {
        Message {
            conv: 1,
            seq,
            sender: "ann".into(),
            body: body.into(),
            client_msg_id: format!("m{seq}"),
            ts: 0,
            event: None,
            edited: false,
            deleted: false,
        }
    }

    fn seqs(messages: &[Message]) -> Vec<Seq> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn the_estimate_bounds_the_real_encoding() {
        let worst = message(7, &"\u{1}\"\\\u{7f}".repeat(BODY_BYTES_MAX / 4));
        let encoded = serde_json::to_vec(&worst).expect("encode").len();
        assert!(
            encoded <= worst.json_bytes_max(),
            "{encoded} > {}",
            worst.json_bytes_max()
        );
        assert!(worst.json_bytes_max() <= MESSAGE_JSON_BYTES_MAX);
    }

    /// 200 bodies of 4,096 escaped control characters are 4.9 MB of JSON; a page keeps what
    /// fits in PAGE_BYTES_MAX from the end it continues from, and ordinary pages stay whole.
    #[test]
    fn pages_are_cut_in_bytes_from_the_end_they_continue_from() {
        let worst = "\u{1}".repeat(BODY_BYTES_MAX);
        let all: Vec<Message> = (1..=200).map(|seq| message(seq, &worst)).collect();
        let mut sync = all.clone();
        cut_page(&mut sync, PageEnd::Oldest);
        let fit = PAGE_BYTES_MAX / all[0].json_bytes_max();
        assert_eq!(seqs(&sync), (1..=fit as Seq).collect::<Vec<_>>());
        let mut history = all.clone();
        cut_page(&mut history, PageEnd::Newest);
        assert_eq!(
            seqs(&history),
            ((201 - fit as Seq)..=200).collect::<Vec<_>>()
        );
        let bytes: usize = history
            .iter()
            .map(|m| serde_json::to_vec(m).unwrap().len())
            .sum();
        assert!(bytes <= PAGE_BYTES_MAX);

        let mut ordinary: Vec<Message> = (1..=200).map(|seq| message(seq, "hello")).collect();
        cut_page(&mut ordinary, PageEnd::Newest);
        assert_eq!(ordinary.len(), 200);
        let mut empty = Vec::new();
        cut_page(&mut empty, PageEnd::Oldest);
        assert!(empty.is_empty());
    }
}
