//! The chat keyspace: every key and value the chat store writes, in one place.
//!
//! Keys and values are FoundationDB tuples (`foundationdb-tuple`), so a FoundationDB backend
//! stores byte-identical data and tuple order is key order (integers compare numerically,
//! strings bytewise). The layout, who writes each subspace and which reads use it, is
//! documented in `system/store/KEYS.md`; keep the two in step.
//!
//! Decoding never panics: anything unexpected (an unknown subspace, a wrong shape) is a
//! [`KvError::Corrupt`].

use crate::kv::KvError;
use chat_proto::rest::Settings;
use chat_proto::{ConvEvent, ConvId, ConvKind, Conversation, Message, Role, Seq};
use foundationdb_tuple::{TuplePack, TupleUnpack, pack, unpack};

/// The first element of every key: one subspace per model.
pub mod subspace {
    pub const USER: &str = "user";
    pub const CONV: &str = "conv";
    pub const HEAD: &str = "head";
    pub const DIRECT: &str = "direct";
    pub const MSG: &str = "msg";
    pub const IDEM: &str = "idem";
    pub const RECENT: &str = "recent";
    pub const CURSOR: &str = "cursor";
    pub const COUNTER: &str = "counter";
    pub const GONE: &str = "gone";
    pub const SETTING: &str = "setting";

    pub const ALL: [&str; 11] = [
        USER, CONV, HEAD, DIRECT, MSG, IDEM, RECENT, CURSOR, COUNTER, GONE, SETTING,
    ];
}

/// The name of the conversation id counter under `("counter", name)`.
pub const COUNTER_CONV: &str = "conv";

/// A decoded key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    User {
        username: String,
    },
    Conv {
        conv: ConvId,
    },
    Head {
        conv: ConvId,
    },
    /// `user_a < user_b`.
    Direct {
        user_a: String,
        user_b: String,
    },
    Msg {
        conv: ConvId,
        seq: Seq,
    },
    Idem {
        sender: String,
        client_msg_id: String,
    },
    Recent {
        user: String,
        ts: u64,
        conv: ConvId,
    },
    Cursor {
        user: String,
        conv: ConvId,
    },
    Counter {
        name: String,
    },
    /// A former member of a group, with the `seq` of their removal as value.
    Gone {
        conv: ConvId,
        user: String,
    },
    /// A user's settings.
    Setting {
        user: String,
    },
}

impl Key {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::User { username } => user(username),
            Key::Conv { conv: c } => conv(*c),
            Key::Head { conv } => head(*conv),
            Key::Direct { user_a, user_b } => direct(user_a, user_b),
            Key::Msg { conv, seq } => msg(*conv, *seq),
            Key::Idem {
                sender,
                client_msg_id,
            } => idem(sender, client_msg_id),
            Key::Recent { user, ts, conv } => recent(user, *ts, *conv),
            Key::Cursor { user, conv } => cursor(user, *conv),
            Key::Counter { name } => counter(name),
            Key::Gone { conv, user } => gone(*conv, user),
            Key::Setting { user } => setting(user),
        }
    }

    /// Decodes a key of the chat keyspace; unknown subspaces and malformed keys are corrupt.
    pub fn decode(bytes: &[u8]) -> Result<Key, KvError> {
        let corrupt = |why: String| KvError::Corrupt(format!("key {}: {why}", printable(bytes)));
        let Some((tag, rest)) = split_subspace(bytes) else {
            return Err(corrupt("unknown subspace".into()));
        };
        let fields = |e: foundationdb_tuple::PackError| corrupt(format!("bad `{tag}` key: {e}"));
        Ok(match tag {
            subspace::USER => {
                let (username,) = unpack::<(String,)>(rest).map_err(fields)?;
                Key::User { username }
            }
            subspace::CONV => Key::Conv {
                conv: unpack::<(u64,)>(rest).map_err(fields)?.0,
            },
            subspace::HEAD => Key::Head {
                conv: unpack::<(u64,)>(rest).map_err(fields)?.0,
            },
            subspace::DIRECT => {
                let (user_a, user_b) = unpack(rest).map_err(fields)?;
                Key::Direct { user_a, user_b }
            }
            subspace::MSG => {
                let (conv, seq) = unpack(rest).map_err(fields)?;
                Key::Msg { conv, seq }
            }
            subspace::IDEM => {
                let (sender, client_msg_id) = unpack(rest).map_err(fields)?;
                Key::Idem {
                    sender,
                    client_msg_id,
                }
            }
            subspace::RECENT => {
                let (user, ts, conv) = unpack(rest).map_err(fields)?;
                Key::Recent { user, ts, conv }
            }
            subspace::CURSOR => {
                let (user, conv) = unpack(rest).map_err(fields)?;
                Key::Cursor { user, conv }
            }
            subspace::COUNTER => Key::Counter {
                name: unpack::<(String,)>(rest).map_err(fields)?.0,
            },
            subspace::GONE => {
                let (conv, user) = unpack(rest).map_err(fields)?;
                Key::Gone { conv, user }
            }
            subspace::SETTING => Key::Setting {
                user: unpack::<(String,)>(rest).map_err(fields)?.0,
            },
            _ => return Err(corrupt("unknown subspace".into())),
        })
    }
}

