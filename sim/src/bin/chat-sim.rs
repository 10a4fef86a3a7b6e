//! `chat-sim`: run, replay, shrink and check the determinism of simulation seeds.
//! Built with `--cfg madsim`; `ci/sim` is the way to call it (`ci/sim --help`).
//!
//! Every seed runs in a process of its own (this binary with `--seed N`): statics of
//! third-party crates survive from one seed to the next in a process and can shift the
//! simulator's random stream, so only a fresh process replays a seed exactly as a
//! standalone `--seed N` will. Shrinking runs each candidate schedule the same way.

#[cfg(madsim)]
use std::path::PathBuf;

/// Runs seeds of the standard scenario under madsim and judges what every client observed.
#[cfg(madsim)]
#[derive(clap::Parser, Debug)]
#[command(name = "chat-sim", about, long_about = None)]
struct Args {
    /// Replay one seed exactly.
    #[arg(long, conflicts_with_all = ["seeds", "determinism", "shrink"])]
    seed: Option<u64>,
    /// Run seeds FROM..FROM+N-1, one line each.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of `--seeds`.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Run seeds 1..=N twice each and compare their traces.
    #[arg(long)]
    determinism: Option<u64>,
    /// Shrink seed N's fault schedule to a minimal one that still fails the same checker.
    #[arg(long)]
    shrink: Option<u64>,
    /// With `--seed`: play this schedule (`<start ms> <duration ms> <fault>` a line, as
    /// `--shrink` writes) instead of the seed's own.
    #[arg(long, requires = "seed")]
    schedule: Option<PathBuf>,
    /// A short scenario: 60 s of faults, 20 devices.
    #[arg(long)]
    quick: bool,
    /// No faults at all: every message must be pushed live.
    #[arg(long)]
    calm: bool,
    /// The `chat serve` deployment instead of the cluster: one node, `RedbKv` on a simulated
    /// disk, power-loss kills and disk errors.
    #[arg(long)]
    single: bool,
    /// The scale scenario: 10 gateways, 50 connection servers, 10 app servers, 10,000
    /// devices of 5,000 users, 60 s of faults (docs/scale.md).
    #[arg(long, conflicts_with_all = ["quick", "single"])]
    scale: bool,
    /// With `--scale`: this many devices instead of 10,000 (users, conversations and groups
    /// in proportion; the node counts stay), to find what breaks first at a smaller size.
    #[arg(long, requires = "scale", value_name = "N")]
    scale_devices: Option<usize>,
    /// Seeds run in this many processes at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// With `--seed`: print the seed's swarm and fault schedule, and run nothing.
    #[arg(long, requires = "seed")]
    show_schedule: bool,
    /// With `--seed`: write the whole trace here, pass or fail.
    #[arg(long, requires = "seed", hide = true)]
    trace_out: Option<PathBuf>,
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    use chat_sim::faults::Schedule;
    use chat_sim::runner::{replay_command, run_standard};
    use chat_sim::scenario::ScenarioConfig;
    use clap::Parser;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    let args = Args::parse();
    let mut config = ScenarioConfig::default();
    if args.quick {
        config.chaos = Duration::from_secs(60);
        config.devices = 20;
        config.users = 12;
        config.hot_group_members = 8;
    }
    if args.scale {
        config = ScenarioConfig::scale();
        if let Some(devices) = args.scale_devices {
            config = config.with_devices(devices);
        }
    }
    config.calm = args.calm;
    if args.single {
        config.cluster = chat_sim::cluster::ClusterConfig::single();
    }
    let children = Children {
        quick: args.quick,
        calm: args.calm,
        single: args.single,
        scale: args.scale,
        scale_devices: args.scale_devices,
        jobs: args.jobs.max(1),
    };

    if let (Some(seed), true) = (args.seed, args.show_schedule) {
        let (swarm, schedule) =
            Schedule::generate(seed, &config.cluster, config.devices, config.chaos);
        println!("seed {seed}\n{swarm}\n{}", schedule.to_text());
        return ExitCode::SUCCESS;
    }

