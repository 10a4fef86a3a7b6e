//! The checkers are proven: each planted bug is caught by the checker meant for it within
//! a bounded number of seeds. Each seed runs as `chat-sim --seed N --plant BUG` in a process
//! of its own, as CI runs seeds.

#![cfg(madsim)]

use std::process::Command;

/// Seeds tried per bug; every one of the first seeds has caught each bug so far.
const SEEDS_MAX: u64 = 4;

fn first_failure(bug: &str) -> Option<(u64, String)> {
    for seed in 1..=SEEDS_MAX {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-sim"))
            .args(["--seed", &seed.to_string(), "--quick", "--plant", bug])
            .env("SIM_TRACE_DIR", std::env::temp_dir().join("chat-sim-planted"))
            .output()
            .expect("run chat-sim");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().find(|l| l.starts_with(&format!("seed {seed}: "))).unwrap_or("").to_owned();
        println!("{bug}: {line}");
        if let Some(rest) = line.split(": FAIL ").nth(1) {
            let checker = rest.split_whitespace().next().unwrap_or("").to_owned();
            return Some((seed, checker));
        }
    }
    None
}

#[test]
fn ack_before_the_durable_write_is_caught_by_durability() {
    let (seed, checker) = first_failure("ack-before-durable").expect("caught within the seed bound");
    assert_eq!(checker, "durability", "seed {seed}");
}

#[test]
fn skipping_the_idempotency_check_is_caught_by_no_duplicates() {
    let (seed, checker) = first_failure("skip-idempotency").expect("caught within the seed bound");
    assert_eq!(checker, "no_duplicates", "seed {seed}");
}

#[test]
fn out_of_order_delivery_is_caught_by_order() {
    let (seed, checker) = first_failure("deliver-out-of-order").expect("caught within the seed bound");
    assert_eq!(checker, "order", "seed {seed}");
}

#[test]
fn without_planted_bugs_the_same_seeds_pass() {
    for seed in 1..=2u64 {
        let output = Command::new(env!("CARGO_BIN_EXE_chat-sim")).args(["--seed", &seed.to_string(), "--quick"]).output().expect("run chat-sim");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(&format!("seed {seed}: pass trace-hash ")), "{stdout}");
    }
}
