//! The simulated store's wire protocol: transactions one after another on a TCP connection,
//! frames of a `u32` big-endian length followed by a binary body.
//!
//! Bodies start with a tag byte; byte strings are a `u32` big-endian length and the bytes.
//! A hand-written binary encoding rather than JSON: values are up to 100 KB of arbitrary
//! bytes, and the conformance suite pushes 10 MB through one transaction.
//!
//! A connection carries one transaction at a time. Requests, in order on the connection:
//! [`Request::Begin`] (answered [`Reply::Ok`] or an error; after an error no transaction is
//! open), then any number of reads and mutations, then usually [`Request::Commit`], then
//! [`Request::End`], after which the next `Begin` may follow. Closing the connection ends an
//! open transaction too. Mutations and `End` are never answered; every other request gets
//! exactly one reply, in request order, except `GetRange`, answered by one or more
//! [`Reply::Range`] chunks of which only the last has `more == false`. A transaction ended
//! without a successful commit is dropped on the server, as FoundationDB drops it. A
//! request other than `Begin` outside a transaction, or `Begin` inside one, is a protocol
//! error: the server closes the connection.
//!
//! Bounds: a frame is at most [`FRAME_BYTES_MAX`] bytes, a range reply at most
//! [`RANGE_REPLY_BYTES_MAX`] in all; the server holds one transaction per connection, a
//! bounded number of connections and of queued replies per connection, and closes a
//! connection that sends nothing for 10 s (idle between transactions included). The client
//! reuses a connection only after every reply it asked for has arrived, so replies of one
//! transaction never reach the next.

use chat_store::KvError;
use chat_store::kv::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The largest frame either side sends or accepts (the length prefix excluded). A frame
/// always fits one pair at the size limits, so a range chunk carries at least one pair.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// A range reply is cut into chunks of about this many bytes.
pub const RANGE_CHUNK_BYTES: usize = 256 * 1024;
/// The largest range reply, all chunks together. FoundationDB streams range reads in
/// batches; a reply bigger than this is refused with [`KvError::Io`] instead.
pub const RANGE_REPLY_BYTES_MAX: usize = 64 << 20;
/// Endpoints of ranges may be one byte longer than a key (`key + \0`, the key after it).
pub const RANGE_ENDPOINT_BYTES_MAX: usize = KEY_BYTES_MAX + 1;

/// Bytes a pair costs in a range chunk besides its key and value (two length prefixes).
const PAIR_OVERHEAD_BYTES: usize = 8;
/// Tag, two length prefixes and a limit: the most any request adds to its byte strings.
const REQUEST_OVERHEAD_BYTES_MAX: usize = 32;

const _: () = assert!(
    KEY_BYTES_MAX + VALUE_BYTES_MAX + PAIR_OVERHEAD_BYTES + REQUEST_OVERHEAD_BYTES_MAX
        <= RANGE_CHUNK_BYTES
);
const _: () = assert!(RANGE_CHUNK_BYTES * 2 <= FRAME_BYTES_MAX);
const _: () = assert!(FRAME_BYTES_MAX <= RANGE_REPLY_BYTES_MAX);

const TAG_BEGIN: u8 = 1;
const TAG_GET: u8 = 2;
const TAG_GET_RANGE: u8 = 3;
const TAG_SET: u8 = 4;
const TAG_CLEAR: u8 = 5;
const TAG_CLEAR_RANGE: u8 = 6;
const TAG_COMMIT: u8 = 7;
const TAG_END: u8 = 8;

const TAG_OK: u8 = 101;
const TAG_VALUE: u8 = 102;
const TAG_RANGE: u8 = 103;
const TAG_ERROR: u8 = 104;

/// A request, borrowing its byte strings from the frame it was decoded from (or from the
/// caller's slices when encoding), so neither side copies values twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Begin,
    Get {
        key: &'a [u8],
    },
    GetRange {
        begin: &'a [u8],
        end: &'a [u8],
        limit: u64,
        reverse: bool,
    },
    Set {
        key: &'a [u8],
        value: &'a [u8],
    },
    Clear {
        key: &'a [u8],
    },
    ClearRange {
        begin: &'a [u8],
        end: &'a [u8],
    },
    Commit,
    /// Ends the connection's transaction (committed or not); the next request is `Begin`.
    End,
}

