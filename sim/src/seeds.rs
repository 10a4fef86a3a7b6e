//! Running a scenario for one seed on a fresh simulated runtime.

use crate::trace::Trace;
use std::future::Future;
use std::time::Duration;

/// What one seed produced.
#[derive(Debug)]
pub struct Outcome {
    pub seed: u64,
    pub trace_hash: String,
    pub trace: Vec<String>,
    pub events: usize,
    /// Simulated time the scenario took.
    pub simulated: Duration,
    /// `Err` names the failed check.
    pub result: Result<(), String>,
}

/// Runs `scenario` on a new runtime seeded with `seed`, with a bound on simulated time.
///
/// Each seed runs on a thread of its own: `rand`'s `ThreadRng` and std's `HashMap` keys are
/// thread-locals seeded once per thread, so a second seed on the same thread would continue
/// the first seed's streams instead of drawing fresh (intercepted, seeded) randomness, and
/// one seed would not replay the same way twice.
pub fn run_seed<F, Fut>(seed: u64, time_limit: Duration, scenario: F) -> Outcome
where
    F: FnOnce(Trace) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let run = move || {
        // RUST_LOG=... prints the production code's logs with simulated timestamps.
        if std::env::var_os("RUST_LOG").is_some() {
            madsim::runtime::init_logger();
        }
        let mut runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
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
        Outcome {
            seed,
            trace_hash: trace.hash(),
            trace: trace.lines(),
            events: trace.len(),
            simulated,
            result: result.map_err(|e| format!("{e:#}")),
        }
    };
    match std::thread::Builder::new()
        .name(format!("seed-{seed}"))
        .spawn(run)
        .map(|t| t.join())
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_owned());
            Outcome {
                seed,
                trace_hash: String::new(),
                trace: Vec::new(),
                events: 0,
                simulated: Duration::ZERO,
                result: Err(format!("panicked: {message}")),
            }
        }
        Err(err) => Outcome {
            seed,
            trace_hash: String::new(),
            trace: Vec::new(),
            events: 0,
            simulated: Duration::ZERO,
            result: Err(format!("could not start the seed's thread: {err}")),
        },
    }
}

/// Seeds to run: `SIM_SEED=N` runs just N; `SIM_SEEDS=K` runs 1..=K; else `1..=default`.
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=count).collect()
}

/// The first line where two traces of one seed differ, for the failure message.
pub fn first_difference(a: &[String], b: &[String]) -> Option<(usize, String, String)> {
    let missing = || "<end of trace>".to_owned();
    (0..a.len().max(b.len())).find_map(|i| {
        let (x, y) = (
            a.get(i).cloned().unwrap_or_else(missing),
            b.get(i).cloned().unwrap_or_else(missing),
        );
        (x != y).then_some((i, x, y))
    })
}
