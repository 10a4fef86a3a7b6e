//! The server's base URL, and the little URL encoding the client needs.

use crate::error::ClientError;
use std::net::IpAddr;

/// Where the server listens: `http://host[:port]`, parsed once.
///
/// Only plain `http` is supported (TLS, if any, terminates in front of the gateway).
/// The host may be an IP address (`127.0.0.1`, `[::1]`) or a name resolved when connecting
/// (under the simulator only `localhost` and names registered with the simulator resolve).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Host without brackets: `127.0.0.1`, `::1`, `chat.example`.
    pub host: String,
    pub port: u16,
}

impl BaseUrl {
    /// Parses `http://host[:port][/]`; the scheme may be left out (`127.0.0.1:8080`).
    pub fn parse(url: &str) -> Result<BaseUrl, ClientError> {
        let invalid = |why: &str| ClientError::InvalidUrl(format!("{why}: `{url}`"));
        let trimmed = url.trim();
        let rest = match trimmed.split_once("://") {
            Some((scheme, rest))
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") =>
            {
                rest
            }
            Some(_) => return Err(invalid("only http:// is supported")),
            None => trimmed,
        };
        let authority = match rest.find(['/', '?', '#']) {
            Some(i) => {
                if rest[i..] != *"/" {
                    return Err(invalid(
                        "the base URL must not have a path, query or fragment",
                    ));
                }
                &rest[..i]
            }
            None => rest,
        };
        if authority.contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
            let (host, tail) = after_bracket
                .split_once(']')
                .ok_or_else(|| invalid("unclosed `[`"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid("not an IPv6 address between `[` and `]`"));
            }
            let port = match tail {
                "" => None,
                _ => Some(
                    tail.strip_prefix(':')
                        .ok_or_else(|| invalid("expected `:port` after `]`"))?,
                ),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(invalid("IPv6 addresses need brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(invalid("bad character in host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("bad port"))?,
        };
        Ok(BaseUrl {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The value of the `Host` header: `host:port`, with brackets around IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host as an IP address, when it is one (no name resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.authority())
    }
}

/// Percent-encodes a query value: everything but RFC 3986 unreserved characters.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> (String, u16) {
        let base = BaseUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (base.host, base.port)
    }

    #[test]
    fn parses_base_urls() {
        assert_eq!(parsed("http://127.0.0.1:8080"), ("127.0.0.1".into(), 8080));
        assert_eq!(parsed("http://127.0.0.1:8080/"), ("127.0.0.1".into(), 8080));
        assert_eq!(parsed("HTTP://10.0.0.1"), ("10.0.0.1".into(), 80));
        assert_eq!(parsed("127.0.0.1:9000"), ("127.0.0.1".into(), 9000));
        assert_eq!(parsed("  http://localhost:1 "), ("localhost".into(), 1));
        assert_eq!(
            parsed("http://Chat.Example:8080"),
            ("chat.example".into(), 8080)
        );
        assert_eq!(parsed("http://[::1]:8080"), ("::1".into(), 8080));
        assert_eq!(parsed("[::1]"), ("::1".into(), 80));
        assert_eq!(parsed("ws://10.1.2.3:7"), ("10.1.2.3".into(), 7));
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for url in [
            "",
            "https://127.0.0.1",
            "ftp://x",
            "http://",
            "http://:80",
            "http://host:0",
            "http://host:70000",
            "http://host:abc",
            "http://host/v1",
            "http://host?x=1",
            "http://user@host",
            "http://::1:80",
            "http://[::1",
            "http://[nope]:80",
            "http://[::1]x",
            "http://ho st",
        ] {
            assert!(
                matches!(BaseUrl::parse(url), Err(ClientError::InvalidUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(
            BaseUrl::parse("http://[::1]:8080").unwrap().authority(),
            "[::1]:8080"
        );
        assert_eq!(
            BaseUrl::parse("http://10.0.0.1").unwrap().authority(),
            "10.0.0.1:80"
        );
        assert_eq!(
            BaseUrl::parse("http://10.0.0.1:8080").unwrap().to_string(),
            "http://10.0.0.1:8080"
        );
        assert!(BaseUrl::parse("http://[::1]:8080").unwrap().ip().is_some());
        assert!(
            BaseUrl::parse("http://localhost:8080")
                .unwrap()
                .ip()
                .is_none()
        );
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode_query_value("aZ09-._~"), "aZ09-._~");
        assert_eq!(encode_query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode_query_value("x.y+z"), "x.y%2Bz");
    }
}
