//! The standard scenario: a cluster, tens of users on many devices chatting in direct and
//! group conversations for minutes of simulated time while the seed's fault schedule plays,
//! then faults stop, everyone settles, and the checkers judge what everyone observed.

use crate::accounts::run_newcomers;
use crate::checkers::{Evidence, LiveFigures, PlayedFault, Violation, check_all};
use crate::cluster::{Cluster, ClusterConfig, Knobs, Node, client_ip, conn_addr};
use crate::disk::DiskFaults;
use crate::faults::{DiskError, Fault, Schedule, Swarm};
use crate::trace::Trace;
use crate::workload::{
    Controls, Device, Observed, Phase, StallOrder, WsTarget, now_us, run_client,
};
use anyhow::{Context, bail};
use chat_client::{Client, ClientFrame, ServerFrame, WsEvent};
use chat_proto::ConvId;
use chat_proto::rest::{Inbox, MessageView};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub const PASSWORD: &str = "simulated password";

#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub cluster: ClusterConfig,
    pub users: usize,
    /// Devices (connections); users get one each, then some a second.
    pub devices: usize,
    pub direct_convs: usize,
    pub groups: usize,
    pub group_size_max: usize,
    /// Members of the hot group (0: none), written to about every 1.5 s by each of their
    /// devices, so the sequencer batches under faults.
    pub hot_group_members: usize,
    /// Simulated time with faults.
    pub chaos: Duration,
    /// Bound on simulated time to settle once faults stop (the liveness bound).
    pub settle_max: Duration,
    /// No faults at all (`ci/sim --calm`): every message must be pushed live.
    pub calm: bool,
    /// Accounts and direct conversations created this many at a time, spread over the
    /// gateways (1: one by one through the first gateway, the standard scenario's setup).
    pub setup_concurrency: usize,
    /// Print each phase to standard error as it starts, with the simulated time (a scale
    /// run takes wall minutes; a standard seed's output stays one line).
    pub progress: bool,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        ScenarioConfig {
            cluster: ClusterConfig::default(),
            users: 30,
            devices: 50,
            direct_convs: 25,
            groups: 6,
            group_size_max: 10,
            hot_group_members: 20,
            chaos: Duration::from_secs(300),
            settle_max: Duration::from_secs(120),
            calm: false,
            setup_concurrency: 1,
            progress: false,
        }
    }
}

impl ScenarioConfig {
    /// The scale scenario (`ci/sim --scale`): the standard one with the node counts of a
    /// real deployment's slice and two hundred times the devices, for one minute of faults.
    pub fn scale() -> ScenarioConfig {
        ScenarioConfig {
            cluster: ClusterConfig {
                apps: 10,
                conns: 50,
                gateways: 10,
                ..ClusterConfig::default()
            },
            users: 5_000,
            devices: 10_000,
            direct_convs: 4_000,
            groups: 600,
            chaos: Duration::from_secs(60),
            setup_concurrency: 64,
            progress: true,
            ..ScenarioConfig::default()
        }
    }

    /// The same scenario with `devices` devices, and users, direct conversations and groups
    /// in the proportions the scale scenario has (2 devices per user, 0.8 direct
    /// conversations and 0.12 groups per user).
    pub fn with_devices(self, devices: usize) -> ScenarioConfig {
        let users = (devices / 2).max(2);
        ScenarioConfig {
            devices: devices.max(1),
            users,
            direct_convs: users * 4 / 5,
            groups: users * 3 / 25,
            ..self
        }
    }
}

/// Tells a person watching a long run which phase it is in (`ScenarioConfig::progress`).
fn progress(config: &ScenarioConfig, started: std::time::Instant, what: std::fmt::Arguments) {
    if config.progress {
        // Simulated time: under madsim `Instant` is the simulator's clock.
        eprintln!(
            "[simulated {:>7.1} s] {what}",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Why a run failed: a checker's violation, or the scenario itself could not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The first checker that failed.
    pub checker: String,
    /// Every checker that failed.
    pub checkers: Vec<String>,
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.checker, self.detail)
    }
}

