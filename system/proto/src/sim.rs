//! Hooks for the deterministic simulator, compiled to nothing in production.
//!
//! - [`buggify`]: FoundationDB-style fault points. Under `--cfg madsim`, and only once the
//!   scenario has enabled buggify for its seed, returns true with the given probability
//!   (drawn from the seeded simulator); otherwise always false.
//! - [`planted`]: known bugs the checkers must catch, behind the `planted-bugs` feature that
//!   only the simulator's build turns on. Without it, [`planted`] is a constant `false`.

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

/// Known bugs the simulator plants to prove its checkers catch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PlantedBug {
    /// The app server acknowledges a send before its transaction commits.
    AckBeforeDurable = 1,
    /// The store does not look up the (sender, client id) idempotency entry.
    SkipIdempotency = 2,
    /// The connection server swaps consecutive pushes of a conversation.
    DeliverOutOfOrder = 3,
}

impl PlantedBug {
    pub fn parse(name: &str) -> Option<PlantedBug> {
        match name {
            "ack-before-durable" => Some(PlantedBug::AckBeforeDurable),
            "skip-idempotency" => Some(PlantedBug::SkipIdempotency),
            "deliver-out-of-order" => Some(PlantedBug::DeliverOutOfOrder),
            _ => None,
        }
    }
}

#[cfg(feature = "planted-bugs")]
static PLANTED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether `bug` is planted in this process.
#[inline]
pub fn planted(bug: PlantedBug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.load(std::sync::atomic::Ordering::Relaxed) == bug as u8
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Plants `bug` for the rest of this process (the simulator runs one seed per process).
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<PlantedBug>) {
    PLANTED.store(bug.map_or(0, |b| b as u8), std::sync::atomic::Ordering::Relaxed);
}
