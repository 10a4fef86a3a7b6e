//! Running a scenario for one seed on a fresh simulated runtime.

use crate::trace::Trace;
use std::future::Future;
use std::time::Duration;

/// What one seed produced.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: String,
    pub events: usize,
    /// Simulated time the scenario took.
    pub simulated: Duration,
    /// `Err` names the failed check.
    pub result: Result<(), String>,
}

/// Runs `scenario` on a new runtime seeded with `seed`, with a bound on simulated time.
pub fn run_seed<F, Fut>(seed: u64, time_limit: Duration, scenario: F) -> Outcome
where
    F: FnOnce(Trace) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    runtime.set_time_limit(time_limit);
    let trace = Trace::new();
    let (result, simulated) = runtime.block_on({
        let trace = trace.clone();
        async move {
            let start = std::time::Instant::now();
            let result = scenario(trace).await;
            (result, start.elapsed())
        }
    });
    Outcome { seed, trace_hash: trace.hash(), events: trace.len(), simulated, result: result.map_err(|e| format!("{e:#}")) }
}

/// Seeds to run: `SIM_SEED=N` runs just N; `SIM_SEEDS=K` runs 1..=K; else `1..=default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    (1..=count).collect()
}