/// The known subspace a key starts with, and the rest of the key.
fn split_subspace(bytes: &[u8]) -> Option<(&'static str, &[u8])> {
    subspace::ALL.into_iter().find_map(|tag| {
        let prefix = pack(&(tag,));
        bytes
            .strip_prefix(prefix.as_slice())
            .map(|rest| (tag, rest))
    })
}

/// Bytes shown in error messages: printable ASCII as is, the rest as `\xNN`, at most 64.
pub(crate) fn printable(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(64) {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if bytes.len() > 64 {
        out.push_str("...");
    }
    out
}

/// The range of keys extending `prefix` (a packed tuple), as FoundationDB's `Subspace::range`.
fn children(prefix: &impl TuplePack) -> (Vec<u8>, Vec<u8>) {
    let prefix = pack(prefix);
    let mut begin = prefix.clone();
    begin.push(0x00);
    let mut end = prefix;
    end.push(0xff);
    (begin, end)
}

pub fn user(username: &str) -> Vec<u8> {
    pack(&(subspace::USER, username))
}

pub fn conv(conv: ConvId) -> Vec<u8> {
    pack(&(subspace::CONV, conv))
}

pub fn head(conv: ConvId) -> Vec<u8> {
    pack(&(subspace::HEAD, conv))
}

/// The direct-conversation key of a pair, in either order.
pub fn direct(a: &str, b: &str) -> Vec<u8> {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    pack(&(subspace::DIRECT, a, b))
}

pub fn msg(conv: ConvId, seq: Seq) -> Vec<u8> {
    pack(&(subspace::MSG, conv, seq))
}

/// Every message of a conversation.
pub fn msgs(conv: ConvId) -> (Vec<u8>, Vec<u8>) {
    children(&(subspace::MSG, conv))
}

pub fn idem(sender: &str, client_msg_id: &str) -> Vec<u8> {
    pack(&(subspace::IDEM, sender, client_msg_id))
}

pub fn recent(user: &str, ts: u64, conv: ConvId) -> Vec<u8> {
    pack(&(subspace::RECENT, user, ts, conv))
}

/// A user's inbox recency index, oldest first.
pub fn recents(user: &str) -> (Vec<u8>, Vec<u8>) {
    children(&(subspace::RECENT, user))
}

pub fn cursor(user: &str, conv: ConvId) -> Vec<u8> {
    pack(&(subspace::CURSOR, user, conv))
}

pub fn counter(name: &str) -> Vec<u8> {
    pack(&(subspace::COUNTER, name))
}

pub fn gone(conv: ConvId, user: &str) -> Vec<u8> {
    pack(&(subspace::GONE, conv, user))
}

pub fn setting(user: &str) -> Vec<u8> {
    pack(&(subspace::SETTING, user))
}

/// Value encodings, also tuples.
pub mod value {
    use super::*;

    fn decode<'de, T: TupleUnpack<'de>>(what: &str, bytes: &'de [u8]) -> Result<T, KvError> {
        unpack(bytes)
            .map_err(|e| KvError::Corrupt(format!("`{what}` value {}: {e}", printable(bytes))))
    }

    /// `("user", username)` -> `(password_hash, created_ts)`.
    pub fn user(password_hash: &str, created_ts: u64) -> Vec<u8> {
        pack(&(password_hash, created_ts))
    }

    pub fn decode_user(bytes: &[u8]) -> Result<(String, u64), KvError> {
        decode(subspace::USER, bytes)
    }

    /// `("conv", conv_id)` -> `(kind, title or null, created_ts, (members...))`.
    pub fn conv(c: &Conversation) -> Vec<u8> {
        pack(&(
            c.kind.as_str(),
            &c.title,
            c.created_ts,
            &c.members,
            &c.owners,
        ))
    }

    type ConvFields = (String, Option<String>, u64, Vec<String>, Vec<String>);

    /// Records written before roles existed have no owners: every member of such a group
    /// is an owner (they could all manage it as much as anyone could: nobody could).
    pub fn decode_conv(conv_id: ConvId, bytes: &[u8]) -> Result<Conversation, KvError> {
        let (kind, title, created_ts, members, owners): ConvFields =
            match unpack::<ConvFields>(bytes) {
                Ok(fields) => fields,
                Err(_) => {
                    let (kind, title, created_ts, members): (
                        String,
                        Option<String>,
                        u64,
                        Vec<String>,
                    ) = decode(subspace::CONV, bytes)?;
                    let owners = if kind == "group" {
                        members.clone()
                    } else {
                        Vec::new()
                    };
                    (kind, title, created_ts, members, owners)
                }
            };
        let kind = match kind.as_str() {
            "direct" => ConvKind::Direct,
            "group" => ConvKind::Group,
            other => {
                return Err(KvError::Corrupt(format!(
                    "conversation {conv_id} has unknown kind `{other}`"
                )));
            }
        };
        if !members.is_sorted() || !owners.is_sorted() {
            return Err(KvError::Corrupt(format!(
                "conversation {conv_id} has unsorted members or owners"
            )));
        }
        Ok(Conversation {
            conv_id,
            kind,
            members,
            owners,
            title,
            created_ts,
        })
    }

    /// `("head", conv_id)` -> `(last_seq, last_ts)`.
    pub fn head(last_seq: Seq, last_ts: u64) -> Vec<u8> {
        pack(&(last_seq, last_ts))
    }

    pub fn decode_head(bytes: &[u8]) -> Result<(Seq, u64), KvError> {
        decode(subspace::HEAD, bytes)
    }

    /// `("msg", conv, seq)` -> `(sender, client_msg_id, body, ts)`.
    /// An event as a tuple: its kind, the user it names (or the title), the role, and the
    /// message it amends.
    type EventFields = (String, Option<String>, Option<String>, Option<u64>);

    fn event_fields(event: &ConvEvent) -> EventFields {
        let (kind, text, role, seq) = match event {
            ConvEvent::MemberAdded { user, role } => {
                ("added", Some(user.clone()), Some(*role), None)
            }
            ConvEvent::MemberRemoved { user } => ("removed", Some(user.clone()), None, None),
            ConvEvent::RoleChanged { user, role } => {
                ("role", Some(user.clone()), Some(*role), None)
            }
            ConvEvent::TitleChanged { title } => ("title", title.clone(), None, None),
            ConvEvent::Edited { seq } => ("edited", None, None, Some(*seq)),
            ConvEvent::Deleted { seq } => ("deleted", None, None, Some(*seq)),
        };
        (kind.into(), text, role.map(|r| r.as_str().into()), seq)
    }

    fn decode_event((kind, text, role, seq): EventFields) -> Result<ConvEvent, KvError> {
        let bad = || KvError::Corrupt(format!("event `{kind}` with {text:?}, {role:?}, {seq:?}"));
        let parse_role = |role: Option<&str>| -> Result<Role, KvError> {
            role.ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let user = || text.clone().ok_or_else(bad);
        Ok(match kind.as_str() {
            "added" => ConvEvent::MemberAdded {
                user: user()?,
                role: parse_role(role.as_deref())?,
            },
            "removed" => ConvEvent::MemberRemoved { user: user()? },
            "role" => ConvEvent::RoleChanged {
                user: user()?,
                role: parse_role(role.as_deref())?,
            },
            "title" => ConvEvent::TitleChanged {
                title: text.clone(),
            },
            "edited" => ConvEvent::Edited {
                seq: seq.ok_or_else(bad)?,
            },
            "deleted" => ConvEvent::Deleted {
                seq: seq.ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        })
    }

    /// A plain message is `(sender, client id, body, ts)` (the shape messages had before
    /// events and edits existed); an event, or an edited or deleted message, adds `(event or
    /// null, edited, deleted)` after them.
    pub fn msg(m: &Message) -> Vec<u8> {
        match (&m.event, m.edited, m.deleted) {
            (None, false, false) => pack(&(&m.sender, &m.client_msg_id, &m.body, m.ts)),
            (event, edited, deleted) => pack(&(
                &m.sender,
                &m.client_msg_id,
                &m.body,
                m.ts,
                event.as_ref().map(event_fields),
                edited,
                deleted,
            )),
        }
    }

    type FullMsgFields = (String, String, String, u64, Option<EventFields>, bool, bool);

    pub fn decode_msg(conv: ConvId, seq: Seq, bytes: &[u8]) -> Result<Message, KvError> {
        let (sender, client_msg_id, body, ts, event, edited, deleted) =
            match unpack::<FullMsgFields>(bytes) {
                Ok((sender, id, body, ts, event, edited, deleted)) => {
                    let event = event.map(decode_event).transpose()?;
                    (sender, id, body, ts, event, edited, deleted)
                }
                Err(_) => {
                    let (sender, id, body, ts) = decode(subspace::MSG, bytes)?;
                    (sender, id, body, ts, None, false, false)
                }
            };
        Ok(Message {
            conv,
            seq,
            sender,
            body,
            client_msg_id,
            ts,
            event,
            edited,
            deleted,
        })
    }

    pub fn idem(conv: ConvId, seq: Seq) -> Vec<u8> {
        pack(&(conv, seq))
    }

    pub fn decode_idem(bytes: &[u8]) -> Result<(ConvId, Seq), KvError> {
        decode(subspace::IDEM, bytes)
    }

    /// A single integer: `("direct", a, b)` -> conv_id, `("cursor", ..)` -> read_seq,
    /// `("counter", ..)` -> last allocated id.
    /// A former member's removal: its `seq` and time.
    pub fn gone(seq: Seq, ts: u64) -> Vec<u8> {
        pack(&(seq, ts))
    }

    pub fn decode_gone(bytes: &[u8]) -> Result<(Seq, u64), KvError> {
        decode(subspace::GONE, bytes)
    }

    /// A user's settings: `(receipts: bool)`.
    pub fn setting(settings: &Settings) -> Vec<u8> {
        pack(&(settings.receipts,))
    }

    pub fn decode_setting(bytes: &[u8]) -> Result<Settings, KvError> {
        let (receipts,) = decode::<(bool,)>(subspace::SETTING, bytes)?;
        Ok(Settings { receipts })
    }

    pub fn int(n: u64) -> Vec<u8> {
        pack(&(n,))
    }

    pub fn decode_int(what: &str, bytes: &[u8]) -> Result<u64, KvError> {
        decode::<(u64,)>(what, bytes).map(|(n,)| n)
    }

    /// `("recent", ..)` -> `()`: the empty tuple, zero bytes.
    pub fn empty() -> Vec<u8> {
        pack(&())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips() {
        let keys = [
            Key::User {
                username: "alice".into(),
            },
            Key::Conv { conv: 7 },
            Key::Head { conv: u64::MAX },
            Key::Direct {
                user_a: "alice".into(),
                user_b: "bob".into(),
            },
            Key::Msg { conv: 7, seq: 300 },
            Key::Idem {
                sender: "bob".into(),
                client_msg_id: "m-1".into(),
            },
            Key::Recent {
                user: "bob".into(),
                ts: 1_700_000_000_000,
                conv: 9,
            },
            Key::Cursor {
                user: "bob".into(),
                conv: 9,
            },
            Key::Counter {
                name: COUNTER_CONV.into(),
            },
            Key::Gone {
                conv: 9,
                user: "bob".into(),
            },
            Key::Setting { user: "bob".into() },
        ];
        for key in keys {
            assert_eq!(Key::decode(&key.encode()), Ok(key.clone()), "{key:?}");
        }
    }

    #[test]
    fn keys_are_plain_foundationdb_tuples() {
        // Byte-identical to what a FoundationDB binding packs for the same tuple.
        assert_eq!(msg(1, 2), b"\x02msg\x00\x15\x01\x15\x02".to_vec());
        assert_eq!(user("a"), b"\x02user\x00\x02a\x00".to_vec());
        assert_eq!(value::empty(), Vec::<u8>::new());
    }

    #[test]
    fn unknown_or_malformed_keys_are_corrupt_not_panics() {
        let cases: [&[u8]; 6] = [
            b"",
            b"\x02nope\x00\x15\x01",
            b"\x02msg\x00\x02x\x00",
            b"\x02msg\x00\x15",
            b"\xff\xff",
            b"\x02user\x00\x02a\x00\x15\x01",
        ];
        for bytes in cases {
            assert!(
                matches!(Key::decode(bytes), Err(KvError::Corrupt(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn message_order_is_numeric_and_ranges_contain_exactly_the_conversation() {
        assert!(msg(1, 9) < msg(1, 10));
        assert!(msg(1, 255) < msg(1, 256));
        assert!(msg(1, u64::MAX) < msg(2, 0));
        let (begin, end) = msgs(1);
        assert!(begin <= msg(1, 0) && msg(1, u64::MAX) < end);
        assert!(msg(0, u64::MAX) < begin && end <= msg(2, 0));
        let (begin, end) = recents("bob");
        assert!(begin <= recent("bob", 0, 0) && recent("bob", u64::MAX, u64::MAX) < end);
        assert!(recent("bo", u64::MAX, u64::MAX) < begin && end <= recent("boba", 0, 0));
        assert!(recent("bob", 5, 100) < recent("bob", 6, 1));
    }

    #[test]
    fn direct_keys_ignore_argument_order() {
        assert_eq!(direct("bob", "alice"), direct("alice", "bob"));
    }

    #[test]
    fn values_round_trip_and_reject_garbage() {
        let c = Conversation {
            conv_id: 3,
            kind: ConvKind::Group,
            members: vec!["a".into(), "b".into(), "c".into()],
            owners: vec!["b".into()],
            title: Some("t".into()),
            created_ts: 5,
        };
        assert_eq!(value::decode_conv(3, &value::conv(&c)), Ok(c.clone()));
        // A group written before roles existed: every member is an owner.
        let old = pack(&("group", Some("t"), 5u64, vec!["a", "b", "c"]));
        let every_owner = Conversation {
            owners: c.members.clone(),
            ..c.clone()
        };
        assert_eq!(value::decode_conv(3, &old), Ok(every_owner));
        let d = Conversation {
            kind: ConvKind::Direct,
            title: None,
            members: vec!["a".into(), "b".into()],
            owners: Vec::new(),
            ..c
        };
        assert_eq!(value::decode_conv(3, &value::conv(&d)), Ok(d));
        let m = Message {
            conv: 1,
            seq: 2,
            sender: "a".into(),
            body: "hi\0there".into(),
            client_msg_id: "x".into(),
            ts: 9,
            event: None,
            edited: false,
            deleted: false,
        };
        // Plain messages keep the shape they had before events existed.
        assert_eq!(value::msg(&m), pack(&("a", "x", "hi\0there", 9u64)));
        assert_eq!(value::decode_msg(1, 2, &value::msg(&m)), Ok(m.clone()));
        let events = [
            ConvEvent::MemberAdded {
                user: "c".into(),
                role: Role::Owner,
            },
            ConvEvent::MemberRemoved { user: "c".into() },
            ConvEvent::RoleChanged {
                user: "c".into(),
                role: Role::Member,
            },
            ConvEvent::TitleChanged { title: None },
            ConvEvent::TitleChanged {
                title: Some("new".into()),
            },
            ConvEvent::Edited { seq: 7 },
            ConvEvent::Deleted { seq: 8 },
        ];
        for event in events {
            let e = Message {
                event: Some(event),
                body: String::new(),
                client_msg_id: String::new(),
                ..m.clone()
            };
            assert_eq!(value::decode_msg(1, 2, &value::msg(&e)), Ok(e));
        }
        for (edited, deleted) in [(true, false), (false, true), (true, true)] {
            let amended = Message {
                edited,
                deleted,
                ..m.clone()
            };
            assert_eq!(value::decode_msg(1, 2, &value::msg(&amended)), Ok(amended));
        }
        let unknown = pack(&(
            "a",
            "",
            "",
            9u64,
            Some(("exploded", Some("c"), None::<String>, None::<u64>)),
            false,
            false,
        ));
        assert!(matches!(
            value::decode_msg(1, 2, &unknown),
            Err(KvError::Corrupt(_))
        ));
        assert_eq!(value::decode_head(&value::head(4, 8)), Ok((4, 8)));
        let off = Settings { receipts: false };
        assert_eq!(value::decode_setting(&value::setting(&off)), Ok(off));
        assert_eq!(value::decode_int("cursor", &value::int(12)), Ok(12));
        assert!(matches!(
            value::decode_head(b"\x02x\x00"),
            Err(KvError::Corrupt(_))
        ));
        assert!(matches!(
            value::decode_conv(1, &pack(&("weird", None::<String>, 1u64, vec!["a"]))),
            Err(KvError::Corrupt(_))
        ));
    }
}
