//! Shrinking a failing seed's fault schedule.
//!
//! The seed fixes everything random inside the simulation; the schedule is explicit input.
//! So the same seed can be re-run with subsets of its schedule: remove episodes (largest
//! chunks first, then single episodes), keep a removal whenever the run still fails with
//! the same checker, until no single episode can go. The result is 1-minimal: every
//! episode left is needed for the failure. Every device draws from its own random stream,
//! so removing an episode changes what the devices it touches do, not everyone's draws; what
//! is kept is the failing checker, which is what an engineer needs to reproduce the bug.
//! Each candidate runs in a fresh process (`chat-sim --seed N --schedule FILE`), like every
//! other run, so a shrunk schedule replays exactly as it was judged.

use crate::faults::Schedule;

/// Shrinks `schedule`, which fails; `still_fails` runs a candidate; `progress` is told each
/// attempt's verdict.
pub fn shrink(
    schedule: &Schedule,
    mut still_fails: impl FnMut(&Schedule) -> bool,
    mut progress: impl FnMut(&str),
) -> Schedule {
    let mut best = schedule.clone();
    let mut chunk = (best.episodes.len() / 2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.episodes.len() {
            let end = (start + chunk).min(best.episodes.len());
            let drop: Vec<usize> = (start..end).collect();
            let candidate = best.without(&drop);
            let fails = still_fails(&candidate);
            progress(&format!(
                "without episodes {start}..{end} of {}: {}",
                best.episodes.len(),
                if fails { "still fails" } else { "passes" }
            ));
            if fails {
                best = candidate;
                removed_any = true;
            } else {
                start = end;
            }
        }
        if chunk == 1 && !removed_any {
            return best;
        }
        chunk = (chunk / 2).max(1);
    }
}
