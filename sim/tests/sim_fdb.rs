//! The simulated FoundationDB (`chat_sim::fdb`) under madsim: the store's conformance suite
//! over the simulated network, idempotent transactions under injected 1020/1021/latency,
//! the chat store's appends under the same faults, store crashes and partitions, and
//! replay of one seed.
//!
//! `RUSTFLAGS="--cfg madsim" cargo test -p chat-sim --release --test sim_fdb -- --nocapture`;
//! `SIM_SEED=N` replays one seed; `SIM_SEEDS=K` runs seeds 1..=K; `SIM_TRACE=1` prints
//! every seed's trace (failed seeds always print theirs).

#![cfg(madsim)]

use anyhow::{Context, ensure};
use chat_sim::fdb::{
    FaultConfig, PORT, SimFdbClientCounts, SimFdbCounts, SimFdbFaults, SimFdbKv, SimFdbServer,
};
use chat_sim::seeds::{Outcome, first_difference, run_seed, seeds_from_env};
use chat_sim::trace::Trace;
use chat_store::{ChatStore, Kv, KvError, MemoryKv, NewMessage, RunOptions, run_with};
use madsim::runtime::{Handle, NodeHandle};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIME_LIMIT: Duration = Duration::from_secs(900);
const STORE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);

/// The faults of the fault tests: every commit has a 30% chance of an injected error.
const HOSTILE: FaultConfig = FaultConfig {
    latency_min: Duration::ZERO,
    latency_max: Duration::from_millis(20),
    not_committed_probability: 0.15,
    unknown_result_probability: 0.15,
    unavailable_probability: 0.05,
};

/// Retry bounds for workloads that must finish despite faults and downtime.
const PATIENT: RunOptions = RunOptions {
    retries_max: 200,
    backoff_initial: Duration::from_millis(10),
    backoff_max: Duration::from_millis(500),
    run_duration_max: Duration::from_secs(120),
};

fn store_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(STORE_IP), PORT)
}

fn client_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 9, 10 + u8::try_from(i).expect("few clients"))
}

/// The store node and what the harness keeps of it: its data and its faults.
struct Store {
    kv: MemoryKv,
    faults: SimFdbFaults,
    node: NodeHandle,
}

impl Store {
    fn start(config: FaultConfig) -> Store {
        let kv = MemoryKv::new();
        let faults = SimFdbFaults::new(config);
        let node = SimFdbServer::new(kv.clone(), faults.clone()).start_node(
            "fdb",
            IpAddr::V4(STORE_IP),
            PORT,
        );
        Store { kv, faults, node }
    }

    fn kill(&self) {
        Handle::current().kill(self.node.id());
    }

    fn restart(&self) {
        Handle::current().restart(self.node.id());
    }

    fn partition(&self) {
        madsim::net::NetSim::current().clog_node(self.node.id());
    }

    fn heal(&self) {
        madsim::net::NetSim::current().unclog_node(self.node.id());
    }

    /// A committed value, read straight from the data (no network, no faults).
    async fn read(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.kv
            .begin()
            .await
            .expect("memory begin")
            .get(key)
            .await
            .expect("memory get")
    }

    async fn count(&self, prefix: &[u8]) -> usize {
        let mut end = prefix.to_vec();
        end.push(0xff);
        self.kv
            .begin()
            .await
            .expect("memory begin")
            .get_range(prefix, &end, 0, false)
            .await
            .expect("memory range")
            .len()
    }
}

fn client_node(name: &str, ip: Ipv4Addr) -> NodeHandle {
    Handle::current()
        .create_node()
        .name(name)
        .ip(IpAddr::V4(ip))
        .build()
}

/// Runs `f` on a fresh client node and waits for it.
async fn on_node<T: Send + 'static>(
    name: &str,
    ip: Ipv4Addr,
    f: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    client_node(name, ip)
        .spawn(f)
        .await
        .map_err(|e| anyhow::anyhow!("task on {name} failed: {e}"))
}

fn parse_u64(raw: Option<Vec<u8>>) -> Result<u64, KvError> {
    match raw {
        None => Ok(0),
        Some(raw) => std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KvError::Corrupt("counter is not a number".into())),
    }
}

const COUNTER: &[u8] = b"inc/counter";
const MARKERS: &[u8] = b"inc/done/";
const NAIVE_COUNTER: &[u8] = b"naive/counter";

