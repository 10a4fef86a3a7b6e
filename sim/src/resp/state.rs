//! The keyspace of the Redis model and the commands on it, with Redis 7.0's replies.
//!
//! Keys hold hashes (the registry's only type) or strings (planted by tests with
//! [`RespState::insert_string`], so wrong-type replies can be checked; no command creates
//! one). A hash keeps its fields in insertion order, as Redis's small (listpack) hashes do.
//!
//! Expiry as in Redis: a key with a deadline is gone once the clock passes it: every command
//! that touches the key sees it missing and removes it (lazy expiry); `DBSIZE` and `INFO`
//! sweep first, so they count only live keys (Redis may still count expired keys that no
//! command has touched yet). The clock is `std::time::Instant`, which madsim simulates.

use super::frame::Replies;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The shared data of one model server. A restart without persistence is a new `RespState`
/// (or [`RespState::flush_all`]).
#[derive(Debug, Default)]
pub struct RespState {
    // A std Mutex: each command holds it for one in-memory operation, never across an await.
    keys: Mutex<HashMap<Vec<u8>, Entry>>,
    /// Open client connections, for `INFO clients`.
    pub(super) clients: AtomicUsize,
}

#[derive(Debug)]
struct Entry {
    value: Value,
    expires_at: Option<Instant>,
}

#[derive(Debug)]
enum Value {
    Hash(Vec<(Vec<u8>, Vec<u8>)>),
    String(Vec<u8>),
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";

impl RespState {
    pub fn new() -> RespState {
        RespState::default()
    }

    /// Loses every key, like a Redis restart without persistence.
    pub fn flush_all(&self) {
        self.lock().clear();
    }

    /// Live keys.
    pub fn dbsize(&self) -> usize {
        let mut keys = self.lock();
        sweep(&mut keys, Instant::now());
        keys.len()
    }

