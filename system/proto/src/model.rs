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
    pub title: Option<String>,
    pub created_ts: u64,
}

impl Conversation {
    pub fn is_member(&self, user: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(user))
            .is_ok()
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
