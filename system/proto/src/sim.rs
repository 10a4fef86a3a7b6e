//! Hooks for the deterministic simulator, compiled to nothing in production.
//!
//! - [`buggify`]: FoundationDB-style fault points. Under `--cfg madsim`, and only once the
//!   scenario has enabled buggify for its seed, returns true with the given probability
//!   (drawn from the seeded simulator); otherwise always false.
//! - [`buggify_delay`]: a fault point that delays, by a wait drawn from the simulator.
//!
//! Known bugs that the checkers must catch live outside the production code, as patches
//! (`sim/mutants/`, applied to a scratch copy by `ci/mutants`).

/// A fault point: true when the simulator chooses to misbehave here.
#[inline]
pub fn buggify(probability: f64) -> bool {
    #[cfg(madsim)]
    {
        madsim::buggify::is_enabled() && madsim::buggify::buggify_with_prob(probability)
    }
    #[cfg(not(madsim))]
    {
        let _ = probability;
        false
    }
}

/// A fault point that delays: with `probability`, a wait drawn below `max`; `None` otherwise
/// (always, in production). The caller sleeps on its own runtime: this crate has none.
pub fn buggify_delay(probability: f64, max: std::time::Duration) -> Option<std::time::Duration> {
    // u64 milliseconds hold 584 million years; the bound is a few seconds.
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(1);
    buggify(probability).then(|| std::time::Duration::from_millis(rand::random::<u64>() % max_ms))
}
