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
/// A `typing` notice is shown this long unless another comes.
pub const TYPING_SHOWN_MS: u64 = 5_000;
/// At most one `typing` notice per user and conversation is passed on per this long.
pub const TYPING_INTERVAL_MS: u64 = 2_000;
/// Messages sent per `sync` page; a sync streams pages until it has caught up.
pub const SYNC_PAGE_MESSAGES_MAX: u32 = 200;

/// A history or sync page holds messages of at most this many bytes as JSON (beside its
/// count limit): 200 bodies of escaped control characters are 4.9 MB, over the internal
/// link's frame limit, which would otherwise drop the link for everyone on it.
pub const PAGE_BYTES_MAX: usize = 1024 * 1024;
/// The most a message can take as JSON: every body byte a `\u00XX` escape (6 bytes), the
/// sender and client id as they are (their alphabets need no escapes), and the fixed fields.
pub const MESSAGE_JSON_BYTES_MAX: usize =
    6 * BODY_BYTES_MAX + USERNAME_LEN_MAX + CLIENT_MSG_ID_LEN_MAX + 256;

/// The most an inbox entry can take as JSON: its last message, every member, an escaped
/// title, and the fixed fields.
pub const INBOX_ENTRY_JSON_BYTES_MAX: usize =
    MESSAGE_JSON_BYTES_MAX + CONV_MEMBERS_MAX * (USERNAME_LEN_MAX + 3) + 6 * TITLE_BYTES_MAX + 256;

const _: () = assert!(BODY_BYTES_MAX < FRAME_BYTES_MAX);
// A page always has room for one message of any size.
const _: () = assert!(MESSAGE_JSON_BYTES_MAX < PAGE_BYTES_MAX);
const _: () = assert!(USERNAME_LEN_MIN <= USERNAME_LEN_MAX);
const _: () = assert!(HISTORY_LIMIT_DEFAULT <= HISTORY_LIMIT_MAX);
const _: () = assert!(INBOX_LIMIT_DEFAULT <= INBOX_LIMIT_MAX);