    if let Some(seed) = args.seed {
        let schedule = match &args.schedule {
            None => None,
            Some(path) => match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| Schedule::parse(&text))
            {
                Ok(schedule) => Some(schedule),
                Err(err) => {
                    eprintln!(
                        "chat-sim: cannot read the schedule {}: {err}",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            },
        };
        let run = run_standard(seed, &config, schedule);
        println!("{}", run.line());
        if let Err(failure) = &run.result {
            println!("  checkers: {}", failure.checkers.join(" "));
            println!("  {}", failure.detail);
            match run.write_trace(None) {
                Ok(path) => println!("  trace: {}", path.display()),
                Err(err) => println!("  trace not written: {err}"),
            }
            let replay = match &args.schedule {
                Some(path) => format!("{} --schedule {}", replay_command(seed), path.display()),
                None if args.scale => match args.scale_devices {
                    Some(devices) => {
                        format!("{} --scale --scale-devices {devices}", replay_command(seed))
                    }
                    None => format!("{} --scale", replay_command(seed)),
                },
                None => replay_command(seed),
            };
            println!("  replay: {replay}");
        }
        if let Some(path) = &args.trace_out {
            if let Err(err) = run.write_trace(Some(path)) {
                eprintln!("chat-sim: cannot write {}: {err}", path.display());
            }
        }
        // For a parent process: the simulated time of this run.
        println!(
            "sim-stats simulated_secs={:.3}",
            run.simulated.as_secs_f64()
        );
        return if run.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }

    if let Some(seed) = args.shrink {
        return shrink(seed, &config, &children);
    }

    if let Some(count) = args.determinism {
        let seeds: Vec<u64> = (1..=count).collect();
        let dir = trace_dir().join("determinism");
        let first = children.run(
            &seeds,
            |seed| Some(dir.join(format!("seed-{seed}.first.trace"))),
            None,
        );
        let second = children.run(
            &seeds,
            |seed| Some(dir.join(format!("seed-{seed}.second.trace"))),
            None,
        );
        let mut failed = false;
        for (a, b) in first.iter().zip(&second) {
            if a.hash == b.hash && !a.hash.is_empty() {
                println!("seed {}: deterministic trace-hash {}", a.seed, a.hash);
                continue;
            }
            failed = true;
            println!(
                "seed {}: NONDETERMINISTIC trace-hash {} then {}",
                a.seed, a.hash, b.hash
            );
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(format!("seed-{}.{name}.trace", a.seed)))
                    .unwrap_or_default()
            };
            let (x, y) = (read("first"), read("second"));
            let lines = |t: &str| t.lines().map(str::to_owned).collect::<Vec<_>>();
            match chat_sim::seeds::first_difference(&lines(&x), &lines(&y)) {
                Some((line, one, two)) => println!(
                    "  first difference at trace line {}:\n    first:  {one}\n    second: {two}",
                    line + 1
                ),
                None => println!("  the traces are equal; a run crashed"),
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }

    let Some(n) = args.seeds else {
        eprintln!("chat-sim: say --seed N, --seeds N, --determinism N or --shrink N (see --help)");
        return ExitCode::from(2);
    };
    let seeds: Vec<u64> = (args.from..args.from + n).collect();
    let wall = Instant::now();
    let results = children.run(&seeds, |_| None, None);
    let wall = wall.elapsed().as_secs_f64().max(1e-9);
    let failed: Vec<u64> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.seed)
        .collect();
    let simulated: f64 = results.iter().map(|r| r.simulated_secs).sum();
    let messages: u64 = results.iter().map(|r| r.messages).sum();
    println!(
        "{} seeds, {} failed{}; {:.0} simulated s in {:.1} wall s with {} processes: {:.0}x real time, {:.0} messages per wall s, {:.1} seeds/min",
        seeds.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({failed:?})")
        },
        simulated,
        wall,
        children.jobs,
        simulated / wall,
        messages as f64 / wall,
        seeds.len() as f64 / wall * 60.0
    );
    println!(
        "seeds: {} passed, {} failed",
        seeds.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(madsim)]
fn trace_dir() -> PathBuf {
    std::env::var_os("SIM_TRACE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/sim-traces"))
}

/// Shrinks seed `seed`'s schedule, each candidate in a fresh process; writes the minimal
/// schedule next to the traces and prints how to replay it.
#[cfg(madsim)]
fn shrink(
    seed: u64,
    config: &chat_sim::scenario::ScenarioConfig,
    children: &Children,
) -> std::process::ExitCode {
    use chat_sim::faults::Schedule;
    let (_, schedule) = Schedule::generate(seed, &config.cluster, config.devices, config.chaos);
    let first = children.run(&[seed], |_| None, None);
    let Some(checker) = first.first().and_then(|r| r.checkers.first().cloned()) else {
        println!("seed {seed} passes; nothing to shrink");
        return std::process::ExitCode::SUCCESS;
    };
    let dir = trace_dir();
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("chat-sim: cannot create {}: {err}", dir.display());
        return std::process::ExitCode::from(2);
    }
    let candidate = dir.join(format!("seed-{seed}.candidate.schedule"));
    let minimal = chat_sim::shrink::shrink(
        &schedule,
        |schedule| {
            if std::fs::write(&candidate, schedule.to_text()).is_err() {
                return false;
            }
            let run = children.run(&[seed], |_| None, Some(&candidate));
            run.first().is_some_and(|r| r.checkers.contains(&checker))
        },
        |line| println!("  shrink: {line}"),
    );
    let path = dir.join(format!("seed-{seed}.min.schedule"));
    let _ = std::fs::remove_file(&candidate);
    if let Err(err) = std::fs::write(&path, minimal.to_text()) {
        eprintln!("chat-sim: cannot write {}: {err}", path.display());
    }
    println!(
        "minimal schedule for seed {seed} ({} of {} episodes), still failing {checker}:",
        minimal.episodes.len(),
        schedule.episodes.len()
    );
    for episode in &minimal.episodes {
        println!("  {episode}");
    }
    println!(
        "  replay: ci/sim --seed {seed} --schedule {}",
        path.display()
    );
    std::process::ExitCode::FAILURE
}