/// Figures of a run, for reports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub sends: usize,
    pub messages_stored: usize,
    pub pushes: usize,
    pub reconnects: usize,
    pub live: LiveFigures,
}

/// Runs the scenario under the current simulated runtime: its figures (when it got as far
/// as the checks) and its verdict.
pub async fn run(
    config: ScenarioConfig,
    seed: u64,
    swarm: Swarm,
    schedule: Schedule,
    trace: Trace,
) -> (Option<Stats>, Result<(), Failure>) {
    trace.record(swarm);
    match run_inner(config, seed, swarm, schedule, trace).await {
        Ok((stats, violations)) if violations.is_empty() => (Some(stats), Ok(())),
        Ok((stats, violations)) => {
            let first = &violations[0];
            let detail = violations
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let mut checkers: Vec<String> = Vec::new();
            for v in &violations {
                if !checkers.iter().any(|c| c == v.checker) {
                    checkers.push(v.checker.to_owned());
                }
            }
            (
                Some(stats),
                Err(Failure {
                    checker: first.checker.to_owned(),
                    checkers,
                    detail,
                }),
            )
        }
        Err(err) => (
            None,
            Err(Failure {
                checker: "scenario".into(),
                checkers: vec!["scenario".into()],
                detail: format!("{err:#}"),
            }),
        ),
    }
}

