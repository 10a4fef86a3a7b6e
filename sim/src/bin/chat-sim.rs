//! `chat-sim`: run, replay, shrink and check the determinism of simulation seeds.
//! Built with `--cfg madsim`; `ci/sim` is the way to call it.
//!
//!   chat-sim --seed N          replay one seed
//!   chat-sim --seeds N         seeds 1..=N
//!   chat-sim --from A --seeds N  seeds A..A+N-1
//!   chat-sim --determinism N   seeds 1..=N, each twice, trace hashes compared
//!   chat-sim --shrink N        shrink seed N's fault schedule to a minimal failing one
//!   --quick                    a short scenario (60 s of faults) for smoke runs
//!   --jobs J                   seeds run in J processes at once (default 2)
//!   --calm                     no faults at all: every message must be pushed live
//!
//! Every seed runs in a process of its own (this binary with `--seed N`): statics of
//! third-party crates survive from one seed to the next in a process and can shift the
//! simulator's random stream, so only a fresh process replays a seed exactly as a
//! standalone `--seed N` will.

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    use chat_sim::runner::{replay_command, run_standard};
    use chat_sim::scenario::ScenarioConfig;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse::<u64>().ok());
    let mut config = ScenarioConfig::default();
    if args.iter().any(|a| a == "--quick") {
        config.chaos = Duration::from_secs(60);
        config.devices = 20;
        config.users = 12;
        config.hot_group_members = 8;
    }
    let calm = args.iter().any(|a| a == "--calm");
    config.calm = calm;
    let report = |run: &chat_sim::runner::SeedRun| {
        println!("{}", run.line());
        if let Err(failure) = &run.result {
            println!("  checkers: {}", failure.checkers.join(" "));
            println!("  {}", failure.detail);
            match run.write_trace() {
                Ok(path) => println!("  trace: {}", path.display()),
                Err(err) => println!("  trace not written: {err}"),
            }
            println!("  replay: {}", replay_command(run.seed));
        }
    };

    if let Some(seed) = value("--shrink") {
        let failing = run_standard(seed, &config, None);
        report(&failing);
        if failing.passed() {
            println!("seed {seed} passes; nothing to shrink");
            return ExitCode::SUCCESS;
        }
        let minimal = chat_sim::shrink::shrink(&failing, &config, |line| println!("  shrink: {line}"));
        println!("minimal schedule for seed {seed} ({} of {} episodes), still failing {}:", minimal.schedule.episodes.len(), failing.schedule.episodes.len(), minimal.result.as_ref().err().map(|f| f.checker.as_str()).unwrap_or("?"));
        for episode in &minimal.schedule.episodes {
            println!("  {episode}");
        }
        let _ = minimal.write_trace();
        return ExitCode::FAILURE;
    }

    let quick = args.iter().any(|a| a == "--quick");
    let jobs = value("--jobs").unwrap_or(2).max(1) as usize;

    if let Some(seed) = value("--seed") {
        let run = run_standard(seed, &config, None);
        report(&run);
        // For a parent process: the simulated time of this run.
        println!("sim-stats simulated_secs={:.3}", run.simulated.as_secs_f64());
        return if run.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }

    if let Some(count) = value("--determinism") {
        let seeds: Vec<u64> = (1..=count).collect();
        let first = run_children(&seeds, quick, calm, jobs);
        let second = run_children(&seeds, quick, calm, jobs);
        let mut failed = false;
        for (a, b) in first.iter().zip(&second) {
            if a.hash == b.hash && !a.hash.is_empty() {
                println!("seed {}: deterministic trace-hash {}", a.seed, a.hash);
            } else {
                failed = true;
                println!("seed {}: NONDETERMINISTIC trace-hash {} then {}", a.seed, a.hash, b.hash);
            }
        }
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }

    let seeds: Vec<u64> = match value("--seeds") {
        Some(n) => {
            let from = value("--from").unwrap_or(1);
            (from..from + n).collect()
        }
        None => {
            eprintln!("usage: chat-sim --seed N | --seeds N [--from A] | --determinism N | --shrink N [--quick] [--jobs J]");
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let results = run_children(&seeds, quick, calm, jobs);
    let wall = wall.elapsed();
    let failed: Vec<u64> = results.iter().filter(|r| !r.passed).map(|r| r.seed).collect();
    let simulated: f64 = results.iter().map(|r| r.simulated_secs).sum();
    println!(
        "{} seeds, {} failed{}; {:.0} simulated s in {:.1} wall s with {jobs} processes: {:.0}x real time, {:.1} seeds/min",
        seeds.len(),
        failed.len(),
        if failed.is_empty() { String::new() } else { format!(" ({failed:?})") },
        simulated,
        wall.as_secs_f64(),
        simulated / wall.as_secs_f64().max(1e-9),
        seeds.len() as f64 / wall.as_secs_f64().max(1e-9) * 60.0
    );
    println!("seeds: {} passed, {} failed", seeds.len() - failed.len(), failed.len());
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// What a child process reported for its seed.
#[cfg(madsim)]
struct ChildResult {
    seed: u64,
    passed: bool,
    hash: String,
    simulated_secs: f64,
}

/// Runs each seed as `<this binary> --seed N`, `jobs` at a time, echoing their reports in
/// seed order.
#[cfg(madsim)]
fn run_children(seeds: &[u64], quick: bool, calm: bool, jobs: usize) -> Vec<ChildResult> {
    use std::process::{Command, Stdio};
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => {
            eprintln!("cannot find this binary to run seeds: {err}");
            return seeds.iter().map(|&seed| ChildResult { seed, passed: false, hash: String::new(), simulated_secs: 0.0 }).collect();
        }
    };
    let mut results = Vec::with_capacity(seeds.len());
    for chunk in seeds.chunks(jobs) {
        let children: Vec<(u64, std::io::Result<std::process::Child>)> = chunk
            .iter()
            .map(|&seed| {
                let mut command = Command::new(&exe);
                command.arg("--seed").arg(seed.to_string()).stdout(Stdio::piped()).stderr(Stdio::inherit());
                if quick {
                    command.arg("--quick");
                }
                if calm {
                    command.arg("--calm");
                }
                (seed, command.spawn())
            })
            .collect();
        for (seed, child) in children {
            let output = child.and_then(|c| c.wait_with_output());
            let text = output.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            let mut result = ChildResult { seed, passed: false, hash: String::new(), simulated_secs: 0.0 };
            for line in text.lines() {
                if let Some(stats) = line.strip_prefix("sim-stats simulated_secs=") {
                    result.simulated_secs = stats.trim().parse().unwrap_or(0.0);
                    continue;
                }
                if line.starts_with(&format!("seed {seed}: ")) {
                    result.passed = line.contains(": pass ");
                    result.hash = line.split("trace-hash ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("").to_owned();
                }
                println!("{line}");
            }
            if result.hash.is_empty() {
                println!("seed {seed}: FAIL crashed trace-hash -");
                if let Err(err) = &output {
                    println!("  could not run the seed: {err}");
                } else if let Ok(o) = &output {
                    println!("  exit status {}", o.status);
                }
                println!("  replay: {}", chat_sim::runner::replay_command(seed));
            }
            results.push(result);
        }
    }
    results
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("chat-sim runs only in the simulator build: RUSTFLAGS=\"--cfg madsim\" (use ci/sim)");
    std::process::exit(2);
}