/// What a child process reported for its seed.
#[cfg(madsim)]
struct ChildResult {
    seed: u64,
    passed: bool,
    hash: String,
    checkers: Vec<String>,
    simulated_secs: f64,
    messages: u64,
}

/// How child processes are started.
#[cfg(madsim)]
struct Children {
    quick: bool,
    calm: bool,
    single: bool,
    scale: bool,
    scale_devices: Option<usize>,
    jobs: usize,
}

#[cfg(madsim)]
impl Children {
    /// Runs each seed as `<this binary> --seed N`, `jobs` at a time, echoing their reports
    /// in seed order.
    fn run(
        &self,
        seeds: &[u64],
        trace_out: impl Fn(u64) -> Option<PathBuf>,
        schedule: Option<&std::path::Path>,
    ) -> Vec<ChildResult> {
        use std::process::{Command, Stdio};
        let failed = |seed| ChildResult {
            seed,
            passed: false,
            hash: String::new(),
            checkers: vec!["crashed".into()],
            simulated_secs: 0.0,
            messages: 0,
        };
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(err) => {
                eprintln!("cannot find this binary to run seeds: {err}");
                return seeds.iter().map(|&seed| failed(seed)).collect();
            }
        };
        let mut results = Vec::with_capacity(seeds.len());
        for chunk in seeds.chunks(self.jobs) {
            let running: Vec<(u64, std::io::Result<std::process::Child>)> = chunk
                .iter()
                .map(|&seed| {
                    let mut command = Command::new(&exe);
                    command
                        .arg("--seed")
                        .arg(seed.to_string())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit());
                    if self.quick {
                        command.arg("--quick");
                    }
                    if self.calm {
                        command.arg("--calm");
                    }
                    if self.single {
                        command.arg("--single");
                    }
                    if self.scale {
                        command.arg("--scale");
                    }
                    if let Some(devices) = self.scale_devices {
                        command.arg("--scale-devices").arg(devices.to_string());
                    }
                    if let Some(path) = trace_out(seed) {
                        if let Some(dir) = path.parent() {
                            let _ = std::fs::create_dir_all(dir);
                        }
                        command.arg("--trace-out").arg(path);
                    }
                    if let Some(path) = schedule {
                        command.arg("--schedule").arg(path);
                    }
                    (seed, command.spawn())
                })
                .collect();
            for (seed, child) in running {
                let output = child.and_then(|c| c.wait_with_output());
                let text = output
                    .as_ref()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let mut result = failed(seed);
                result.checkers.clear();
                for line in text.lines() {
                    if let Some(stats) = line.strip_prefix("sim-stats simulated_secs=") {
                        result.simulated_secs = stats.trim().parse().unwrap_or(0.0);
                        continue;
                    }
                    if let Some(names) = line.strip_prefix("  checkers: ") {
                        result.checkers = names.split_whitespace().map(str::to_owned).collect();
                    }
                    if line.starts_with(&format!("seed {seed}: ")) {
                        result.passed = line.contains(": pass ");
                        result.hash = line
                            .split("trace-hash ")
                            .nth(1)
                            .and_then(|rest| rest.split_whitespace().next())
                            .unwrap_or("")
                            .to_owned();
                        result.messages = line
                            .rsplit_once(", ")
                            .and_then(|(_, tail)| tail.strip_suffix(" messages"))
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                    }
                    println!("{line}");
                }
                if result.hash.is_empty() {
                    result.checkers = vec!["crashed".into()];
                    println!("seed {seed}: FAIL crashed trace-hash -");
                    match &output {
                        Err(err) => println!("  could not run the seed: {err}"),
                        Ok(o) => println!("  exit status {}", o.status),
                    }
                    println!("  replay: {}", chat_sim::runner::replay_command(seed));
                }
                results.push(result);
            }
        }
        results
    }
}

#[cfg(not(madsim))]
fn main() {
    eprintln!("chat-sim runs only in the simulator build: RUSTFLAGS=\"--cfg madsim\" (use ci/sim)");
    std::process::exit(2);
}