async fn run_inner(
    config: ScenarioConfig,
    seed: u64,
    swarm: Swarm,
    schedule: Schedule,
    trace: Trace,
) -> anyhow::Result<(Stats, Vec<Violation>)> {
    let started = std::time::Instant::now();
    let cluster = Cluster::start(config.cluster.clone(), trace.clone());
    let gateways = cluster.gateway_urls();
    for episode in &schedule.episodes {
        trace.record(format!("schedule {episode}"));
    }

    // Users, conversations and devices, created through the gateway like any client would.
    progress(
        &config,
        started,
        format_args!(
            "setup: {} users, {} direct conversations, {} groups",
            config.users, config.direct_convs, config.groups
        ),
    );
    let (tokens, convs, hot) = on_node(
        "setup",
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
        setup(config.clone(), gateways.clone(), trace.clone()),
    )
    .await??;
    let users: Vec<String> = (0..config.users).map(user_name).collect();
    let single = config.cluster.single;
    let via_gateways: Vec<WsTarget> = gateways
        .iter()
        .enumerate()
        .map(|(i, url)| WsTarget {
            url: url.clone(),
            via: if single {
                Node::Serve
            } else {
                Node::Gateway(i)
            },
        })
        .collect();
    let all_convs: Arc<[ConvId]> = convs.iter().map(|(c, _)| *c).collect();
    let devices: Vec<Device> = (0..config.devices)
        .map(|index| {
            let user = users[index % users.len()].clone();
            let mine: Vec<ConvId> = convs
                .iter()
                .filter(|(_, members)| members.contains(&user))
                .map(|(c, _)| *c)
                .collect();
            // A user's first device goes through a gateway (placed by the user's hash);
            // the second straight to a connection server picked by the device's index, so
            // one user's devices often sit on different connection servers.
            let mut ws_targets = via_gateways.clone();
            if index >= users.len() && config.cluster.conns > 0 {
                let conn = index % config.cluster.conns;
                ws_targets.insert(
                    0,
                    WsTarget {
                        url: format!("http://{}", conn_addr(conn)),
                        via: Node::Conn(conn),
                    },
                );
            } else {
                ws_targets.rotate_left(index % via_gateways.len().max(1));
            }
            let hot = hot.filter(|h| mine.contains(h));
            let rng_seed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (index as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03);
            let slot = index / users.len();
            Device {
                index,
                token: tokens[&user].clone(),
                user,
                convs: mine,
                all_convs: all_convs.clone(),
                hot,
                gateways: gateways.clone(),
                ws_targets,
                rng_seed,
                slot,
            }
        })
        .collect();

    let controls = Controls::new(devices.len(), cluster.stalls.clone());
    let deadline = config.chaos + config.settle_max * 2 + Duration::from_secs(60);
    let handle = madsim::runtime::Handle::current();
    let mut tasks = Vec::new();
    for device in &devices {
        let node = handle
            .create_node()
            .name(format!("client{}", device.index))
            .ip(client_ip(device.index))
            .build();
        tasks.push(node.spawn(run_client(
            device.clone(),
            controls.clone(),
            trace.clone(),
            deadline,
        )));
    }

    // Newcomers register, log in and start conversations while the faults go on.
    let newcomers_node = handle
        .create_node()
        .name("newcomers")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 3)))
        .build();
    let newcomers = newcomers_node.spawn(run_newcomers(
        gateways.clone(),
        controls.clone(),
        trace.clone(),
        seed ^ 0x6e65_7763_6f6d_6572,
    ));

    // An owner adds and removes members of a group while it chats, under the same faults.
    let membership_node = handle
        .create_node()
        .name("membership")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 4)))
        .build();
    let membership = membership_node.spawn(crate::membership::run_membership(
        gateways.clone(),
        controls.clone(),
        trace.clone(),
        seed ^ 0x6d65_6d62_6572_7321,
    ));

    // Fault points in production code (and madsim's own network delays) for this phase only.
    let chaos_start = now_us();
    if swarm.buggify {
        madsim::buggify::enable();
    }
    progress(
        &config,
        started,
        format_args!(
            "chaos: {} devices connecting, {} fault episodes over {:?}",
            devices.len(),
            schedule.episodes.len(),
            config.chaos
        ),
    );
    let faults = play(&cluster, &schedule, &controls, config.chaos).await;
    let buggify = swarm.buggify.then(|| (chaos_start, now_us()));

    // Faults are over: resolve every pending send, then let everyone catch up.
    trace.record("phase resolve");
    progress(
        &config,
        started,
        format_args!("resolve: every pending send answered"),
    );
    controls.set_phase(Phase::Resolve);
    // Up to the whole settle bound: a device that settles while another still resends
    // misses the messages those resends commit after it left (the scale scenario under
    // store faults and fault points took 63 s to resolve 1,000 devices).
    let resolve_deadline = std::time::Instant::now() + config.settle_max;
    while controls.resolved.load(Ordering::Relaxed) < devices.len()
        && std::time::Instant::now() < resolve_deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    trace.record(format!(
        "phase catchup ({} of {} devices resolved)",
        controls.resolved.load(Ordering::Relaxed),
        devices.len()
    ));
    controls.set_phase(Phase::Catchup);
    progress(
        &config,
        started,
        format_args!(
            "catch-up: {} of {} devices resolved",
            controls.resolved.load(Ordering::Relaxed),
            devices.len()
        ),
    );
    let mut observed: Vec<Observed> = Vec::new();
    // Devices that have not settled by then stop, and the checkers judge what they saw
    // (`liveness` reports them, and the others what they miss): a device stuck on a missing
    // message is a finding about that message, not only about time.
    let settle_deadline = std::time::Instant::now() + config.settle_max;
    let stopper = {
        let controls = controls.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(settle_deadline.into()).await;
            controls.stop();
        })
    };
    for task in tasks {
        match tokio::time::timeout(
            settle_deadline.saturating_duration_since(std::time::Instant::now()) + STOP_GRACE,
            task,
        )
        .await
        {
            Ok(Ok(o)) => observed.push(o),
            Ok(Err(err)) => bail!("a client task failed: {err}"),
            Err(_) => {
                bail!("liveness: a client did not stop within {STOP_GRACE:?} of being told to")
            }
        }
    }
    stopper.abort();
    let newcomers = match tokio::time::timeout(config.settle_max, newcomers).await {
        Ok(Ok(newcomers)) => newcomers,
        Ok(Err(err)) => bail!("the newcomers' task failed: {err}"),
        Err(_) => bail!(
            "liveness: the newcomers did not finish within {:?} after faults stopped",
            config.settle_max
        ),
    };
    let membership = match tokio::time::timeout(config.settle_max, membership).await {
        Ok(Ok(run)) => run,
        Ok(Err(err)) => bail!("the membership task failed: {err}"),
        Err(_) => bail!(
            "liveness: the membership actor did not finish within {:?} after faults stopped",
            config.settle_max
        ),
    };
    trace.record("phase check");
    progress(
        &config,
        started,
        format_args!("check: final reads, then the checkers"),
    );

    // The standard scenario reads through the first gateway, one request at a time (as it
    // sets up); the scale scenario as many at a time as its setup, over every gateway.
    let final_read_gateways = if config.setup_concurrency > 1 {
        gateways.clone()
    } else {
        vec![gateways[0].clone()]
    };
    let reads = on_node(
        "checker",
        IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)),
        final_reads(
            final_read_gateways,
            config.setup_concurrency,
            tokens.clone(),
            convs.clone(),
        ),
    )
    .await??;
    let (histories, inboxes_before, inboxes_after) = reads;
    let evidence = Evidence {
        convs: &convs,
        devices: &devices,
        observed: &observed,
        histories: &histories,
        inboxes_before: &inboxes_before,
        inboxes_after: &inboxes_after,
        faults: &faults,
        buggify,
        stall_drop_bound: stall_drop_bound(&config.cluster.knobs),
        stall_request_allowance: config.cluster.knobs.conn.request_timeout,
        newcomers: &newcomers,
        membership: &membership,
    };
    let (violations, live) = check_all(&evidence);
    let stats = Stats {
        sends: observed.iter().map(|o| o.sends.len()).sum(),
        messages_stored: histories.values().map(Vec::len).sum(),
        pushes: observed.iter().map(|o| o.frames.len()).sum(),
        reconnects: observed
            .iter()
            .map(|o| o.connections.len().saturating_sub(1))
            .sum(),
        live,
    };
    trace.record(format!("stats {stats:?}"));
    for v in &violations {
        trace.record(format!("violation {v}"));
    }
    Ok((stats, violations))
}