/// Adds one to [`COUNTER`] once, however often the transaction runs: the marker written
/// with the increment tells a retry after 1021 that the first attempt landed.
async fn increment_idempotent(kv: &dyn Kv, id: &str) -> Result<(), KvError> {
    let marker = [MARKERS, id.as_bytes()].concat();
    run_with(kv, &PATIENT, |tx, _maybe_committed| {
        let marker = &marker;
        async move {
            if tx.get(marker).await?.is_some() {
                return Ok(()); // An earlier attempt answered 1021 had applied.
            }
            let n = parse_u64(tx.get(COUNTER).await?)?;
            tx.set(COUNTER, (n + 1).to_string().as_bytes());
            tx.set(marker, b"");
            Ok(())
        }
    })
    .await
}

/// Adds one to [`NAIVE_COUNTER`] per *applied attempt*: wrong under 1021, on purpose.
async fn increment_naive(kv: &dyn Kv) -> Result<(), KvError> {
    run_with(kv, &PATIENT, |tx, _| async move {
        let n = parse_u64(tx.get(NAIVE_COUNTER).await?)?;
        tx.set(NAIVE_COUNTER, (n + 1).to_string().as_bytes());
        Ok(())
    })
    .await
}

/// Runs `workers_per_node` sequential loops of `per_worker` calls of `op` on each of
/// `nodes` new client nodes (addresses from `client_ip(first)` on); returns the number of
/// calls that succeeded and each node's counts. Each call's outcome goes to `trace`.
async fn on_clients<F, Fut>(
    trace: Trace,
    first: usize,
    nodes: usize,
    workers_per_node: usize,
    per_worker: usize,
    pause_max: Duration,
    op: F,
) -> anyhow::Result<(usize, Vec<SimFdbClientCounts>)>
where
    F: Fn(SimFdbKv, String) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), KvError>> + Send + 'static,
{
    let mut tasks = Vec::new();
    for node in first..first + nodes {
        let (op, trace) = (op.clone(), trace.clone());
        let task = client_node(&format!("client-{node}"), client_ip(node)).spawn(async move {
            let kv = SimFdbKv::new(store_addr());
            let workers = (0..workers_per_node).map(|worker| {
                let (kv, op, trace) = (kv.clone(), op.clone(), trace.clone());
                async move {
                    let mut ok = 0;
                    for i in 0..per_worker {
                        let pause = rand::random_range(0..=pause_max.as_micros() as u64);
                        tokio::time::sleep(Duration::from_micros(pause)).await;
                        let id = format!("{node}-{worker}-{i}");
                        match op(kv.clone(), id.clone()).await {
                            Ok(()) => {
                                trace.record(format!("{id} ok"));
                                ok += 1;
                            }
                            Err(error) => {
                                trace.record(format!("{id} gave up: {error}"));
                                tracing::warn!(%error, "operation gave up");
                            }
                        }
                    }
                    ok
                }
            });
            let ok: usize = futures::future::join_all(workers).await.into_iter().sum();
            (ok, kv.counts())
        });
        tasks.push(task);
    }
    let mut ok = 0;
    let mut counts = Vec::new();
    for task in tasks {
        let (node_ok, node_counts) = task
            .await
            .map_err(|e| anyhow::anyhow!("client task failed: {e}"))?;
        ok += node_ok;
        counts.push(node_counts);
    }
    Ok((ok, counts))
}

fn sum_counts(counts: &[SimFdbClientCounts]) -> SimFdbClientCounts {
    counts
        .iter()
        .fold(SimFdbClientCounts::default(), |a, c| SimFdbClientCounts {
            begun: a.begun + c.begun,
            committed: a.committed + c.committed,
            unavailable: a.unavailable + c.unavailable,
            unknown_result: a.unknown_result + c.unknown_result,
            not_committed: a.not_committed + c.not_committed,
            too_old: a.too_old + c.too_old,
        })
}

