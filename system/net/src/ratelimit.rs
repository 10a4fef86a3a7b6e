//! Keyed rate limits with the `governor` crate (GCRA): one bucket per key (a user, an
//! address), each refilling at its rate up to its burst. The gateway limits requests with
//! them, connection servers a user's frames.
//!
//! The clock is governor's `MonotonicClock` (`std::time::Instant`), which madsim simulates;
//! its default quanta clock reads the CPU's counter and would not be.

use governor::clock::{Clock, MonotonicClock};
use governor::{Quota, RateLimiter};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

/// Events per second and burst, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

type Keyed<K> = RateLimiter<K, governor::state::keyed::HashMapStateStore<K>, MonotonicClock>;

/// One bucket per key.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: Keyed<K>,
    clock: MonotonicClock,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub fn new(rate: Rate) -> KeyedLimit<K> {
        let per_second = NonZeroU32::new(rate.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        KeyedLimit {
            limiter: RateLimiter::hashmap_with_clock(quota, MonotonicClock),
            clock: MonotonicClock,
        }
    }

    /// Ok, or how long to wait before the next event of `key` is allowed.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again, so memory follows active keys only.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}