/// How long after a client stops reading for good the server must have dropped it: the
/// connection server notices the silence within its idle timeout, the close frame's write
/// (and a gateway's splice) give up within their write timeouts, and the close lingers 2 s.
fn stall_drop_bound(knobs: &Knobs) -> Duration {
    knobs.conn.idle_timeout
        + (knobs.conn.write_timeout + knobs.splice.write_timeout) * 2
        + Duration::from_secs(5)
}

pub fn user_name(i: usize) -> String {
    format!("user{i:03}")
}

/// Whether `user` keeps read receipts to themself (set at setup): one user in ten.
pub fn receipts_off(user: &str) -> bool {
    user.strip_prefix("user")
        .and_then(|n| n.parse::<usize>().ok())
        .is_some_and(|n| n % 10 == 3)
}

async fn on_node<T: Send + 'static>(
    name: &str,
    ip: IpAddr,
    f: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let node = madsim::runtime::Handle::current()
        .create_node()
        .name(name)
        .ip(ip)
        .build();
    node.spawn(f)
        .await
        .map_err(|e| anyhow::anyhow!("task on {name} failed: {e}"))
}

/// Plays the fault schedule for the chaos phase, then ends every fault still on; returns
/// each fault with the simulated times it began and ended.
async fn play(
    cluster: &Cluster,
    schedule: &Schedule,
    controls: &Controls,
    chaos: Duration,
) -> Vec<PlayedFault> {
    let start = std::time::Instant::now();
    let mut played: Vec<PlayedFault> = Vec::new();
    let mut begun: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    let mut timeline: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, e) in schedule.episodes.iter().enumerate() {
        timeline.push((e.start, true, i));
        if !e.duration.is_zero() {
            timeline.push((e.start + e.duration, false, i));
        }
    }
    timeline.sort();
    let mut killed = BTreeSet::new();
    let mut paused = BTreeSet::new();
    let mut disk_failing = false;
    for (at, begin, i) in timeline {
        tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
        let fault = &schedule.episodes[i].fault;
        let now = now_us();
        if begin {
            begun.insert(i, played.len());
            played.push(PlayedFault {
                fault: fault.clone(),
                begin_us: now,
                end_us: now,
            });
        } else if let Some(&p) = begun.get(&i) {
            played[p].end_us = now;
        }
        match (fault, begin) {
            (Fault::Kill(node), true) => {
                cluster.kill(*node);
                killed.insert(*node);
            }
            (Fault::Kill(node), false) => {
                cluster.restart(*node);
                killed.remove(node);
            }
            (Fault::Partition(a, b), true) => cluster.partition(*a, *b),
            (Fault::Partition(a, b), false) => cluster.unpartition(*a, *b),
            (Fault::Isolate(node), true) => cluster.isolate(*node),
            (Fault::Isolate(node), false) => cluster.rejoin(*node),
            (Fault::OneWay(a, b), true) => cluster.one_way(*a, *b),
            (Fault::OneWay(a, b), false) => cluster.unone_way(*a, *b),
            (Fault::Pause(node), true) => {
                cluster.pause(*node);
                paused.insert(*node);
            }
            (Fault::Pause(node), false) => {
                cluster.resume(*node);
                paused.remove(node);
            }
            (Fault::Latency { min_ms, max_ms }, true) => {
                cluster.latency(Duration::from_millis(*min_ms)..Duration::from_millis(*max_ms))
            }
            (Fault::Latency { .. }, false) => cluster.latency(NORMAL_LATENCY),
            (Fault::StoreFaults, on) => cluster.store_faults(on),
            (Fault::DiskErrors(kind), true) => {
                cluster.disk_faults(disk_faults(*kind));
                disk_failing = true;
            }
            (Fault::DiskErrors(_), false) => {
                // The store failed closed; a restart (reopening the file) recovers it.
                cluster.disk_faults(DiskFaults::default());
                disk_failing = false;
                if !killed.contains(&Node::Serve) {
                    cluster.restart(Node::Serve);
                }
            }
            (Fault::FlushRegistry, _) => cluster.flush_registry(),
            (Fault::Disconnect(device), _) => {
                if let Some(flag) = controls.disconnect.get(*device) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
            (
                Fault::Stall {
                    device,
                    window_bytes,
                    forever,
                },
                true,
            ) => {
                let order = StallOrder {
                    duration: schedule.episodes[i].duration,
                    window_bytes: *window_bytes,
                    forever: *forever,
                };
                if let Some(slot) = controls.stall.get(*device) {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(order);
                }
            }
            // The device reads again by itself when its order ends.
            (Fault::Stall { .. }, false) => {}
        }
    }
    tokio::time::sleep(chaos.saturating_sub(start.elapsed())).await;
    for node in paused {
        cluster.resume(node);
    }
    if disk_failing {
        cluster.disk_faults(DiskFaults::default());
        if !killed.contains(&Node::Serve) {
            cluster.restart(Node::Serve);
        }
    }
    for node in killed {
        cluster.restart(node);
    }
    cluster.heal();
    cluster.latency(NORMAL_LATENCY);
    cluster.store_faults(false);
    // Fault points in production code and madsim's own network delays stop with the chaos.
    madsim::buggify::disable();
    let now = now_us();
    for (&i, &p) in &begun {
        if !schedule.episodes[i].duration.is_zero() && played[p].end_us == played[p].begin_us {
            played[p].end_us = now;
        }
    }
    played
}