/// Runs `scenario` for each seed, prints one line per seed, fails with the failed seeds.
fn run_seeds<F, Fut>(name: &str, seeds: &[u64], scenario: F) -> Vec<Outcome>
where
    F: Fn(Trace) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let wall = std::time::Instant::now();
    let mut outcomes = Vec::new();
    for &seed in seeds {
        let outcome = run_seed(seed, TIME_LIMIT, scenario.clone());
        match &outcome.result {
            Ok(()) => println!(
                "{name} seed {seed}: pass trace-hash {} ({} events, {:.1} simulated s)",
                &outcome.trace_hash[..16],
                outcome.events,
                outcome.simulated.as_secs_f64()
            ),
            Err(err) => println!("{name} seed {seed}: FAIL {err}"),
        }
        if outcome.result.is_err() || std::env::var_os("SIM_TRACE").is_some() {
            for line in &outcome.trace {
                println!("  {line}");
            }
        }
        outcomes.push(outcome);
    }
    println!(
        "{name}: {} seeds in {:.2} s wall",
        seeds.len(),
        wall.elapsed().as_secs_f64()
    );
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.seed)
        .collect();
    assert!(
        failed.is_empty(),
        "{name}: failed seeds {failed:?} (replay with SIM_SEED=N)"
    );
    outcomes
}

// ---------------------------------------------------------------------------------------

#[test]
fn conformance_suite_passes_over_the_simulated_network() {
    // Injected latency on (the suite tolerates any timing), injected errors off (the suite
    // checks exact outcomes).
    let config = FaultConfig {
        latency_max: Duration::from_millis(20),
        ..FaultConfig::QUIET
    };
    run_seeds(
        "conformance",
        &seeds_from_env(3),
        move |trace: Trace| async move {
            let store = Store::start(config);
            on_node("client", client_ip(0), async move {
                let kv: Arc<dyn Kv> = Arc::new(SimFdbKv::new(store_addr()));
                chat_store::testing::conformance(kv.clone()).await;
                chat_store::testing::tx_lifetime(kv).await;
            })
            .await?;
            let counts = store.faults.counts();
            trace.record(format!("store counts {counts:?}"));
            ensure!(
                counts.conflicts > 0 && counts.too_old > 0,
                "the suite's conflicts and 1007s came from the server: {counts:?}"
            );
            ensure!(store.kv.is_empty(), "the suite cleans up after itself");
            Ok(())
        },
    );
}

/// Idempotent increments under injected 1020, 1021 and latency end exactly at N, while
/// naive increments overshoot by exactly the number of 1021s whose commit applied.
async fn increments_under_faults(
    trace: Trace,
    report: Arc<Mutex<Vec<SimFdbCounts>>>,
) -> anyhow::Result<()> {
    const NODES: usize = 4;
    const WORKERS: usize = 2;
    const PER_WORKER: usize = 6;
    const N: usize = NODES * WORKERS * PER_WORKER;
    let store = Store::start(HOSTILE);
    let pause = Duration::from_millis(30);

    let (ok, clients) = on_clients(
        trace.clone(),
        0,
        NODES,
        WORKERS,
        PER_WORKER,
        pause,
        |kv, id| async move { increment_idempotent(&kv, &id).await },
    )
    .await?;
    ensure!(ok == N, "{ok} of {N} idempotent increments succeeded");
    let after_idempotent = store.faults.counts();
    trace.record(format!(
        "idempotent: store {after_idempotent:?} clients {:?}",
        sum_counts(&clients)
    ));

    let (naive_ok, clients) = on_clients(
        trace.clone(),
        NODES,
        NODES,
        WORKERS,
        PER_WORKER,
        pause,
        |kv, _| async move { increment_naive(&kv).await },
    )
    .await?;
    let after_naive = store.faults.counts();
    store.faults.quiet();
    trace.record(format!(
        "naive: store {after_naive:?} clients {:?}",
        sum_counts(&clients)
    ));

    let counter = parse_u64(store.read(COUNTER).await)?;
    let markers = store.count(MARKERS).await;
    let naive = parse_u64(store.read(NAIVE_COUNTER).await)?;
    trace.record(format!(
        "counter={counter} markers={markers} naive={naive} naive_ok={naive_ok}"
    ));
    ensure!(
        counter == N as u64,
        "idempotent counter ended at {counter}, not {N}"
    );
    ensure!(markers == N, "{markers} markers, not {N}");
    // Every applied attempt of a naive increment added one: the successful ones and the
    // ones answered 1021 that applied anyway.
    let applied_unknown =
        after_naive.injected_unknown_applied - after_idempotent.injected_unknown_applied;
    ensure!(
        naive == naive_ok as u64 + applied_unknown,
        "naive counter {naive} != {naive_ok} successes + {applied_unknown} applied 1021s"
    );
    let injected = after_naive;
    ensure!(
        injected.injected_not_committed > 0 && injected.conflicts > 0,
        "faults were exercised: {injected:?}"
    );
    report.lock().unwrap().push(after_naive);
    Ok(())
}