    /// Puts a string at `key` (no command of the model creates strings): to check how the
    /// registry and the model treat a key of the wrong type.
    pub fn insert_string(&self, key: &[u8], value: &[u8]) {
        self.lock().insert(
            key.to_vec(),
            Entry {
                value: Value::String(value.to_vec()),
                expires_at: None,
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        // Commands check their arguments before changing anything, so a panic cannot leave
        // a half-applied command behind.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one request and appends its reply.
    pub fn execute(&self, args: &[Vec<u8>], replies: &mut Replies) {
        let Some(name) = args.first() else {
            return;
        };
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let rest = &args[1..];
        let now = Instant::now();
        match name.as_str() {
            "ping" => match rest {
                [] => replies.simple("PONG"),
                [message] => replies.bulk(message),
                _ => wrong_arity(replies, &name),
            },
            "hset" => {
                let [key, pairs @ ..] = rest else {
                    return wrong_arity(replies, &name);
                };
                if pairs.is_empty() || pairs.len() % 2 != 0 {
                    return wrong_arity(replies, &name);
                }
                let mut keys = self.lock();
                live(&mut keys, key, now);
                let entry = keys.entry(key.clone()).or_insert_with(|| Entry { value: Value::Hash(Vec::new()), expires_at: None });
                let Value::Hash(fields) = &mut entry.value else {
                    return replies.error(WRONGTYPE);
                };
                let mut added = 0;
                for pair in pairs.chunks_exact(2) {
                    match fields.iter_mut().find(|(f, _)| *f == pair[0]) {
                        Some((_, v)) => *v = pair[1].clone(),
                        None => {
                            fields.push((pair[0].clone(), pair[1].clone()));
                            added += 1;
                        }
                    }
                }
                replies.int(added);
            }
            "hdel" => {
                let [key, names @ ..] = rest else {
                    return wrong_arity(replies, &name);
                };
                if names.is_empty() {
                    return wrong_arity(replies, &name);
                }
                let mut keys = self.lock();
                let Some(entry) = live(&mut keys, key, now) else {
                    return replies.int(0);
                };
                let Value::Hash(fields) = &mut entry.value else {
                    return replies.error(WRONGTYPE);
                };
                let mut removed = 0;
                for name in names {
                    if let Some(i) = fields.iter().position(|(f, _)| f == name) {
                        fields.remove(i);
                        removed += 1;
                    }
                }
                // Redis deletes a hash with no fields left (and its expiry with it).
                if fields.is_empty() {
                    keys.remove(key);
                }
                replies.int(removed);
            }
            "hgetall" | "hlen" => {
                let [key] = rest else {
                    return wrong_arity(replies, &name);
                };
                let mut keys = self.lock();
                let fields: &[(Vec<u8>, Vec<u8>)] = match live(&mut keys, key, now) {
                    None => &[],
                    Some(Entry { value: Value::Hash(fields), .. }) => &fields[..],
                    Some(_) => return replies.error(WRONGTYPE),
                };
                if name == "hlen" {
                    replies.int(fields.len() as i64);
                } else {
                    replies.array(fields.len() * 2);
                    for (f, v) in fields {
                        replies.bulk(f);
                        replies.bulk(v);
                    }
                }
            }
            "pexpire" => {
                let [key, ms] = rest else {
                    // Redis 7 also takes NX|XX|GT|LT; the registry does not use them.
                    return if rest.len() > 2 { replies.error("ERR the model supports PEXPIRE key milliseconds only") } else { wrong_arity(replies, &name) };
                };
                let Some(ms) = parse_i64(ms) else {
                    return replies.error(NOT_AN_INTEGER);
                };
                let mut keys = self.lock();
                let Some(entry) = live(&mut keys, key, now) else {
                    return replies.int(0);
                };
                if ms <= 0 {
                    // A deadline already past deletes the key at once.
                    keys.remove(key);
                    return replies.int(1);
                }
                match now.checked_add(Duration::from_millis(ms as u64)) {
                    Some(at) => {
                        entry.expires_at = Some(at);
                        replies.int(1);
                    }
                    None => replies.error("ERR invalid expire time in 'pexpire' command"),
                }
            }
            "flushall" => match rest {
                [] => {
                    self.flush_all();
                    replies.ok();
                }
                [mode] if mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async") => {
                    self.flush_all();
                    replies.ok();
                }
                [_] => replies.error("ERR syntax error"),
                _ => wrong_arity(replies, &name),
            },
            "dbsize" => match rest {
                [] => replies.int(self.dbsize() as i64),
                _ => wrong_arity(replies, &name),
            },
            "info" => replies.bulk(self.info(rest).as_bytes()),
            // redis-rs sends `CLIENT SETINFO LIB-NAME x` and `... LIB-VER y` on connect.
            "client" => match rest {
                [sub, attr, _value] if sub.eq_ignore_ascii_case(b"setinfo") => {
                    if attr.eq_ignore_ascii_case(b"lib-name") || attr.eq_ignore_ascii_case(b"lib-ver") {
                        replies.ok();
                    } else {
                        replies.error(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(attr)));
                    }
                }
                [sub, ..] => replies.error(&format!(
                    "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                    String::from_utf8_lossy(sub)
                )),
                [] => wrong_arity(replies, &name),
            },
            _ => {
                let mut text = format!("ERR unknown command '{}', with args beginning with: ", String::from_utf8_lossy(&args[0]));
                for arg in rest {
                    text.push_str(&format!("'{}' ", String::from_utf8_lossy(arg)));
                }
                replies.error(&text);
            }
        }
    }

    /// `INFO [section ...]`: the memory, clients and keyspace sections (a model's figures:
    /// `used_memory` is payload bytes plus a fixed overhead per key and field, not what
    /// Redis would use).
    fn info(&self, sections: &[Vec<u8>]) -> String {
        let wants = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    s.eq_ignore_ascii_case(name.as_bytes())
                        || s.eq_ignore_ascii_case(b"all")
                        || s.eq_ignore_ascii_case(b"default")
                        || s.eq_ignore_ascii_case(b"everything")
                })
        };
        let (keys, expires, used_memory) = {
            let mut keys = self.lock();
            sweep(&mut keys, Instant::now());
            let used: usize = keys
                .iter()
                .map(|(k, e)| {
                    64 + k.len()
                        + match &e.value {
                            Value::Hash(fields) => {
                                fields.iter().map(|(f, v)| 16 + f.len() + v.len()).sum()
                            }
                            Value::String(s) => s.len(),
                        }
                })
                .sum();
            (
                keys.len(),
                keys.values().filter(|e| e.expires_at.is_some()).count(),
                used,
            )
        };
        let mut out = String::new();
        if wants("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\n\r\n",
                self.clients.load(Ordering::Relaxed)
            ));
        }
        if wants("memory") {
            out.push_str(&format!("# Memory\r\nused_memory:{used_memory}\r\n\r\n"));
        }
        if wants("keyspace") {
            out.push_str("# Keyspace\r\n");
            if keys > 0 {
                out.push_str(&format!("db0:keys={keys},expires={expires},avg_ttl=0\r\n"));
            }
        }
        out
    }
}