fn disk_faults(kind: DiskError) -> DiskFaults {
    match kind {
        DiskError::Eio => DiskFaults {
            write_eio: true,
            sync_eio: true,
            ..DiskFaults::default()
        },
        DiskError::Enospc => DiskFaults {
            write_enospc: true,
            ..DiskFaults::default()
        },
        DiskError::SyncEio => DiskFaults {
            sync_eio: true,
            ..DiskFaults::default()
        },
    }
}

/// How long a device may take to stop once told to (its longest single wait is a 5 s
/// request timeout).
const STOP_GRACE: Duration = Duration::from_secs(15);

/// madsim's default per-packet latency.
const NORMAL_LATENCY: std::ops::Range<Duration> =
    Duration::from_millis(1)..Duration::from_millis(10);

type Tokens = HashMap<String, String>;
type Convs = Vec<(ConvId, Vec<String>)>;

async fn setup(
    config: ScenarioConfig,
    gateways: Vec<String>,
    trace: Trace,
) -> anyhow::Result<(Tokens, Convs, Option<ConvId>)> {
    if config.setup_concurrency > 1 {
        return setup_concurrent(config, gateways, trace).await;
    }
    let anon = Client::new(&gateways[0])?;
    let users: Vec<String> = (0..config.users).map(user_name).collect();
    let mut tokens = HashMap::new();
    for user in &users {
        let token = register_and_login(&anon, user, Some(&trace)).await?;
        tokens.insert(user.clone(), token);
        trace.record(format!("logged in {user}"));
    }
    let mut convs = Vec::new();
    for _ in 0..config.direct_convs {
        let (a, b) = draw_pair(users.len());
        let client = anon.clone().with_token(tokens[&users[a]].clone());
        let (conv, _) = retry(|| client.create_conversation([users[b].as_str()], None))
            .await
            .context("create direct")?;
        if !convs.iter().any(|(c, _)| *c == conv.conv_id) {
            convs.push((conv.conv_id, conv.members));
        }
    }
    let hot = groups(&config, &anon, &users, &tokens, &mut convs).await?;
    trace.record(format!(
        "setup {} users, convs {convs:?}, hot {hot:?}",
        users.len()
    ));
    Ok((tokens, convs, hot))
}

