//! Shrinking a failing seed's fault schedule.
//!
//! The seed fixes everything random inside the simulation; the schedule is explicit input.
//! So the same seed can be re-run with subsets of its schedule: remove one episode at a
//! time (largest chunks first, then single episodes), keep a removal whenever the run
//! still fails with the same checker, until no single episode can go. The result is
//! 1-minimal: every episode left is needed for the failure. Removing episodes changes
//! timing, so the workload's random draws differ too; what is kept is the checker that
//! fails, which is what an engineer needs to reproduce the bug.

use crate::faults::Schedule;
use crate::runner::{SeedRun, run_standard};
use crate::scenario::ScenarioConfig;

/// Shrinks `failing`'s schedule; `progress` is told each attempt's verdict.
pub fn shrink(failing: &SeedRun, config: &ScenarioConfig, mut progress: impl FnMut(&str)) -> SeedRun {
    let Err(failure) = &failing.result else { return failing.clone() };
    let checker = failure.checker.clone();
    let mut best = failing.clone();
    let still_fails = |run: &SeedRun| run.result.as_ref().err().is_some_and(|f| f.checker == checker);
    let mut chunk = (best.schedule.episodes.len() / 2).max(1);
    loop {
        let mut removed_any = false;
        let mut start = 0;
        while start < best.schedule.episodes.len() {
            let end = (start + chunk).min(best.schedule.episodes.len());
            let drop: Vec<usize> = (start..end).collect();
            let candidate: Schedule = best.schedule.without(&drop);
            let run = run_standard(best.seed, config, Some(candidate));
            let verdict = if still_fails(&run) { "still fails" } else { "passes" };
            progress(&format!("without episodes {start}..{end} of {}: {verdict}", best.schedule.episodes.len()));
            if still_fails(&run) {
                best = run;
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