#[test]
fn idempotent_increments_land_exactly_once_under_conflicts_and_unknown_results() {
    let report = Arc::new(Mutex::new(Vec::new()));
    let scenario = {
        let report = report.clone();
        move |trace| increments_under_faults(trace, report.clone())
    };
    run_seeds("increments", &seeds_from_env(8), scenario);
    let report = report.lock().unwrap();
    let applied: u64 = report.iter().map(|c| c.injected_unknown_applied).sum();
    let not_applied: u64 = report.iter().map(|c| c.injected_unknown_not_applied).sum();
    println!(
        "increments: over all seeds {applied} applied and {not_applied} unapplied 1021s injected"
    );
    assert!(
        applied > 0 && not_applied > 0,
        "both kinds of 1021 were exercised"
    );
}

/// Concurrent `ChatStore::append`s from several app-server nodes to one group under
/// injected faults: no message lost or duplicated.
async fn appends_under_faults(
    trace: Trace,
    report: Arc<Mutex<Vec<SimFdbCounts>>>,
) -> anyhow::Result<()> {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 15;
    let store = Store::start(FaultConfig::QUIET);
    let users: Vec<String> = (0..SENDERS).map(|i| format!("user{i}")).collect();

    // Setup without faults: creating a group is not idempotent under 1021 (documented).
    let conv = on_node("setup", client_ip(20), {
        let users = users.clone();
        async move {
            let chat = ChatStore::with_run_options(Arc::new(SimFdbKv::new(store_addr())), PATIENT);
            for user in &users {
                chat.create_user(user, "hash", 1).await?;
            }
            let (conv, _) = chat
                .create_conversation(&users[0], users[1..].to_vec(), Some("all".into()), 2)
                .await?;
            anyhow::Ok(conv.conv_id)
        }
    })
    .await??;
    store.faults.set(HOSTILE);

    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let user = user.clone();
        let task = client_node(&format!("app-{i}"), client_ip(i)).spawn(async move {
            let chat = ChatStore::with_run_options(Arc::new(SimFdbKv::new(store_addr())), PATIENT);
            // id -> seq of every acknowledged message; ids that failed.
            let mut acked = BTreeMap::new();
            let mut failed = Vec::new();
            for n in 0..PER_SENDER {
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..30))).await;
                let id = format!("{user}-{n}");
                let message = NewMessage {
                    sender: user.clone(),
                    client_msg_id: id.clone(),
                    body: format!("hello {n}"),
                    amend: None,
                };
                match chat.append(conv, vec![message], 10 + n as u64).await {
                    Ok(mut results) => match results.pop() {
                        Some(Ok(appended)) => {
                            acked.insert(id, appended.seq);
                        }
                        other => return Err(anyhow::anyhow!("append of {id} answered {other:?}")),
                    },
                    Err(error) => {
                        tracing::warn!(%error, id, "append gave up");
                        failed.push(id);
                    }
                }
            }
            Ok((acked, failed))
        });
        tasks.push(task);
    }
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for task in tasks {
        let (a, f) = task
            .await
            .map_err(|e| anyhow::anyhow!("app task failed: {e}"))??;
        acked.extend(a);
        failed.extend(f);
    }
    let counts = store.faults.counts();
    store.faults.quiet();
    trace.record(format!(
        "acked={} failed={failed:?} store {counts:?}",
        acked.len()
    ));

    // The stored history, read over the network with faults off.
    let (history, again) = on_node("checker", client_ip(21), {
        let user = users[0].clone();
        async move {
            let chat = ChatStore::with_run_options(Arc::new(SimFdbKv::new(store_addr())), PATIENT);
            let (messages, last_seq) = chat.messages_after(&user, conv, 0, 10_000).await?;
            // Sending an acknowledged message again is answered with its stored seq.
            let resend = NewMessage {
                sender: user.clone(),
                client_msg_id: format!("{user}-0"),
                body: "again".into(),
                amend: None,
            };
            let again = chat
                .append(conv, vec![resend], 999)
                .await?
                .pop()
                .context("one result")?;
            anyhow::Ok(((messages, last_seq), again))
        }
    })
    .await??;
    let (messages, last_seq) = history;
    for m in &messages {
        trace.record(format!("stored seq={} {}", m.seq, m.client_msg_id));
    }

    let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=messages.len() as u64).collect();
    ensure!(seqs == expected, "seqs are gapless from 1: {seqs:?}");
    ensure!(
        last_seq == messages.len() as u64,
        "head {last_seq} matches {} messages",
        messages.len()
    );
    let mut seen = BTreeSet::new();
    for m in &messages {
        ensure!(
            seen.insert((m.sender.clone(), m.client_msg_id.clone())),
            "{} stored twice",
            m.client_msg_id
        );
    }
    for (id, seq) in &acked {
        let stored = messages
            .iter()
            .find(|m| &m.client_msg_id == id)
            .with_context(|| format!("acked {id} lost"))?;
        ensure!(
            stored.seq == *seq,
            "{id} acked with seq {seq}, stored with {}",
            stored.seq
        );
    }
    ensure!(failed.is_empty(), "appends that gave up: {failed:?}");
    ensure!(
        messages.len() == SENDERS * PER_SENDER,
        "{} messages stored",
        messages.len()
    );
    let again = again.map_err(|e| anyhow::anyhow!("resend: {e}"))?;
    ensure!(
        !again.fresh && again.seq == acked[&format!("{}-0", users[0])],
        "a resend is answered, not stored: {again:?}"
    );
    report.lock().unwrap().push(counts);
    Ok(())
}

