//! `chat-sim`: run, replay, shrink and check the determinism of simulation seeds.
//! Built with `--cfg madsim`; `ci/sim` is the way to call it.
//!
//!   chat-sim --seed N          replay one seed
//!   chat-sim --seeds N         seeds 1..=N
//!   chat-sim --from A --seeds N  seeds A..A+N-1
//!   chat-sim --determinism N   seeds 1..=N, each twice, trace hashes compared
//!   chat-sim --shrink N        shrink seed N's fault schedule to a minimal failing one
//!   --quick                    a short scenario (60 s of faults) for smoke runs

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
    }
    let report = |run: &chat_sim::runner::SeedRun| {
        println!("{}", run.line());
        if let Err(failure) = &run.result {
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

    if let Some(count) = value("--determinism") {
        let mut failed = false;
        for seed in 1..=count {
            let (a, b) = (run_standard(seed, &config, None), run_standard(seed, &config, None));
            if a.trace_hash == b.trace_hash {
                println!("seed {seed}: deterministic trace-hash {}", a.trace_hash);
            } else {
                failed = true;
                let diff = chat_sim::seeds::first_difference(&a.trace, &b.trace);
                println!("seed {seed}: NONDETERMINISTIC {} vs {}; first difference {diff:?}", a.trace_hash, b.trace_hash);
            }
        }
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }

    let seeds: Vec<u64> = match (value("--seed"), value("--seeds"), value("--from")) {
        (Some(seed), _, _) => vec![seed],
        (None, Some(n), from) => {
            let from = from.unwrap_or(1);
            (from..from + n).collect()
        }
        _ => {
            eprintln!("usage: chat-sim --seed N | --seeds N [--from A] | --determinism N | --shrink N [--quick]");
            return ExitCode::from(2);
        }
    };
    let wall = Instant::now();
    let (mut failed, mut simulated) = (Vec::new(), Duration::ZERO);
    for seed in &seeds {
        let run = run_standard(*seed, &config, None);
        simulated += run.simulated;
        report(&run);
        if !run.passed() {
            failed.push(*seed);
        }
    }
    let wall = wall.elapsed();
    println!(
        "{} seeds, {} failed; {:.0} simulated s in {:.1} wall s: {:.0}x real time, {:.1} seeds/min",
        seeds.len(),
        failed.len(),
        simulated.as_secs_f64(),
        wall.as_secs_f64(),
        simulated.as_secs_f64() / wall.as_secs_f64().max(1e-9),
        seeds.len() as f64 / wall.as_secs_f64().max(1e-9) * 60.0
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("chat-sim runs only in the simulator build: RUSTFLAGS=\"--cfg madsim\" (use ci/sim)");
    std::process::exit(2);
}
