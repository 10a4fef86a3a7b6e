//! The walking-skeleton simulation: `RUSTFLAGS="--cfg madsim" cargo test -p chat-sim`.
//! `SIM_SEED=N` replays one seed; `SIM_SEEDS=K` runs seeds 1..=K.

#![cfg(madsim)]

use chat_sim::seeds::{run_seed, seeds_from_env};
use chat_sim::smoke::scenario;
use std::time::Duration;

const TIME_LIMIT: Duration = Duration::from_secs(600);

#[test]
fn every_message_is_delivered_once_in_order_and_stored() {
    let wall = std::time::Instant::now();
    let mut failed = Vec::new();
    let seeds = seeds_from_env(16);
    for &seed in &seeds {
        println!("seed {seed}: running");
        let outcome = run_seed(seed, TIME_LIMIT, scenario);
        match &outcome.result {
            Ok(()) => println!(
                "seed {seed}: pass trace-hash {} ({} events, {:.1} simulated s)",
                outcome.trace_hash,
                outcome.events,
                outcome.simulated.as_secs_f64()
            ),
            Err(err) => {
                println!("seed {seed}: FAIL {err} trace-hash {}", outcome.trace_hash);
                println!(
                    "  replay: SIM_SEED={seed} RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-sim cargo test -p chat-sim --release --test smoke"
                );
                failed.push(seed);
            }
        }
    }
    println!(
        "{} seeds in {:.1} s wall",
        seeds.len(),
        wall.elapsed().as_secs_f64()
    );
    assert!(failed.is_empty(), "failed seeds: {failed:?}");
}

#[test]
fn one_seed_replays_the_same_trace() {
    let seed = seeds_from_env(1)[0] + 1000;
    println!("seed {seed}: determinism check");
    let first = run_seed(seed, TIME_LIMIT, scenario);
    let second = run_seed(seed, TIME_LIMIT, scenario);
    assert_eq!(first.result, Ok(()));
    assert!(
        first.events > 100,
        "the trace records the run ({} events)",
        first.events
    );
    if let Some((line, a, b)) = chat_sim::seeds::first_difference(&first.trace, &second.trace) {
        panic!(
            "seed {seed} is not deterministic: trace line {line} differs:\n  first:  {a}\n  second: {b}"
        );
    }
    assert_eq!(first.trace_hash, second.trace_hash);
    // The trace really depends on the seed: another seed takes other random pauses.
    let other = run_seed(seed + 1, TIME_LIMIT, scenario);
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "the trace does not capture the run"
    );
    println!("seed {seed}: deterministic trace-hash {}", first.trace_hash);
}
