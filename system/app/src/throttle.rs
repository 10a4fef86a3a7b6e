//! Per-user limits kept in the app server's memory:
//! - [`LoginThrottle`]: failed logins per username. After a few, each further attempt waits
//!   longer, so guessing one account's password is slow however many addresses the guesses
//!   come from. A correct password ends the throttle; a throttled attempt is refused before
//!   any hashing (it costs the server nothing). The price: someone who knows a username can
//!   make its owner wait up to [`ThrottleConfig::wait_max`] to log in.
//! - [`GroupCap`]: groups created per user per hour.
//! - [`TypingGate`]: typing notices passed on per user and conversation.
//!
//! A user's requests route to one app server while it is up, so that server sees all of
//! them. Each table is bounded; when full, it never forgets a live entry to make room (that
//! would lift someone's limit). Without I/O: the caller passes the time
//! (`tokio::time::Instant`, which madsim simulates).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// How failed logins of one username are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed before any wait.
    pub free_failures: u32,
    /// The wait after the first failure beyond the free ones; it doubles with each further one.
    pub wait_min: Duration,
    pub wait_max: Duration,
    /// A username without a failure for this long is forgotten (its count starts again).
    pub forget_after: Duration,
    /// Usernames tracked at once. When full, a new one is not tracked (its logins are not
    /// throttled) rather than forgetting others: filling the table cannot unlock an account
    /// already throttled.
    pub usernames_max: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures: 5,
            wait_min: Duration::from_secs(1),
            wait_max: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            usernames_max: 100_000,
        }
    }
}

struct Failures {
    count: u32,
    last: Instant,
    /// No attempt is checked before this.
    until: Instant,
}

pub struct LoginThrottle {
    config: ThrottleConfig,
    failures: Mutex<HashMap<String, Failures>>,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            failures: Mutex::default(),
        }
    }

    /// Ok, or how long `username` must wait before its next attempt.
    pub fn check(&self, username: &str, now: Instant) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(username) {
            Some(f) if f.until > now => Err(f.until - now),
            _ => Ok(()),
        }
    }

    /// A wrong password for `username`.
    pub fn failed(&self, username: &str, now: Instant) {
        let config = &self.config;
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !room_for(&mut failures, username, config.usernames_max, |f| {
            now.duration_since(f.last) < config.forget_after
        }) {
            tracing::warn!(
                usernames_max = config.usernames_max,
                "login throttle full; not tracking a new username"
            );
            return;
        }
        let entry = failures.entry(username.to_owned()).or_insert(Failures {
            count: 0,
            last: now,
            until: now,
        });
        if now.duration_since(entry.last) >= config.forget_after {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if let Some(beyond) = entry.count.checked_sub(config.free_failures + 1) {
            let wait = config
                .wait_min
                .saturating_mul(1u32 << beyond.min(16))
                .min(config.wait_max);
            entry.until = now + wait;
        }
    }

    /// The right password for `username`: its failures are forgotten.
    pub fn succeeded(&self, username: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(username);
    }
}

/// Groups a user may create per hour: each one puts itself at the top of every member's
/// inbox, so an unbounded number would let one account push anyone's real conversations
/// out of sight. A fixed window per user (the hour from their first creation in it).
pub struct GroupCap {
    per_hour: u32,
    /// User -> (the window's start, groups created in it).
    windows: Mutex<HashMap<String, (Instant, u32)>>,
    users_max: usize,
}

const HOUR: Duration = Duration::from_secs(3600);

impl GroupCap {
    /// Users tracked at once by default.
    pub const USERS_MAX: usize = 100_000;

    pub fn new(per_hour: u32, users_max: usize) -> GroupCap {
        GroupCap {
            per_hour,
            windows: Mutex::default(),
            users_max,
        }
    }

    /// Counts a group `user` creates now, or how long until they may create one.
    pub fn take(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if !room_for(&mut windows, user, self.users_max, |(start, _)| {
            now.duration_since(*start) < HOUR
        }) {
            // Full of users who created groups within the hour: a newcomer waits.
            return Err(Duration::from_secs(60));
        }
        let (start, count) = windows.entry(user.to_owned()).or_insert((now, 0));
        if now.duration_since(*start) >= HOUR {
            (*start, *count) = (now, 0);
        }
        if *count >= self.per_hour {
            return Err((*start + HOUR).saturating_duration_since(now));
        }
        *count += 1;
        Ok(())
    }
}

/// Whether `table` has room for `key`: it is there already, or there is room once the
/// entries `live` says are over are forgotten. A live entry is never forgotten.
/// Typing notices: at most one per user and conversation per interval is passed on (each
/// costs a store read and a fan-out to every online member); the others are dropped. A
/// client sends one every few seconds while its user types; the gate makes a faster one
/// cost nothing.
pub struct TypingGate {
    interval: Duration,
    keys_max: usize,
    last: Mutex<HashMap<String, Instant>>,
}