/// A reply to a request that expects one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// To `Begin` and `Commit`.
    Ok,
    /// To `Get`.
    Value(Option<Vec<u8>>),
    /// One chunk of the answer to `GetRange`; `more` says another chunk follows.
    Range {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    /// To any request that expects a reply.
    Error(KvError),
}

/// A frame that does not parse: a bug on the other side; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed frame: {}", self.0)
    }
}

impl std::error::Error for WireError {}

impl Request<'_> {
    /// Whether the server answers this request (mutations are fire-and-forget).
    pub fn expects_reply(&self) -> bool {
        !matches!(
            self,
            Request::Set { .. } | Request::Clear { .. } | Request::ClearRange { .. } | Request::End
        )
    }

    /// The whole frame, length prefix included.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_frame(&mut out);
        out
    }

    /// Appends the whole frame, length prefix included, to `out`.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let start = frame_start(out);
        match self {
            Request::Begin => out.push(TAG_BEGIN),
            Request::Get { key } => {
                out.push(TAG_GET);
                put_bytes(out, key);
            }
            Request::GetRange {
                begin,
                end,
                limit,
                reverse,
            } => {
                out.push(TAG_GET_RANGE);
                put_bytes(out, begin);
                put_bytes(out, end);
                out.extend_from_slice(&limit.to_be_bytes());
                out.push(u8::from(*reverse));
            }
            Request::Set { key, value } => {
                out.push(TAG_SET);
                put_bytes(out, key);
                put_bytes(out, value);
            }
            Request::Clear { key } => {
                out.push(TAG_CLEAR);
                put_bytes(out, key);
            }
            Request::ClearRange { begin, end } => {
                out.push(TAG_CLEAR_RANGE);
                put_bytes(out, begin);
                put_bytes(out, end);
            }
            Request::Commit => out.push(TAG_COMMIT),
            Request::End => out.push(TAG_END),
        }
        frame_finish(out, start);
    }
}

