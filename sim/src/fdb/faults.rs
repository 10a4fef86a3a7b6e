//! The faults the simulated store injects, shared between the harness and the server node
//! and changeable while the simulation runs, and the counts of what was injected.
//!
//! Every decision draws from `rand` 0.9, whose randomness madsim intercepts: a seed replays
//! the same faults. Node kills, restarts and partitions are the harness's, through madsim.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What to inject. [`FaultConfig::QUIET`] injects nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultConfig {
    /// Server-side delay before each reply (`Begin`, reads, `Commit`), drawn uniformly from
    /// `[latency_min, latency_max]`. A commit's delay is split around the moment it applies,
    /// so a kill in between loses the reply of an applied commit.
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Probability that a commit with mutations fails with `NotCommitted` (1020) although
    /// it did not conflict. Nothing is applied.
    pub not_committed_probability: f64,
    /// Probability that a commit with mutations is answered `CommitUnknownResult` (1021).
    /// Whether it was applied is a fair coin.
    pub unknown_result_probability: f64,
    /// Probability that a new transaction is refused with `Unavailable`.
    pub unavailable_probability: f64,
}

impl FaultConfig {
    /// No injected faults, no added latency (the network's own latency remains).
    pub const QUIET: FaultConfig = FaultConfig {
        latency_min: Duration::ZERO,
        latency_max: Duration::ZERO,
        not_committed_probability: 0.0,
        unknown_result_probability: 0.0,
        unavailable_probability: 0.0,
    };

    /// A hostile but workable store: up to 20 ms per reply, 10% spurious conflicts, 10%
    /// unknown results, 5% refused transactions.
    pub const NOISY: FaultConfig = FaultConfig {
        latency_min: Duration::ZERO,
        latency_max: Duration::from_millis(20),
        not_committed_probability: 0.1,
        unknown_result_probability: 0.1,
        unavailable_probability: 0.05,
    };

    fn check(&self) {
        assert!(
            self.latency_min <= self.latency_max,
            "latency_min above latency_max"
        );
        for p in [
            self.not_committed_probability,
            self.unknown_result_probability,
            self.unavailable_probability,
        ] {
            assert!((0.0..=1.0).contains(&p), "probability {p} outside [0, 1]");
        }
        assert!(
            self.not_committed_probability + self.unknown_result_probability <= 1.0,
            "commit fault probabilities add up to more than 1"
        );
    }
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig::QUIET
    }
}

/// What the store did and injected, for traces and reports. Equal counts for one seed run
/// twice are part of the determinism check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SimFdbCounts {
    /// Transactions begun (handshakes answered `Ok`).
    pub transactions: u64,
    /// Commits with mutations that applied (including those answered 1021).
    pub commits_applied: u64,
    /// Commits refused by the store's own checks: conflicts (1020).
    pub conflicts: u64,
    /// Commits and reads refused as too old (1007).
    pub too_old: u64,
    /// Injected spurious 1020s.
    pub injected_not_committed: u64,
    /// Injected 1021s whose commit applied.
    pub injected_unknown_applied: u64,
    /// Injected 1021s whose commit did not apply (not attempted, or attempted and refused).
    pub injected_unknown_not_applied: u64,
    /// New transactions refused, by probability or during an outage.
    pub injected_unavailable: u64,
}

/// The commit fault drawn for one commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommitFault {
    None,
    NotCommitted,
    UnknownResult { apply: bool },
}

/// The shared, changeable fault settings of one simulated store. Cloning shares them.
#[derive(Clone, Default)]
pub struct SimFdbFaults {
    // A std Mutex: plain data, never held across an `.await`.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    config: FaultConfig,
    /// New transactions are refused until then (an outage).
    unavailable_until: Option<Instant>,
    counts: SimFdbCounts,
}