impl TypingGate {
    pub const KEYS_MAX: usize = 100_000;

    pub fn new(interval: Duration, keys_max: usize) -> TypingGate {
        TypingGate {
            interval,
            keys_max,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `user`'s notice for `conv` goes on now. A full table (of notices all within
    /// the interval) drops new ones: typing is best-effort.
    pub fn pass(&self, user: &str, conv: chat_proto::ConvId, now: Instant) -> bool {
        let key = format!("{conv}/{user}");
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let interval = self.interval;
        if !room_for(&mut last, &key, self.keys_max, |at| {
            now.duration_since(*at) < interval
        }) {
            return false;
        }
        match last.get(&key) {
            Some(at) if now.duration_since(*at) < interval => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

fn room_for<V>(
    table: &mut HashMap<String, V>,
    key: &str,
    max: usize,
    mut live: impl FnMut(&V) -> bool,
) -> bool {
    if table.contains_key(key) || table.len() < max {
        return true;
    }
    table.retain(|_, v| live(v));
    table.len() < max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_passes_once_per_interval_per_user_and_conversation() {
        let gate = TypingGate::new(Duration::from_secs(2), 2);
        let t0 = Instant::now();
        assert!(gate.pass("ann", 1, t0));
        assert!(!gate.pass("ann", 1, t0 + Duration::from_millis(1999)));
        assert!(gate.pass("ann", 2, t0), "another conversation");
        assert!(
            !gate.pass("bob", 1, t0),
            "the table is full of live notices"
        );
        assert!(gate.pass("ann", 1, t0 + Duration::from_secs(2)));
        assert!(
            gate.pass("bob", 1, t0 + Duration::from_secs(5)),
            "old ones make room"
        );
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(ThrottleConfig {
            usernames_max: 2,
            ..ThrottleConfig::default()
        })
    }

    #[test]
    fn waits_double_after_the_free_failures_and_a_success_ends_them() {
        let t = throttle();
        let mut now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.check("alice", now), Ok(()));
            t.failed("alice", now);
        }
        assert_eq!(t.check("alice", now), Ok(()), "five failures are free");
        t.failed("alice", now);
        assert_eq!(t.check("alice", now), Err(Duration::from_secs(1)));
        assert_eq!(
            t.check("bob", now),
            Ok(()),
            "other usernames are not affected"
        );
        now += Duration::from_secs(1);
        assert_eq!(t.check("alice", now), Ok(()));
        t.failed("alice", now);
        assert_eq!(t.check("alice", now), Err(Duration::from_secs(2)));
        for _ in 0..20 {
            t.failed("alice", now);
        }
        assert_eq!(
            t.check("alice", now),
            Err(Duration::from_secs(60)),
            "capped"
        );
        t.succeeded("alice");
        assert_eq!(t.check("alice", now), Ok(()));
    }

    #[test]
    fn old_failures_are_forgotten_and_the_table_is_bounded() {
        let t = throttle();
        let mut now = Instant::now();
        for _ in 0..6 {
            t.failed("alice", now);
        }
        assert!(t.check("alice", now).is_err());
        t.failed("bob", now);
        t.failed("carol", now);
        assert_eq!(t.check("carol", now), Ok(()));
        for _ in 0..10 {
            t.failed("carol", now);
        }
        assert_eq!(
            t.check("carol", now),
            Ok(()),
            "not tracked: the table is full"
        );
        assert!(
            t.check("alice", now).is_err(),
            "a full table unlocks no one"
        );
        now += Duration::from_secs(15 * 60);
        t.failed("carol", now);
        assert_eq!(t.check("alice", now), Ok(()), "forgotten");
        t.failed("alice", now);
        assert_eq!(t.check("alice", now), Ok(()), "counting from one again");
    }

    #[test]
    fn a_user_creates_at_most_the_cap_in_an_hour() {
        let cap = GroupCap::new(3, 2);
        let mut now = Instant::now();
        for _ in 0..3 {
            assert_eq!(cap.take("mallory", now), Ok(()));
        }
        now += Duration::from_secs(600);
        assert_eq!(cap.take("mallory", now), Err(Duration::from_secs(3000)));
        assert_eq!(
            cap.take("alice", now),
            Ok(()),
            "others have their own count"
        );
        assert!(
            cap.take("bob", now).is_err(),
            "the table is full within the hour"
        );
        now += Duration::from_secs(3000);
        assert_eq!(cap.take("mallory", now), Ok(()), "a new hour");
        assert!(
            cap.take("bob", now).is_err(),
            "alice's hour is not over yet"
        );
        now += Duration::from_secs(600);
        assert_eq!(
            cap.take("bob", now),
            Ok(()),
            "alice's hour is over: room for bob"
        );
    }
}