impl<'a> Request<'a> {
    /// Parses a frame body (without its length prefix).
    pub fn decode(body: &'a [u8]) -> Result<Request<'a>, WireError> {
        let mut r = Reader(body);
        let request = match r.u8()? {
            TAG_BEGIN => Request::Begin,
            TAG_GET => Request::Get { key: r.bytes()? },
            TAG_GET_RANGE => Request::GetRange {
                begin: r.bytes()?,
                end: r.bytes()?,
                limit: r.u64()?,
                reverse: r.bool()?,
            },
            TAG_SET => Request::Set {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            TAG_CLEAR => Request::Clear { key: r.bytes()? },
            TAG_CLEAR_RANGE => Request::ClearRange {
                begin: r.bytes()?,
                end: r.bytes()?,
            },
            TAG_COMMIT => Request::Commit,
            TAG_END => Request::End,
            _ => return Err(WireError("unknown request tag")),
        };
        r.end()?;
        Ok(request)
    }
}

impl Reply {
    /// The whole frame, length prefix included.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_frame(&mut out);
        out
    }

    /// Appends the whole frame, length prefix included, to `out`.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let start = frame_start(out);
        match self {
            Reply::Ok => out.push(TAG_OK),
            Reply::Value(value) => {
                out.push(TAG_VALUE);
                out.push(u8::from(value.is_some()));
                if let Some(value) = value {
                    put_bytes(out, value);
                }
            }
            Reply::Range { pairs, more } => {
                out.push(TAG_RANGE);
                out.push(u8::from(*more));
                put_u32(out, pairs.len());
                for (key, value) in pairs {
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
            }
            Reply::Error(error) => {
                out.push(TAG_ERROR);
                let (code, message) = error_code(error);
                out.extend_from_slice(&code.to_be_bytes());
                put_bytes(out, message.as_bytes());
            }
        }
        frame_finish(out, start);
    }

    /// Parses a frame body (without its length prefix).
    pub fn decode(body: &[u8]) -> Result<Reply, WireError> {
        let mut r = Reader(body);
        let reply = match r.u8()? {
            TAG_OK => Reply::Ok,
            TAG_VALUE => Reply::Value(if r.bool()? {
                Some(r.bytes()?.to_vec())
            } else {
                None
            }),
            TAG_RANGE => {
                let more = r.bool()?;
                let len = r.u32()? as usize;
                // Every pair takes at least its two length prefixes: a count the body cannot
                // hold is refused before anything is allocated for it.
                if len > r.0.len() / PAIR_OVERHEAD_BYTES {
                    return Err(WireError("range chunk count exceeds the frame"));
                }
                let mut pairs = Vec::with_capacity(len);
                for _ in 0..len {
                    pairs.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
                }
                Reply::Range { pairs, more }
            }
            TAG_ERROR => {
                let code = r.u16()?;
                let message = String::from_utf8_lossy(r.bytes()?).into_owned();
                Reply::Error(error_from_code(code, message)?)
            }
            _ => return Err(WireError("unknown reply tag")),
        };
        r.end()?;
        Ok(reply)
    }

    /// The wire size of a pair in a [`Reply::Range`] chunk.
    pub fn pair_bytes(key: &[u8], value: &[u8]) -> usize {
        key.len() + value.len() + PAIR_OVERHEAD_BYTES
    }
}

/// FoundationDB's error codes where FoundationDB has the error; ours (below 1000) where it
/// has none.
fn error_code(error: &KvError) -> (u16, &str) {
    match error {
        KvError::NotCommitted => (1020, ""),
        KvError::CommitUnknownResult => (1021, ""),
        KvError::TransactionTooOld => (1007, ""),
        KvError::TransactionTooLarge => (2101, ""),
        KvError::KeyTooLarge => (2102, ""),
        KvError::ValueTooLarge => (2103, ""),
        KvError::Unavailable(message) => (1, message),
        KvError::Io(message) => (2, message),
        KvError::Corrupt(message) => (3, message),
    }
}

fn error_from_code(code: u16, message: String) -> Result<KvError, WireError> {
    Ok(match code {
        1020 => KvError::NotCommitted,
        1021 => KvError::CommitUnknownResult,
        1007 => KvError::TransactionTooOld,
        2101 => KvError::TransactionTooLarge,
        2102 => KvError::KeyTooLarge,
        2103 => KvError::ValueTooLarge,
        1 => KvError::Unavailable(message),
        2 => KvError::Io(message),
        3 => KvError::Corrupt(message),
        _ => return Err(WireError("unknown error code")),
    })
}

/// Reads one frame body. `Ok(None)` is a clean end of stream before the frame began.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    // The first byte separately: an end of stream here is the peer closing between frames.
    if reader.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    reader.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reserves a frame's length prefix at the end of `out`; returns where the frame starts.
fn frame_start(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    start
}

/// Fills in the length prefix of the frame that starts at `start`.
fn frame_finish(out: &mut [u8], start: usize) {
    let len = out.len() - start - 4;
    // Senders check sizes first (keys, values and range chunks have limits that fit).
    assert!(
        len <= FRAME_BYTES_MAX,
        "frame of {len} bytes exceeds the frame limit"
    );
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("lengths fit in u32 below the frame limit");
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError("bad boolean")),
        }
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("two bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("four bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("eight bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Begin,
            Request::Get { key: b"k" },
            Request::GetRange {
                begin: b"a",
                end: b"z\xff",
                limit: 7,
                reverse: true,
            },
            Request::GetRange {
                begin: b"",
                end: b"",
                limit: 0,
                reverse: false,
            },
            Request::Set {
                key: b"k",
                value: b"",
            },
            Request::Clear { key: b"\x00" },
            Request::ClearRange {
                begin: b"a",
                end: b"b",
            },
            Request::Commit,
            Request::End,
        ];
        for request in requests {
            let frame = request.to_frame();
            assert_eq!(Request::decode(body(&frame)), Ok(request.clone()));
        }
    }

    #[test]
    fn replies_round_trip_with_every_error() {
        let mut replies = vec![
            Reply::Ok,
            Reply::Value(None),
            Reply::Value(Some(Vec::new())),
            Reply::Value(Some(b"v".to_vec())),
            Reply::Range {
                pairs: vec![],
                more: false,
            },
            Reply::Range {
                pairs: vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())],
                more: true,
            },
        ];
        for error in [
            KvError::NotCommitted,
            KvError::CommitUnknownResult,
            KvError::TransactionTooOld,
            KvError::KeyTooLarge,
            KvError::ValueTooLarge,
            KvError::TransactionTooLarge,
            KvError::Unavailable("down".into()),
            KvError::Io("disk".into()),
            KvError::Corrupt("bad".into()),
        ] {
            replies.push(Reply::Error(error));
        }
        for reply in replies {
            let frame = reply.to_frame();
            assert_eq!(Reply::decode(body(&frame)), Ok(reply.clone()));
        }
    }

    #[test]
    fn frames_append_one_after_another() {
        let mut out = Vec::new();
        Request::Set {
            key: b"k",
            value: b"v",
        }
        .write_frame(&mut out);
        Request::End.write_frame(&mut out);
        Reply::Value(Some(b"v".to_vec())).write_frame(&mut out);
        let mut expected = Request::Set {
            key: b"k",
            value: b"v",
        }
        .to_frame();
        expected.extend(Request::End.to_frame());
        expected.extend(Reply::Value(Some(b"v".to_vec())).to_frame());
        assert_eq!(out, expected);
        assert_eq!(Request::End.to_frame(), [0, 0, 0, 1, TAG_END]);
    }

    #[test]
    fn garbage_is_refused_not_trusted() {
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[99]).is_err());
        assert!(
            Request::decode(&[TAG_GET, 0, 0, 0, 5, b'a']).is_err(),
            "truncated key"
        );
        assert!(Request::decode(&[TAG_COMMIT, 0]).is_err(), "trailing bytes");
        assert!(
            Reply::decode(&[TAG_RANGE, 0, 0xff, 0xff, 0xff, 0xff]).is_err(),
            "huge count"
        );
        assert!(Reply::decode(&[TAG_VALUE, 2]).is_err(), "bad boolean");
        assert!(
            Reply::decode(&[TAG_ERROR, 0x27, 0x0f, 0, 0, 0, 0]).is_err(),
            "unknown code 9999"
        );
    }

    #[test]
    fn a_pair_at_the_size_limits_fits_a_frame() {
        let key = vec![b'k'; KEY_BYTES_MAX];
        let value = vec![b'v'; VALUE_BYTES_MAX];
        let set = Request::Set {
            key: &key,
            value: &value,
        }
        .to_frame();
        assert!(set.len() - 4 <= FRAME_BYTES_MAX);
        let chunk = Reply::Range {
            pairs: vec![(key, value)],
            more: false,
        }
        .to_frame();
        assert!(chunk.len() - 4 <= RANGE_CHUNK_BYTES + 16);
    }

    #[tokio::test]
    async fn frames_are_read_back_and_oversized_ones_refused() {
        let mut stream: Vec<u8> = Vec::new();
        stream.extend(Request::Commit.to_frame());
        stream.extend(Request::Get { key: b"x" }.to_frame());
        let mut reader = stream.as_slice();
        assert_eq!(
            read_frame(&mut reader).await.unwrap().as_deref(),
            Some(&[TAG_COMMIT][..])
        );
        assert!(read_frame(&mut reader).await.unwrap().is_some());
        assert_eq!(read_frame(&mut reader).await.unwrap(), None, "clean end");

        let huge = ((FRAME_BYTES_MAX + 1) as u32).to_be_bytes();
        assert!(read_frame(&mut huge.as_slice()).await.is_err());
        let cut = [0u8, 0, 0, 9, 1];
        assert!(
            read_frame(&mut cut.as_slice()).await.is_err(),
            "end of stream inside a frame"
        );
    }
}