impl SimFdbFaults {
    pub fn new(config: FaultConfig) -> SimFdbFaults {
        config.check();
        SimFdbFaults {
            inner: Arc::new(Mutex::new(Inner {
                config,
                ..Inner::default()
            })),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Only counters and settings behind it: still consistent after a panic elsewhere.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn config(&self) -> FaultConfig {
        self.inner().config
    }

    /// Replaces the settings; takes effect for the next request.
    pub fn set(&self, config: FaultConfig) {
        config.check();
        self.inner().config = config;
    }

    /// Turns every injected fault off, including a running outage (for the end of a
    /// scenario, when liveness is checked). Kills and partitions are the harness's to undo.
    pub fn quiet(&self) {
        let mut inner = self.inner();
        inner.config = FaultConfig::QUIET;
        inner.unavailable_until = None;
    }

    /// Refuses every new transaction for `duration` (of simulated time) from now.
    pub fn unavailable_for(&self, duration: Duration) {
        self.inner().unavailable_until = Some(Instant::now() + duration);
    }

    pub fn counts(&self) -> SimFdbCounts {
        self.inner().counts
    }

    /// A delay for one reply.
    pub(crate) fn latency(&self) -> Duration {
        let (min, max) = {
            let config = self.inner().config;
            (config.latency_min, config.latency_max)
        };
        if max.is_zero() {
            return Duration::ZERO;
        }
        let micros = |d: Duration| d.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(rand::random_range(micros(min)..=micros(max)))
    }

    /// Whether a new transaction is admitted; counts the refusals.
    pub(crate) fn admit(&self) -> bool {
        let mut inner = self.inner();
        let outage = inner
            .unavailable_until
            .is_some_and(|until| Instant::now() < until);
        let refused = outage || draw(inner.config.unavailable_probability);
        if refused {
            inner.counts.injected_unavailable += 1;
        } else {
            inner.counts.transactions += 1;
        }
        !refused
    }

    /// The fault for one commit with mutations.
    pub(crate) fn commit_fault(&self) -> CommitFault {
        let config = self.inner().config;
        // One draw decides between the two faults, so their probabilities simply add.
        let roll: f64 =
            if config.not_committed_probability + config.unknown_result_probability > 0.0 {
                rand::random()
            } else {
                1.0
            };
        if roll < config.not_committed_probability {
            self.inner().counts.injected_not_committed += 1;
            CommitFault::NotCommitted
        } else if roll < config.not_committed_probability + config.unknown_result_probability {
            CommitFault::UnknownResult {
                apply: rand::random(),
            }
        } else {
            CommitFault::None
        }
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut SimFdbCounts)) {
        f(&mut self.inner().counts);
    }
}

/// True with probability `p`; draws nothing when `p` is 0 (so quiet runs consume no
/// randomness and stay comparable).
fn draw(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

impl std::fmt::Debug for SimFdbFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner();
        f.debug_struct("SimFdbFaults")
            .field("config", &inner.config)
            .field("unavailable_until", &inner.unavailable_until)
            .field("counts", &inner.counts)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_draws_no_faults() {
        let faults = SimFdbFaults::new(FaultConfig::QUIET);
        for _ in 0..100 {
            assert!(faults.admit());
            assert_eq!(faults.commit_fault(), CommitFault::None);
            assert_eq!(faults.latency(), Duration::ZERO);
        }
        assert_eq!(
            faults.counts(),
            SimFdbCounts {
                transactions: 100,
                ..SimFdbCounts::default()
            }
        );
    }

    #[test]
    fn outages_end_and_quiet_ends_them_early() {
        let faults = SimFdbFaults::new(FaultConfig::QUIET);
        faults.unavailable_for(Duration::from_secs(3600));
        assert!(!faults.admit());
        faults.quiet();
        assert!(faults.admit());
        assert_eq!(faults.counts().injected_unavailable, 1);
    }

    #[test]
    fn certain_faults_always_fire() {
        let always_conflict = FaultConfig {
            not_committed_probability: 1.0,
            ..FaultConfig::QUIET
        };
        let faults = SimFdbFaults::new(always_conflict);
        assert_eq!(faults.commit_fault(), CommitFault::NotCommitted);
        faults.set(FaultConfig {
            unknown_result_probability: 1.0,
            unavailable_probability: 1.0,
            ..FaultConfig::QUIET
        });
        assert!(matches!(
            faults.commit_fault(),
            CommitFault::UnknownResult { .. }
        ));
        assert!(!faults.admit());
        faults.set(FaultConfig {
            latency_min: Duration::from_millis(5),
            latency_max: Duration::from_millis(5),
            ..FaultConfig::QUIET
        });
        assert_eq!(faults.latency(), Duration::from_millis(5));
    }

    #[test]
    #[should_panic(expected = "outside [0, 1]")]
    fn probabilities_are_checked() {
        SimFdbFaults::new(FaultConfig {
            unavailable_probability: 1.5,
            ..FaultConfig::QUIET
        });
    }
}
