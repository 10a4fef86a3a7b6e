//! Rendezvous (highest-random-weight) hashing: every key ranks every node by
//! [`weight`]`(key, node)` and picks the highest. Only the keys of a node that leaves move,
//! and they come back when it returns. Used to pick a conversation's or user's app server
//! (the link pool) and a user's connection server (the gateway's placement).
//!
//! The hashes are stable across processes and builds (std's hasher promises neither), so
//! every gateway and connection server ranks nodes the same way.

/// A key's hash: FNV-1a, 64-bit, seeded so the same bytes in two key spaces (a user and a
/// conversation) rank nodes independently.
pub fn key(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The weight of `node` (its stable name, e.g. its address) for `key`.
///
/// Plain FNV-1a ranks badly when node names differ only in their last bytes, as addresses
/// do (ports, last octets): the last byte's change barely reaches the high bits, so one node
/// won most keys. MurmurHash3's finalizer mixes every bit into every other.
pub fn weight(key: u64, node: &str) -> u64 {
    fmix64(self::key(key, node.as_bytes()))
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The index of the best node of `nodes` for `key`, among those `eligible`.
pub fn pick<'a>(
    key: u64,
    nodes: impl IntoIterator<Item = &'a str>,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    nodes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| eligible(*i))
        .max_by_key(|(_, node)| weight(key, node))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 7100 + i)).collect()
    }

    /// With five nodes whose addresses differ only in the port, 1,000 keys spread evenly
    /// (unmixed FNV-1a put half of them on one node); when one node leaves, only its keys
    /// move.
    #[test]
    fn keys_spread_and_only_a_lost_nodes_keys_move() {
        let all = nodes(5);
        let names = || all.iter().map(String::as_str);
        let owner = |k: u64, up: &dyn Fn(usize) -> bool| pick(k, names(), up).expect("a node");
        let keys: Vec<u64> = (0..1000)
            .map(|i| key(0, format!("user{i}").as_bytes()))
            .collect();
        let mut per_node = [0usize; 5];
        for k in &keys {
            per_node[owner(*k, &|_| true)] += 1;
        }
        for (node, count) in per_node.iter().enumerate() {
            assert!(
                (100..=300).contains(count),
                "node {node} holds {count} of 1,000 keys: {per_node:?}"
            );
        }
        for k in &keys {
            let before = owner(*k, &|_| true);
            let after = owner(*k, &|i| i != 2);
            if before != 2 {
                assert_eq!(before, after, "a key of a node still up moved");
            } else {
                assert_ne!(after, 2);
            }
        }
    }

    #[test]
    fn seeds_separate_key_spaces_and_nothing_eligible_picks_nothing() {
        assert_ne!(key(0, b"42"), key(1, b"42"));
        assert_eq!(pick(7, ["a", "b"], |_| false), None);
    }
}
