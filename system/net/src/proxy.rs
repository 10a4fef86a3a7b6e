//! Trusted reverse proxies. Behind one, every client's TCP peer is the proxy, so limits per
//! client address would put all clients in the proxy's one bucket. For a peer inside a
//! configured range, the client's address is taken from `X-Forwarded-For` instead; for any
//! other peer the header is ignored (a client could write anything in it).

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;
use std::str::FromStr;

/// Addresses of `X-Forwarded-For` looked at, from the right: a chain of proxies is short,
/// and a client must not make us parse a long list.
const FORWARDED_HOPS_MAX: usize = 16;

/// The address ranges of trusted proxies (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    ranges: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an address nor an address range (CIDR)")]
pub struct BadRange(String);

impl FromStr for TrustedProxies {
    type Err = BadRange;

    /// Comma-separated addresses or ranges: `10.0.0.0/8,192.168.1.7,::1`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ranges = text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadRange(part.to_owned()))
            })
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { ranges })
    }
}

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(&ip))
    }

    /// The client behind `peer`: `peer` itself unless it is a trusted proxy. Then the
    /// right-most address of `X-Forwarded-For` that is not a trusted proxy: each proxy appends
    /// the address it saw, so entries left of the first untrusted one may be made up. Without
    /// a usable header, the proxy's own address.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            hops.extend(text.split(','));
        }
        let mut client = peer;
        for hop in hops.iter().rev().take(FORWARDED_HOPS_MAX) {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                // Malformed: trust nothing further left.
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_ranges_and_refuses_the_rest() {
        let trusted: TrustedProxies = "10.0.0.0/8, 192.168.1.7,::1".parse().unwrap();
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("192.168.1.7")));
        assert!(!trusted.contains(ip("192.168.1.8")));
        assert!(trusted.contains(ip("::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("proxy.local".parse::<TrustedProxies>().is_err());
        assert_eq!(
            "".parse::<TrustedProxies>().unwrap(),
            TrustedProxies::default()
        );
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let proxy = ip("10.0.0.1");
        // An untrusted peer's header is ignored.
        assert_eq!(
            trusted.client(ip("1.2.3.4"), &headers(&["5.6.7.8"])),
            ip("1.2.3.4")
        );
        assert_eq!(trusted.client(proxy, &headers(&["5.6.7.8"])), ip("5.6.7.8"));
        // A client's made-up entries are left of the address the proxy saw.
        assert_eq!(
            trusted.client(proxy, &headers(&["6.6.6.6, 5.6.7.8"])),
            ip("5.6.7.8")
        );
        // A chain of trusted proxies, in one header or several.
        assert_eq!(
            trusted.client(proxy, &headers(&["5.6.7.8, 10.0.0.2", "10.0.0.3"])),
            ip("5.6.7.8")
        );
        // No header, or a malformed one: the proxy itself.
        assert_eq!(trusted.client(proxy, &HeaderMap::new()), proxy);
        assert_eq!(trusted.client(proxy, &headers(&["not an address"])), proxy);
        assert_eq!(
            trusted.client(proxy, &headers(&["5.6.7.8, junk"])),
            proxy,
            "nothing left of a malformed hop is believed"
        );
    }
}