/// The entry at `key` unless it has expired; an expired one is removed.
fn live<'a>(
    keys: &'a mut HashMap<Vec<u8>, Entry>,
    key: &[u8],
    now: Instant,
) -> Option<&'a mut Entry> {
    if keys
        .get(key)
        .is_some_and(|e| e.expires_at.is_some_and(|at| now > at))
    {
        keys.remove(key);
        return None;
    }
    keys.get_mut(key)
}

fn sweep(keys: &mut HashMap<Vec<u8>, Entry>, now: Instant) {
    keys.retain(|_, e| e.expires_at.is_none_or(|at| now <= at));
}

fn wrong_arity(replies: &mut Replies, name: &str) {
    replies.error(&format!(
        "ERR wrong number of arguments for '{name}' command"
    ));
}

/// A decimal integer as Redis reads one (optional `-`, no spaces, no `+`).
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.starts_with('+') || text.trim() != text {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(state: &RespState, args: &[&str]) -> String {
        let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        let mut replies = Replies::default();
        state.execute(&args, &mut replies);
        String::from_utf8(replies.out).unwrap()
    }

    #[test]
    fn hash_commands_answer_like_redis() {
        let s = RespState::new();
        assert_eq!(run(&s, &["HSET", "k", "a", "1", "b", "2"]), ":2\r\n");
        assert_eq!(run(&s, &["hset", "k", "a", "3", "c", "4"]), ":1\r\n");
        assert_eq!(
            run(&s, &["HGETALL", "k"]),
            "*6\r\n$1\r\na\r\n$1\r\n3\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n4\r\n"
        );
        assert_eq!(run(&s, &["HLEN", "k"]), ":3\r\n");
        assert_eq!(run(&s, &["HDEL", "k", "a", "zz", "b"]), ":2\r\n");
        assert_eq!(run(&s, &["HDEL", "k", "c"]), ":1\r\n");
        assert_eq!(run(&s, &["DBSIZE"]), ":0\r\n", "an emptied hash is deleted");
        assert_eq!(run(&s, &["HGETALL", "k"]), "*0\r\n");
        assert_eq!(
            run(&s, &["HSET", "k", "a"]),
            "-ERR wrong number of arguments for 'hset' command\r\n"
        );
        s.insert_string(b"str", b"x");
        assert_eq!(run(&s, &["HLEN", "str"]), format!("-{WRONGTYPE}\r\n"));
        assert_eq!(run(&s, &["PEXPIRE", "k", "10"]), ":0\r\n");
        assert_eq!(
            run(&s, &["PEXPIRE", "str", "x"]),
            format!("-{NOT_AN_INTEGER}\r\n")
        );
        assert_eq!(run(&s, &["PEXPIRE", "str", "0"]), ":1\r\n");
        assert_eq!(
            run(&s, &["DBSIZE"]),
            ":0\r\n",
            "a deadline in the past deletes"
        );
    }

    #[test]
    fn expired_keys_are_invisible() {
        let s = RespState::new();
        run(&s, &["HSET", "k", "a", "1"]);
        // Visible before its deadline. 60 s: no pause of this thread reaches it (a 30 ms one
        // can pass between two lines on a loaded machine), while the same number misread as
        // microseconds would pass during the sleep.
        assert_eq!(run(&s, &["PEXPIRE", "k", "60000"]), ":1\r\n");
        assert_eq!(run(&s, &["HLEN", "k"]), ":1\r\n");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(run(&s, &["HLEN", "k"]), ":1\r\n");
        // Gone after it: a new, short deadline replaces the old one.
        assert_eq!(run(&s, &["PEXPIRE", "k", "30"]), ":1\r\n");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(run(&s, &["HLEN", "k"]), ":0\r\n");
        assert_eq!(
            run(&s, &["HSET", "k", "a", "1"]),
            ":1\r\n",
            "a new key, without the old deadline"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(run(&s, &["HLEN", "k"]), ":1\r\n");
    }
}