#[test]
fn chat_appends_are_never_lost_or_duplicated_under_unknown_results() {
    let report = Arc::new(Mutex::new(Vec::new()));
    let scenario = {
        let report = report.clone();
        move |trace| appends_under_faults(trace, report.clone())
    };
    run_seeds("appends", &seeds_from_env(8), scenario);
    let report = report.lock().unwrap();
    let applied: u64 = report.iter().map(|c| c.injected_unknown_applied).sum();
    println!(
        "appends: over all seeds {applied} applied 1021s injected (each one retried without duplicating)"
    );
    assert!(applied > 0, "an applied 1021 was exercised");
}

/// The store node is killed and restarted three times under a running workload.
async fn crashes_under_load(trace: Trace) -> anyhow::Result<()> {
    const NODES: usize = 3;
    const WORKERS: usize = 2;
    const PER_WORKER: usize = 20;
    const N: usize = NODES * WORKERS * PER_WORKER;
    let store = Store::start(FaultConfig {
        latency_max: Duration::from_millis(5),
        ..FaultConfig::QUIET
    });
    let probe = client_node("probe", client_ip(30));

    let workload = tokio::spawn(on_clients(
        trace.clone(),
        0,
        NODES,
        WORKERS,
        PER_WORKER,
        Duration::from_millis(60),
        |kv, id| async move { increment_idempotent(&kv, &id).await },
    ));
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(rand::random_range(200..800))).await;
        let committed = parse_u64(store.read(COUNTER).await)?;
        store.kill();
        trace.record(format!(
            "round {round}: killed the store at counter={committed}"
        ));
        let down = probe
            .spawn(async { SimFdbKv::new(store_addr()).begin().await.map(|_| ()) })
            .await?;
        ensure!(
            matches!(down, Err(KvError::Unavailable(_))),
            "a dead store is unavailable: {down:?}"
        );
        tokio::time::sleep(Duration::from_millis(rand::random_range(300..1500))).await;
        ensure!(
            parse_u64(store.read(COUNTER).await)? >= committed,
            "committed increments survive the crash"
        );
        store.restart();
        let waited = probe
            .spawn(async {
                let kv = SimFdbKv::new(store_addr());
                let started = std::time::Instant::now();
                while started.elapsed() < Duration::from_secs(5) {
                    if kv.begin().await.is_ok() {
                        return Ok(started.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(anyhow::anyhow!("the restarted store never answered"))
            })
            .await??;
        trace.record(format!(
            "round {round}: restarted, answering after {} ms",
            waited.as_millis()
        ));
    }
    let (ok, clients) = workload.await??;
    let clients = sum_counts(&clients);
    let counter = parse_u64(store.read(COUNTER).await)?;
    let markers = store.count(MARKERS).await;
    trace.record(format!(
        "ok={ok} counter={counter} markers={markers} clients {clients:?} store {:?}",
        store.faults.counts()
    ));
    ensure!(
        ok == N,
        "{ok} of {N} increments succeeded across the crashes"
    );
    ensure!(
        counter == N as u64 && markers == N,
        "counter {counter}, markers {markers}: exactly {N}"
    );
    ensure!(
        clients.unavailable > 0,
        "the workload saw the store down: {clients:?}"
    );
    Ok(())
}

#[test]
fn store_crash_loses_no_committed_data_and_clients_recover() {
    run_seeds("crashes", &seeds_from_env(6), crashes_under_load);
}

/// A partition: a commit in flight is 1021, new transactions are refused at once; after
/// healing everything works, and the 1021'd commit applied or not, never half. Then an
/// injected outage: refused until it ends.
async fn partition_and_outage(trace: Trace) -> anyhow::Result<()> {
    let store = Store::start(FaultConfig::QUIET);
    let client = client_node("client", client_ip(0));
    let kv = SimFdbKv::new(store_addr());

    let tx = client
        .spawn({
            let kv = kv.clone();
            async move { kv.begin().await }
        })
        .await??;
    tx.set(b"p/a", b"1");
    tx.set(b"p/b", b"1");
    store.partition();
    let read = tx.get(b"p/zz").await;
    ensure!(
        matches!(read, Err(KvError::Unavailable(_))),
        "a read across a partition times out: {read:?}"
    );
    let outcome = tx.commit().await;
    ensure!(
        matches!(outcome, Err(KvError::Unavailable(_))),
        "nothing was sent after the broken read: {outcome:?}"
    );
    drop(tx);

    let tx = client.spawn({
        let kv = kv.clone();
        async move { kv.begin().await }
    });
    let refused = tx.await?;
    ensure!(
        matches!(refused, Err(KvError::Unavailable(_))),
        "connects fail at once during a partition"
    );
    store.heal();

    let tx = client
        .spawn({
            let kv = kv.clone();
            async move { kv.begin().await }
        })
        .await??;
    tx.set(b"p/a", b"2");
    tx.set(b"p/b", b"2");
    store.partition();
    let outcome = tx.commit().await;
    ensure!(
        outcome == Err(KvError::CommitUnknownResult),
        "a commit across a partition is 1021: {outcome:?}"
    );
    store.heal();
    // Held data is delivered after the heal; past the transaction's lifetime nothing of it
    // can apply any more.
    tokio::time::sleep(chat_store::kv::TX_LIFETIME + Duration::from_secs(1)).await;
    let (a, b) = (store.read(b"p/a").await, store.read(b"p/b").await);
    trace.record(format!("after the unknown commit: a={a:?} b={b:?}"));
    ensure!(
        a == b && (a.is_none() || a.as_deref() == Some(&b"2"[..])),
        "all or nothing: a={a:?} b={b:?}"
    );

    store.faults.unavailable_for(Duration::from_secs(1));
    let refused = client
        .spawn({
            let kv = kv.clone();
            async move { kv.begin().await.map(|_| ()) }
        })
        .await?;
    ensure!(
        matches!(refused, Err(KvError::Unavailable(_))),
        "refused during the outage: {refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = client.spawn({
        let kv = kv.clone();
        async move { run_with(&kv, &PATIENT, |tx, _| async move { tx.get(b"p/a").await }).await }
    })
    .await?;
    ensure!(after? == a, "served again after the outage");
    let counts = kv.counts();
    trace.record(format!(
        "client {counts:?} store {:?}",
        store.faults.counts()
    ));
    ensure!(
        counts.unavailable >= 3 && counts.unknown_result == 1,
        "{counts:?}"
    );
    Ok(())
}

#[test]
fn partitions_and_outages_are_unavailable_then_recover() {
    run_seeds("partition", &seeds_from_env(4), partition_and_outage);
}

#[test]
fn one_seed_replays_the_same_faults_and_final_state() {
    let seed = seeds_from_env(1)[0] + 1000;
    let scenario = |trace| increments_under_faults(trace, Arc::new(Mutex::new(Vec::new())));
    let first = run_seed(seed, TIME_LIMIT, scenario);
    let second = run_seed(seed, TIME_LIMIT, scenario);
    assert_eq!(first.result, Ok(()), "seed {seed}");
    if let Some((line, a, b)) = first_difference(&first.trace, &second.trace) {
        panic!(
            "seed {seed} is not deterministic: trace line {line} differs:\n  first:  {a}\n  second: {b}"
        );
    }
    assert_eq!(first.trace_hash, second.trace_hash);
    let other = run_seed(seed + 1, TIME_LIMIT, scenario);
    assert_ne!(
        first.trace_hash, other.trace_hash,
        "the trace depends on the seed"
    );
    println!(
        "seed {seed}: deterministic, trace-hash {}",
        first.trace_hash
    );
    for line in &first.trace {
        println!("  {line}");
    }
}
