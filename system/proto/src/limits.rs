//! Every limit of the v1 protocol. Units and qualifiers come last in names.

/// A WebSocket frame (or reassembled message) larger than this closes the connection with 1009.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// A message body is 1..=this many bytes of UTF-8.
pub const BODY_BYTES_MAX: usize = 4096;
/// A client message id is 1..=this many characters of `A-Za-z0-9_-`.
pub const CLIENT_MSG_ID_LEN_MAX: usize = 64;
/// Usernames are this many characters of `a-z0-9_`.
pub const USERNAME_LEN_MIN: usize = 3;
pub const USERNAME_LEN_MAX: usize = 32;
/// Passwords are this many bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 128;
/// A conversation has at most this many members, the creator included.
pub const CONV_MEMBERS_MAX: usize = 256;
/// A group title is at most this many bytes.
pub const TITLE_BYTES_MAX: usize = 256;
/// History pages.
pub const HISTORY_LIMIT_DEFAULT: u32 = 50;
pub const HISTORY_LIMIT_MAX: u32 = 200;
/// Inbox pages.
pub const INBOX_LIMIT_DEFAULT: u32 = 20;
pub const INBOX_LIMIT_MAX: u32 = 100;
/// A REST request body larger than this is answered 413.
pub const REST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Messages sent per `sync` page; a sync streams pages until it has caught up.
pub const SYNC_PAGE_MESSAGES_MAX: u32 = 200;

const _: () = assert!(BODY_BYTES_MAX < FRAME_BYTES_MAX);
const _: () = assert!(USERNAME_LEN_MIN <= USERNAME_LEN_MAX);
const _: () = assert!(HISTORY_LIMIT_DEFAULT <= HISTORY_LIMIT_MAX);
const _: () = assert!(INBOX_LIMIT_DEFAULT <= INBOX_LIMIT_MAX);
