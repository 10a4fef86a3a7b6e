//! Hooks for the deterministic simulator, compiled to nothing in production.
//!
//! - [`buggify`]: FoundationDB-style fault points. Under `--cfg madsim`, and only once the
//!   scenario has enabled buggify for its seed, returns true with the given probability
//!   (drawn from the seeded simulator); otherwise always false.
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
