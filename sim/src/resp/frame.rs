//! RESP2 requests in, RESP2 replies out.
//!
//! A request is an array of bulk strings (`*2\r\n$4\r\nHLEN\r\n$1\r\nk\r\n`), which is all
//! the redis client sends. Parsing is one pass over the buffered bytes that either finds a
//! whole request, says more bytes are needed, or rejects the bytes; bulk payloads are
//! skipped by length, not scanned, so re-checking an incomplete request costs one step per
//! element. Inline commands (`PING\r\n`) are not part of the model and are rejected.

/// A bulk string's length at most (Redis allows 512 MiB; the registry's are tiny).
pub const BULK_BYTES_MAX: usize = 1024 * 1024;
/// Elements of one request at most (Redis's limit on a request's array).
pub const ARRAY_LEN_MAX: usize = 1024 * 1024;
/// A header line (`*N` or `$N`) at most, without its CRLF.
pub const HEADER_BYTES_MAX: usize = 32;
/// Bytes of one request at most; a connection buffering more is closed.
pub const REQUEST_BYTES_MAX: usize = 4 * BULK_BYTES_MAX;
const _: () = assert!(REQUEST_BYTES_MAX > BULK_BYTES_MAX + 2 * HEADER_BYTES_MAX);

/// Bytes that are not a request; the connection is answered `-ERR Protocol error: ...` and
/// closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// One request's arguments (the command name first) and the bytes it took.
pub type Request = (Vec<Vec<u8>>, usize);

/// The first whole request in `buf`. `Ok(None)`: not all of it has arrived. An empty array
/// (`*0`, `*-1`) is a request with no arguments, which Redis ignores.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
    let mut at = 0;
    let Some(first) = buf.first() else {
        return Ok(None);
    };
    if *first != b'*' {
        return Err(ProtocolError(format!(
            "expected '*', got '{}'",
            printable(*first)
        )));
    }
    let Some(count) = header(buf, &mut at, "multibulk")? else {
        return Ok(None);
    };
    if count > ARRAY_LEN_MAX as i64 {
        return Err(ProtocolError("invalid multibulk length".to_owned()));
    }
    let count = count.max(0) as usize;
    // Locate every element before copying any, so an incomplete request costs no copies.
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        if kind != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                printable(kind)
            )));
        }
        let Some(len) = header(buf, &mut at, "bulk")? else {
            return Ok(None);
        };
        if len < 0 || len > BULK_BYTES_MAX as i64 {
            return Err(ProtocolError("invalid bulk length".to_owned()));
        }
        let len = len as usize;
        if buf.len() < at + len + 2 {
            if at + len + 2 > REQUEST_BYTES_MAX {
                return Err(ProtocolError("request too big".to_owned()));
            }
            return Ok(None);
        }
        if &buf[at + len..at + len + 2] != b"\r\n" {
            return Err(ProtocolError(
                "bulk string not terminated by CRLF".to_owned(),
            ));
        }
        spans.push((at, len));
        at += len + 2;
    }
    if at > REQUEST_BYTES_MAX {
        return Err(ProtocolError("request too big".to_owned()));
    }
    let args = spans
        .into_iter()
        .map(|(start, len)| buf[start..start + len].to_vec())
        .collect();
    Ok(Some((args, at)))
}

/// Reads `<kind byte><decimal>\r\n` at `*at`, advancing past it.
fn header(buf: &[u8], at: &mut usize, what: &str) -> Result<Option<i64>, ProtocolError> {
    let start = *at + 1;
    let window = &buf[start.min(buf.len())..buf.len().min(start + HEADER_BYTES_MAX + 2)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= HEADER_BYTES_MAX + 2 || window.contains(&b'\n') {
            return Err(ProtocolError(format!("too big {what} count string")));
        }
        return Ok(None);
    };
    let digits = &window[..end];
    let valid = !digits.is_empty()
        && digits
            .iter()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-' && digits.len() > 1));
    let value = valid
        .then(|| std::str::from_utf8(digits).ok()?.parse::<i64>().ok())
        .flatten();
    let Some(value) = value else {
        return Err(ProtocolError(format!("invalid {what} length")));
    };
    *at = start + end + 2;
    Ok(Some(value))
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        b as char
    } else {
        '?'
    }
}

/// Appends RESP2 replies to a connection's output buffer.
#[derive(Debug, Default)]
pub struct Replies {
    pub out: Vec<u8>,
}

impl Replies {
    pub fn simple(&mut self, text: &str) {
        debug_assert!(!text.contains(['\r', '\n']));
        self.out.push(b'+');
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.simple("OK");
    }

    /// `text` starts with the error code (`ERR`, `WRONGTYPE`).
    pub fn error(&mut self, text: &str) {
        self.out.push(b'-');
        // A reply line cannot hold a line break.
        self.out.extend(
            text.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.out.extend_from_slice(format!(":{n}\r\n").as_bytes());
    }

    pub fn bulk(&mut self, bytes: &[u8]) {
        self.out
            .extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(b"\r\n");
    }

    /// The header of an array of `len` replies; the caller appends them.
    pub fn array(&mut self, len: usize) {
        self.out.extend_from_slice(format!("*{len}\r\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(parts: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", parts.len()).into_bytes();
        for p in parts {
            out.extend_from_slice(format!("${}\r\n{p}\r\n", p.len()).as_bytes());
        }
        out
    }

    #[test]
    fn whole_requests_parse_and_prefixes_wait() {
        let mut buf = req(&["HSET", "k", "f", ""]);
        let whole = buf.len();
        buf.extend_from_slice(&req(&["PING"]));
        let (args, used) = parse_request(&buf).unwrap().unwrap();
        assert_eq!(
            args,
            vec![b"HSET".to_vec(), b"k".to_vec(), b"f".to_vec(), b"".to_vec()]
        );
        assert_eq!(used, whole);
        for cut in 0..whole {
            assert_eq!(
                parse_request(&buf[..cut]),
                Ok(None),
                "prefix of {cut} bytes"
            );
        }
        assert_eq!(parse_request(b"*0\r\n"), Ok(Some((vec![], 4))));
        assert_eq!(parse_request(b"*-1\r\n"), Ok(Some((vec![], 5))));
    }

    #[test]
    fn garbage_and_oversized_requests_are_rejected() {
        for bad in [
            &b"PING\r\n"[..],
            b"*1\r\n+PING\r\n",
            b"*x\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*1\r\n$1048577\r\n",
            b"*1048577\r\n",
            b"*--1\r\n",
            b"*1\n",
            b"*111111111111111111111111111111111111111111",
            b"*99999999999999999999999\r\n",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Many bulks that would exceed the request cap are refused before they arrive.
        let mut big = b"*5\r\n".to_vec();
        for _ in 0..4 {
            big.extend_from_slice(format!("${BULK_BYTES_MAX}\r\n").as_bytes());
            big.extend(std::iter::repeat_n(b'x', BULK_BYTES_MAX));
            big.extend_from_slice(b"\r\n");
        }
        big.extend_from_slice(format!("${BULK_BYTES_MAX}\r\n").as_bytes());
        assert!(parse_request(&big).is_err());
    }
}
