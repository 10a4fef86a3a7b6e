//! Running the standard scenario for seeds: one line per seed, trace files on failure,
//! the determinism check, and the numbers for speed reports.

use crate::cluster::Knobs;
use crate::faults::{Schedule, Swarm};
use crate::scenario::{self, Failure, ScenarioConfig, Stats};
use crate::seeds::run_seed;
use crate::trace::Trace;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct SeedRun {
    pub seed: u64,
    pub swarm: Swarm,
    pub schedule: Schedule,
    /// The run's figures, when it got as far as the checks.
    pub stats: Option<Stats>,
    pub result: Result<(), Failure>,
    pub trace_hash: String,
    pub trace: Vec<String>,
    pub simulated: Duration,
    pub wall: Duration,
}

impl SeedRun {
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }

    /// `seed <N>: pass trace-hash <hex> live <share>% push-p99 <ms> ms, <M> messages`, or
    /// `FAIL <checker>` in place of `pass`.
    pub fn line(&self) -> String {
        let verdict = match &self.result {
            Ok(()) => "pass".to_owned(),
            Err(f) => format!("FAIL {}", f.checker),
        };
        let live = match &self.stats {
            Some(stats) => format!(
                " live {:.1}% push-p99 {:.0} ms, {} messages",
                stats.live.share_percent(),
                stats.live.push_p99_ms,
                stats.messages_stored
            ),
            None => String::new(),
        };
        format!(
            "seed {}: {verdict} trace-hash {}{live}",
            self.seed, self.trace_hash
        )
    }

    /// Writes the event trace (faults, frames, acks, verdict) to `path`, or next to the
    /// build output.
    pub fn write_trace(&self, path: Option<&std::path::Path>) -> std::io::Result<PathBuf> {
        let path = match path {
            Some(path) => path.to_owned(),
            None => {
                let dir = std::env::var_os("SIM_TRACE_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("target/sim-traces"));
                dir.join(format!("seed-{}.trace", self.seed))
            }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = format!("seed {}\n{}\n", self.seed, self.swarm);
        for episode in &self.schedule.episodes {
            text.push_str(&format!("schedule {episode}\n"));
        }
        for line in &self.trace {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!("result {:?}\n", self.result));
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

/// Runs the standard scenario for `seed`, with the seed's own schedule or `schedule`.
pub fn run_standard(seed: u64, config: &ScenarioConfig, schedule: Option<Schedule>) -> SeedRun {
    let (swarm, generated) = if config.calm {
        (Swarm::CALM, Schedule::default())
    } else {
        Schedule::generate(seed, &config.cluster, config.devices, config.chaos)
    };
    let schedule = schedule.unwrap_or(generated);
    type Slot = Arc<Mutex<Option<(Option<Stats>, Result<(), Failure>)>>>;
    let outcome_slot: Slot = Arc::new(Mutex::new(None));
    let wall = Instant::now();
    // Setup time grows with the accounts (the scale scenario has thousands).
    let limit = config.chaos
        + config.settle_max * 2
        + Duration::from_secs(600)
        + Duration::from_millis(100 * config.users as u64);
    let outcome = {
        let (mut config, schedule, slot) = (config.clone(), schedule.clone(), outcome_slot.clone());
        config.cluster.knobs = Knobs::draw(seed);
        run_seed(seed, limit, move |trace: Trace| async move {
            trace.record(&config.cluster.knobs);
            let result = scenario::run(config, seed, swarm, schedule, trace).await;
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            Ok(())
        })
    };
    let (stats, result) = outcome_slot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(|| {
            let detail = outcome
                .result
                .clone()
                .err()
                .unwrap_or_else(|| "no result".into());
            (
                None,
                Err(Failure {
                    checker: "scenario".into(),
                    checkers: vec!["scenario".into()],
                    detail,
                }),
            )
        });
    SeedRun {
        seed,
        swarm,
        schedule,
        stats,
        result,
        trace_hash: outcome.trace_hash,
        trace: outcome.trace,
        simulated: outcome.simulated,
        wall: wall.elapsed(),
    }
}

/// The replay command printed for a failing seed.
pub fn replay_command(seed: u64) -> String {
    format!("ci/sim --seed {seed}")
}
