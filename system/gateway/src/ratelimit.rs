//! Rate limits at the gateway, with the `governor` crate (GCRA): one bucket per user for
//! authenticated calls and WebSocket upgrades, one per IP address for the rest (register,
//! log in) and for upgrades. Over the limit: 429 `rate_limited` with `Retry-After`.
//!
//! The clock is governor's `MonotonicClock` (`std::time::Instant`), which madsim simulates;
//! its default quanta clock reads the CPU's counter and would not be.

use governor::clock::{Clock, MonotonicClock};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

type Keyed<K> = RateLimiter<K, governor::state::keyed::HashMapStateStore<K>, MonotonicClock>;

/// Requests per second and burst, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Per authenticated user: REST calls and WebSocket upgrades.
    pub user: Option<Rate>,
    /// Per client IP: every request.
    pub ip: Option<Rate>,
}

impl Default for RateConfig {
    fn default() -> Self {
        // Generous for people, tight enough to stop a runaway script.
        RateConfig {
            user: Some(Rate {
                per_second: 20,
                burst: 100,
            }),
            ip: Some(Rate {
                per_second: 200,
                burst: 1000,
            }),
        }
    }
}

impl RateConfig {
    pub fn unlimited() -> RateConfig {
        RateConfig {
            user: None,
            ip: None,
        }
    }
}

pub struct RateLimits {
    user: Option<Keyed<String>>,
    ip: Option<Keyed<IpAddr>>,
    clock: MonotonicClock,
}

impl RateLimits {
    pub fn new(config: RateConfig) -> RateLimits {
        let quota = |rate: Rate| {
            let per_second = NonZeroU32::new(rate.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Quota::per_second(per_second).allow_burst(burst)
        };
        RateLimits {
            user: config
                .user
                .map(|r| RateLimiter::hashmap_with_clock(quota(r), MonotonicClock)),
            ip: config
                .ip
                .map(|r| RateLimiter::hashmap_with_clock(quota(r), MonotonicClock)),
            clock: MonotonicClock,
        }
    }

    /// Ok, or how long to wait before retrying.
    pub fn check_user(&self, user: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.user else {
            return Ok(());
        };
        limiter
            .check_key(&user.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(limiter) = &self.ip else {
            return Ok(());
        };
        limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets keys whose buckets are full again, so memory follows active clients only.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.user {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Runs [`RateLimits::forget_idle`] every `interval`, forever.
    pub async fn run_cleanup(self: std::sync::Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            self.forget_idle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key_with_a_wait_time() {
        let limits = RateLimits::new(RateConfig {
            user: Some(Rate {
                per_second: 1,
                burst: 3,
            }),
            ip: None,
        });
        for _ in 0..3 {
            assert!(limits.check_user("alice").is_ok());
        }
        let wait = limits.check_user("alice").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(
            limits.check_user("bob").is_ok(),
            "other users have their own bucket"
        );
        assert!(
            limits.check_ip("127.0.0.1".parse().unwrap()).is_ok(),
            "no IP limit configured"
        );
    }
}
