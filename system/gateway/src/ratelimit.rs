//! Rate limits at the gateway ([`chat_net::ratelimit`]): one bucket per user for
//! authenticated calls and WebSocket upgrades, one per IP address for the rest (register,
//! log in) and for upgrades, and a stricter one per IP address for register and log in
//! (each costs a password hash). Over the limit: 429 `rate_limited` with `Retry-After`.

use chat_net::ratelimit::{KeyedLimit, Rate};
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RateConfig {
    /// Per authenticated user: REST calls and WebSocket upgrades.
    pub user: Option<Rate>,
    /// Per client IP: every request.
    pub ip: Option<Rate>,
    /// Per client IP, as well: registrations and logins, which cost a password hash each.
    pub credentials: Option<Rate>,
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
            // A person logs in a few times a day; an office behind one address, a few a
            // second at nine o'clock.
            credentials: Some(Rate {
                per_second: 10,
                burst: 100,
            }),
        }
    }
}

impl RateConfig {
    pub fn unlimited() -> RateConfig {
        RateConfig {
            user: None,
            ip: None,
            credentials: None,
        }
    }
}

pub struct RateLimits {
    user: Option<KeyedLimit<String>>,
    ip: Option<KeyedLimit<IpAddr>>,
    credentials: Option<KeyedLimit<IpAddr>>,
}

impl RateLimits {
    pub fn new(config: RateConfig) -> RateLimits {
        RateLimits {
            user: config.user.map(KeyedLimit::new),
            ip: config.ip.map(KeyedLimit::new),
            credentials: config.credentials.map(KeyedLimit::new),
        }
    }

    /// Ok, or how long to wait before retrying.
    pub fn check_user(&self, user: &str) -> Result<(), Duration> {
        match &self.user {
            Some(limit) => limit.check(&user.to_owned()),
            None => Ok(()),
        }
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.ip {
            Some(limit) => limit.check(&ip),
            None => Ok(()),
        }
    }

    /// A registration or login from `ip` (besides [`RateLimits::check_ip`]).
    pub fn check_credentials(&self, ip: IpAddr) -> Result<(), Duration> {
        match &self.credentials {
            Some(limit) => limit.check(&ip),
            None => Ok(()),
        }
    }

    /// Forgets keys whose buckets are full again, so memory follows active clients only.
    pub fn forget_idle(&self) {
        self.user.iter().for_each(KeyedLimit::forget_idle);
        self.ip.iter().for_each(KeyedLimit::forget_idle);
        self.credentials.iter().for_each(KeyedLimit::forget_idle);
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
            credentials: None,
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