/// Two different users of `n` (n >= 2) for a direct conversation, from the simulation's
/// randomness.
fn draw_pair(n: usize) -> (usize, usize) {
    let pick = || rand::random::<u64>() as usize % n;
    let a = pick();
    let mut b = pick();
    while b == a {
        b = pick();
    }
    (a, b)
}

/// Registers `user` (already taken counts as done: a retried registration may have landed)
/// and logs in, for a session token. With a trace, records how often registration was retried.
async fn register_and_login(
    anon: &Client,
    user: &str,
    trace: Option<&Trace>,
) -> anyhow::Result<String> {
    // The cluster may still be starting; retry until it answers.
    let mut attempts = 0;
    loop {
        match anon.register(user, PASSWORD).await {
            Ok(_) => break,
            Err(err) if err.code() == Some(chat_proto::ErrorCode::UsernameTaken) => break,
            Err(err) if attempts < 100 => {
                attempts += 1;
                tracing::debug!(%err, "register retry");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => bail!("register {user}: {err}"),
        }
    }
    if let Some(trace) = trace {
        trace.record(format!("registered {user} after {attempts} retries"));
    }
    let session = retry(|| anon.login(user, PASSWORD))
        .await
        .with_context(|| format!("login {user}"))?;
    if receipts_off(user) {
        let me = anon.clone().with_token(session.token.clone());
        let off = chat_client::SettingsUpdate {
            receipts: Some(false),
        };
        retry(|| me.update_settings(&off))
            .await
            .with_context(|| format!("receipts off for {user}"))?;
    }
    Ok(session.token)
}

/// The group conversations and the hot group, one by one.
async fn groups(
    config: &ScenarioConfig,
    anon: &Client,
    users: &[String],
    tokens: &Tokens,
    convs: &mut Convs,
) -> anyhow::Result<Option<ConvId>> {
    let pick = |n: usize| rand::random::<u64>() as usize % n;
    for g in 0..config.groups {
        let size = 3 + pick(config.group_size_max.saturating_sub(2).max(1));
        let mut members = BTreeSet::new();
        while members.len() < size.min(users.len()) {
            members.insert(users[pick(users.len())].clone());
        }
        let members: Vec<String> = members.into_iter().collect();
        let client = anon.clone().with_token(tokens[&members[0]].clone());
        let title = format!("group {g}");
        let (conv, _) = retry(|| client.create_conversation(&members[1..], Some(&title)))
            .await
            .context("create group")?;
        convs.push((conv.conv_id, conv.members));
    }
    let mut hot = None;
    if config.hot_group_members >= 2 {
        let mut members = BTreeSet::new();
        while members.len() < config.hot_group_members.min(users.len()) {
            members.insert(users[pick(users.len())].clone());
        }
        let members: Vec<String> = members.into_iter().collect();
        let client = anon.clone().with_token(tokens[&members[0]].clone());
        let (conv, _) = retry(|| client.create_conversation(&members[1..], Some("hot group")))
            .await
            .context("create the hot group")?;
        hot = Some(conv.conv_id);
        convs.push((conv.conv_id, conv.members));
    }
    Ok(hot)
}

/// The scale scenario's setup: accounts and direct conversations `setup_concurrency` at a
/// time, each through the gateway its index picks (one gateway's per-address rate limit
/// would otherwise make thousands of accounts take simulated hours). Deterministic: the
/// pairs are drawn first, and results are collected in order.
async fn setup_concurrent(
    config: ScenarioConfig,
    gateways: Vec<String>,
    trace: Trace,
) -> anyhow::Result<(Tokens, Convs, Option<ConvId>)> {
    use futures::{StreamExt, TryStreamExt};
    let clients: Vec<Client> = gateways
        .iter()
        .map(|url| Client::new(url))
        .collect::<Result<_, _>>()?;
    let users: Vec<String> = (0..config.users).map(user_name).collect();
    let accounts: Vec<(String, String)> =
        futures::stream::iter(users.clone().into_iter().enumerate())
            .map(|(i, user)| {
                let anon = clients[i % clients.len()].clone();
                async move {
                    register_and_login(&anon, &user, None)
                        .await
                        .map(|token| (user, token))
                }
            })
            .buffered(config.setup_concurrency)
            .try_collect()
            .await?;
    trace.record(format!("registered and logged in {} users", accounts.len()));
    let tokens: Tokens = accounts.into_iter().collect();
    let pairs: Vec<(usize, usize)> = (0..config.direct_convs)
        .map(|_| draw_pair(users.len()))
        .collect();
    let created: Vec<(ConvId, Vec<String>)> = futures::stream::iter(pairs.into_iter().enumerate())
        .map(|(i, (a, b))| {
            let client = clients[i % clients.len()]
                .clone()
                .with_token(tokens[&users[a]].clone());
            let other = users[b].clone();
            async move {
                let (conv, _) = retry(|| client.create_conversation([other.as_str()], None))
                    .await
                    .context("create direct")?;
                anyhow::Ok((conv.conv_id, conv.members))
            }
        })
        .buffered(config.setup_concurrency)
        .try_collect()
        .await?;
    let mut convs: Convs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (conv, members) in created {
        if seen.insert(conv) {
            convs.push((conv, members));
        }
    }
    let hot = groups(&config, &clients[0], &users, &tokens, &mut convs).await?;
    trace.record(format!(
        "setup {} users, {} conversations, hot {hot:?}",
        users.len(),
        convs.len()
    ));
    Ok((tokens, convs, hot))
}

/// Retries a call while it fails in a retryable way (the cluster may still be starting).
async fn retry<T, F, Fut>(call: F) -> Result<T, chat_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, chat_client::ClientError>>,
{
    retry_up_to(50, Duration::from_millis(200), call).await
}

/// Retries a call while it fails in a retryable way, at most `retries` times, `pause` apart.
pub(crate) async fn retry_up_to<T, F, Fut>(
    retries: u32,
    pause: Duration,
    mut call: F,
) -> Result<T, chat_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, chat_client::ClientError>>,
{
    let mut attempts = 0;
    loop {
        match call().await {
            Err(err) if err.is_retryable() && attempts < retries => {
                attempts += 1;
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

type FinalReads = (
    HashMap<ConvId, Vec<MessageView>>,
    HashMap<String, Inbox>,
    HashMap<String, Inbox>,
);

/// Reads every history and inbox, marks everything read, and reads the inboxes again.
async fn final_reads(
    gateways: Vec<String>,
    concurrency: usize,
    tokens: Tokens,
    convs: Convs,
) -> anyhow::Result<FinalReads> {
    use futures::{StreamExt, TryStreamExt};
    // `concurrency` reads at a time, spread over `gateways` (the scale scenario's thousands
    // of users, one after another, took longer than its time limit).
    let clients: Vec<Client> = gateways
        .iter()
        .map(|url| Client::new(url))
        .collect::<Result<_, _>>()?;
    let concurrency = concurrency.max(1);
    let firsts: Vec<(ConvId, String)> = convs
        .iter()
        .map(|(conv, members)| (*conv, members[0].clone()))
        .collect();
    let histories: HashMap<ConvId, Vec<MessageView>> =
        futures::stream::iter(firsts.into_iter().enumerate())
            .map(|(i, (conv, first_member))| {
                let client = clients[i % clients.len()]
                    .clone()
                    .with_token(tokens[&first_member].clone());
                async move {
                    let mut all: Vec<MessageView> = Vec::new();
                    let mut before = None;
                    loop {
                        let page = client
                            .history(conv, before, Some(200))
                            .await
                            .with_context(|| format!("history of {conv}"))?;
                        all.splice(0..0, page.messages);
                        match page.next_before {
                            Some(next) => before = Some(next),
                            None => break,
                        }
                    }
                    anyhow::Ok((conv, all))
                }
            })
            .buffered(concurrency)
            .try_collect()
            .await?;
    let mut convs_of: HashMap<&str, Vec<ConvId>> = HashMap::new();
    for (conv, members) in &convs {
        for member in members {
            convs_of.entry(member.as_str()).or_default().push(*conv);
        }
    }
    let mut users: Vec<String> = tokens.keys().cloned().collect();
    users.sort();
    let inboxes: Vec<(String, Inbox, Inbox)> = futures::stream::iter(users.into_iter().enumerate())
        .map(|(i, user)| {
            let client = clients[i % clients.len()]
                .clone()
                .with_token(tokens[&user].clone());
            let reads: Vec<(ConvId, u64)> = convs_of
                .get(user.as_str())
                .into_iter()
                .flatten()
                .map(|conv| (*conv, histories[conv].len() as u64))
                .filter(|(_, seq)| *seq > 0)
                .collect();
            async move {
                let before = client.inbox(Some(100)).await.context("inbox")?;
                let mut ws = client.connect_ws().await.context("connect to mark read")?;
                for (conv, seq) in reads {
                    ws.send(&ClientFrame::Read { conv, seq }).await?;
                }
                // Frames of a connection are handled in order: the pong comes after the reads.
                ws.send(&ClientFrame::Ping).await?;
                loop {
                    match ws.recv_timeout(Duration::from_secs(10)).await? {
                        WsEvent::Frame(ServerFrame::Pong) => break,
                        WsEvent::Frame(ServerFrame::Error { code, message, .. }) => {
                            bail!("read refused: {code} {message}")
                        }
                        _ => {}
                    }
                }
                let after = client.inbox(Some(100)).await.context("inbox")?;
                anyhow::Ok((user, before, after))
            }
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let mut before = HashMap::new();
    let mut after = HashMap::new();
    for (user, b, a) in inboxes {
        before.insert(user.clone(), b);
        after.insert(user, a);
    }
    Ok((histories, before, after))
}
