//! Mutual authentication of link connections from the cluster secret.
//!
//! Whoever reaches an app server's link port could otherwise say `Hello` as a gateway (and
//! read any inbox, send as anyone) or as a connection server (and take its pushes). Every
//! process of a cluster shares the token secret, so both ends prove they hold it, without
//! sending it, by HMAC over fresh nonces from both sides (a replayed proof answers an old
//! nonce):
//!
//! 1. client -> `Hello { version, peer, nonce: c }`
//! 2. server -> `Challenge { nonce: s, proof: HMAC(k, "server" c s peer) }`: the client
//!    checks it, so a fake app server learns nothing and gets no requests;
//! 3. client -> `Proof { proof: HMAC(k, "client" c s peer) }`: the server checks it before
//!    it serves a request or routes a delivery.
//!
//! `k` is derived from the secret for this use alone, so a link proof is never a token
//! signature. Frames before the proof are bounded small ([`crate::frame::HELLO_BYTES_MAX`]).

use crate::frame::Peer;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

type HmacSha256 = Hmac<Sha256>;

/// The key both ends of a link prove they hold.
#[derive(Clone)]
pub struct LinkKey(Arc<[u8]>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// The link key of the cluster whose token secret is `secret`.
    pub fn derive(secret: &[u8]) -> LinkKey {
        let key = mac(secret, &[b"chat link authentication v2"])
            .finalize()
            .into_bytes();
        LinkKey(key.to_vec().into())
    }

    /// The server's proof for a client's `nonce` and its own.
    pub(crate) fn server_proof(&self, client: &str, server: &str, peer: Peer) -> String {
        self.proof(b"server", client, server, peer)
    }

    /// The client's proof for its `nonce` and the server's.
    pub(crate) fn client_proof(&self, client: &str, server: &str, peer: Peer) -> String {
        self.proof(b"client", client, server, peer)
    }

    /// Whether `proof` is `expected`'s, compared in constant time.
    pub(crate) fn verify(
        &self,
        side: Side,
        client: &str,
        server: &str,
        peer: Peer,
        proof: &str,
    ) -> bool {
        let Ok(proof) = hex::decode(proof) else {
            return false;
        };
        let role: &[u8] = match side {
            Side::Server => b"server",
            Side::Client => b"client",
        };
        self.mac(role, client, server, peer)
            .verify_slice(&proof)
            .is_ok()
    }

    fn proof(&self, role: &[u8], client: &str, server: &str, peer: Peer) -> String {
        hex::encode(self.mac(role, client, server, peer).finalize().into_bytes())
    }

    fn mac(&self, role: &[u8], client: &str, server: &str, peer: Peer) -> HmacSha256 {
        let peer = match peer {
            Peer::Conn(id) => format!("conn {id}"),
            Peer::Gateway => "gateway".to_owned(),
        };
        // Lengths first, so no two different inputs concatenate to the same bytes.
        let parts: [&[u8]; 4] = [role, client.as_bytes(), server.as_bytes(), peer.as_bytes()];
        let lengths: Vec<u8> = parts
            .iter()
            .flat_map(|p| (p.len() as u32).to_be_bytes())
            .collect();
        let mut all = vec![lengths.as_slice()];
        all.extend(parts);
        mac(&self.0, &all)
    }
}

/// Whose proof is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// A fresh nonce: 16 random bytes, hex (through the seeded generator in the simulator).
pub(crate) fn nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Whether a nonce the peer sent has the expected shape (so it cannot be a huge string).
pub(crate) fn is_nonce(nonce: &str) -> bool {
    nonce.len() == 32 && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_with_the_same_key_only() {
        let key = LinkKey::derive(b"the cluster secret, 32 bytes long");
        let other = LinkKey::derive(b"another cluster's secret, 32 bytes");
        let (c, s) = (nonce(), nonce());
        assert!(is_nonce(&c) && is_nonce(&s) && c != s);
        let peer = Peer::Conn(3);
        let proof = key.server_proof(&c, &s, peer);
        assert!(key.verify(Side::Server, &c, &s, peer, &proof));
        assert!(
            !other.verify(Side::Server, &c, &s, peer, &proof),
            "another cluster"
        );
        assert!(
            !key.verify(Side::Client, &c, &s, peer, &proof),
            "the other side's proof"
        );
        assert!(
            !key.verify(Side::Server, &s, &c, peer, &proof),
            "nonces swapped"
        );
        assert!(
            !key.verify(Side::Server, &c, &s, Peer::Gateway, &proof),
            "another peer"
        );
        assert!(
            !key.verify(Side::Server, &c, &nonce(), peer, &proof),
            "a replay"
        );
        assert!(!key.verify(Side::Server, &c, &s, peer, "not hex"));
        let client = key.client_proof(&c, &s, peer);
        assert!(key.verify(Side::Client, &c, &s, peer, &client));
        assert!(!is_nonce(&"a".repeat(4096)));
    }
}
