//! `loadgen`: a WebSocket load generator for a chat server on this machine.
//!
//! Without `--server` it starts the real server in-process (`chat::serve::run` over `RedbKv`
//! in a temporary directory on 127.0.0.1:0, cheap password hashing) and stops it at the end.
//! With `--server URL` it drives a running server, which must be on a loopback address.
//!
//! Steps: register `--users` users (names carry a random run prefix), create conversations
//! (direct pairs and/or groups), open `--conns-per-user` WebSockets per user, then
//! 1. BASELINE: JSON `ping` round trips through the same connections, `--window` in flight
//!    per connection: the cost of the WebSocket path alone, touching no store;
//! 2. SENDS: `send` frames with unique ids, `--window` in flight per connection, round-robin
//!    over the user's conversations; counts `sent` acks (ack latency), and `message` pushes
//!    received by the other members' connections (end-to-end latency, from the send time
//!    written at the start of each body).
//!
//! It prints one compact report with every parameter, and the ratio sends/s ÷ pings/s:
//! both are measured through the same connections, clients and machine in the same run,
//! so the ratio says what durability, sequencing and fan-out cost next to a bare round trip.
//! Everything is bounded: counts, `--duration-max`, and `--wait-max` on every wait.
//! Whatever the server sends is counted, never trusted to be well-formed.

use anyhow::{Context, bail, ensure};
use chat_client::{Client, ClientError, ClientFrame, ServerFrame, WsEvent, WsReceiver, WsSender};
use chat_proto::ConvId;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, mpsc};

/// WebSockets opened at most against a server of its own: one descriptor each here, and this
/// machine allows 20,000 per process (`ulimit -n 20000` first). Half of it in-process.
const CONNS_MAX: usize = 18_000;
/// REST calls (register, login, create) and connects in flight during setup.
const SETUP_CONCURRENCY: usize = 64;
/// A send answered `overloaded` or `unavailable` is resent (same id) at most this often.
const SEND_RETRIES_MAX: u32 = 5;
/// Pause before resending a send answered with a retryable error.
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// How often waiting loops look at the stop flags.
const TICK: Duration = Duration::from_millis(100);
/// How often a connection's own loops wake up with nothing to do, to look at the stop flags:
/// each wake-up is a timer, and 100,000 connections at `TICK` would be 2 million a second,
/// enough to starve the servers on the same machine.
const CONN_TICK: Duration = Duration::from_secs(1);
/// The send time at the start of each body: 16 digits of microseconds and a space.
const BODY_STAMP_BYTES: usize = 17;

#[derive(Parser, Debug, Clone)]
#[command(about = "WebSocket load generator for the chat server (127.0.0.1 only)")]
struct Args {
    /// A scenario of docs/performance.md: sets every flag it names, unless the flag is given
    /// too (`loadgen --preset one-to-one --messages 10000`). See [`Preset`].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Base URL of a running server on a loopback address (http://127.0.0.1:8080).
    /// Default: start one in-process over RedbKv in a temporary directory.
    #[arg(long)]
    server: Option<String>,
    /// Users registered for this run (`--connections` with one WebSocket per user).
    #[arg(long, visible_alias = "connections", default_value_t = 50)]
    users: usize,
    /// WebSockets per user.
    #[arg(long, default_value_t = 1)]
    conns_per_user: usize,
    /// Which conversations to create: direct pairs, groups, or both.
    #[arg(long, value_enum, default_value_t = Convs::Both)]
    convs: Convs,
    /// Direct conversations each user opens (with the next users, wrapping around); a user
    /// is in about twice as many.
    #[arg(long, default_value_t = 2)]
    directs_per_user: usize,
    /// Users are split into consecutive groups of this size (one group each; a size over the
    /// protocol's member limit splits the users into equal groups within it).
    #[arg(long, visible_alias = "members", default_value_t = 5)]
    group_size: usize,
    /// Messages sent in total, spread evenly over the connections.
    #[arg(long, default_value_t = 50_000)]
    messages: u64,
    /// Ping round trips in total for the baseline, spread evenly over the connections (more
    /// than messages by default: a round trip costs far less than a send).
    #[arg(long, default_value_t = 200_000)]
    pings: u64,
    /// Connections that send (spread evenly over all of them); the others only receive.
    /// Default: every connection.
    #[arg(long)]
    senders: Option<usize>,
    /// Before the sends phase, wait (up to `--duration-max`) until this file exists: lets
    /// several generator processes, each opening its share of the WebSockets, send together.
    #[arg(long)]
    go_file: Option<std::path::PathBuf>,
    /// Open loop: sends per second from this process in all (spread evenly over the
    /// senders), instead of as fast as the window allows. With `--send-rate` the sends phase
    /// lasts about `--messages` / rate seconds.
    #[arg(long)]
    send_rate: Option<f64>,
    /// After the sends, hold every WebSocket open and quiet this long, then measure the
    /// server's memory (see `--server-pid`); 0: no memory figure.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    hold: Duration,
    /// Processes of the server under load (repeat for a cluster), whose resident memory is
    /// reported before the WebSockets open and after `--hold`. In-process, the generator's
    /// own process is measured (server and generator together).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// REST readers at once in the READS phase (0: no READS phase), each over one keep-alive
    /// connection. Each read is a history page of 50 or an inbox of 20, alternately, of a
    /// random user.
    #[arg(long, default_value_t = 0)]
    readers: usize,
    /// Reads in total in the READS phase.
    #[arg(long, default_value_t = 20_000)]
    reads: u64,
    /// Frames in flight per connection (pings in the baseline, sends after).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Bytes of each message body (the send time takes the first 17).
    #[arg(long, default_value_t = 200)]
    body_bytes: usize,
    /// The whole run stops after this long, finished or not (e.g. 90s, 2m).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration_max: Duration,
    /// Every single wait (a REST call, a frame, a window slot) gives up after this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    wait_max: Duration,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Convs {
    Direct,
    Group,
    Both,
    /// No conversations (an idle run: connections only).
    None,
}

/// The scenarios of docs/performance.md, each a set of flag values.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Preset {
    /// Real chat traffic: 1,000 users in 20,000 direct conversations (each user talks with 40
    /// others), 200 of them sending with 10 in flight each.
    OneToOne,
    /// One room of `--members` (default 1,000) receiving from one sender per group of at most
    /// the member limit, 2 in flight each.
    Fanout,
    /// `--connections` (default 1,000) WebSockets held open and quiet for 10 s: the server's
    /// memory per idle WebSocket (give `--server-pid` for a server of its own).
    Idle,
    /// A store of 1,000,000 messages (1,000 direct conversations of 1,000), then 64 REST
    /// readers: 200,000 reads, history pages of 50 and inboxes of 20.
    Reads,
}

impl Preset {
    /// The flag values this preset sets, as `(flag id, value)`.
    fn values(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Preset::OneToOne => &[
                ("users", "1000"),
                ("convs", "direct"),
                ("directs_per_user", "20"),
                ("senders", "200"),
                ("window", "10"),
                ("messages", "100000"),
                ("pings", "100000"),
            ],
            Preset::Fanout => &[
                ("users", "1000"),
                ("convs", "group"),
                ("group_size", "1000"),
                ("window", "2"),
                ("messages", "20000"),
                ("pings", "20000"),
            ],
            Preset::Idle => &[
                ("users", "1000"),
                ("convs", "none"),
                ("messages", "0"),
                ("pings", "1000"),
                ("hold", "10s"),
            ],
            Preset::Reads => &[
                ("users", "1000"),
                ("convs", "direct"),
                ("directs_per_user", "1"),
                // 8,000 sends in flight: more only queues (see "What the load figures mean").
                ("window", "8"),
                ("messages", "1000000"),
                ("pings", "10000"),
                ("readers", "64"),
                ("reads", "200000"),
                ("duration_max", "15m"),
            ],
        }
    }
}

impl Args {
    /// Parses the command line, a preset's values filling every flag not given.
    fn parse_with_preset<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
        argv: I,
    ) -> Result<Args, clap::Error> {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
        let matches = Args::command().try_get_matches_from(&argv)?;
        let mut args = Args::from_arg_matches(&matches)?;
        let Some(preset) = args.preset else {
            return Ok(args);
        };
        // Re-parse with the preset's values before the user's own flags, which then win.
        let mut with_preset = vec![argv.first().cloned().unwrap_or_else(|| "loadgen".into())];
        for (id, value) in preset.values() {
            if matches.value_source(id) != Some(ValueSource::CommandLine) {
                with_preset.push(format!("--{}={value}", id.replace('_', "-")).into());
            }
        }
        with_preset.extend(argv.into_iter().skip(1));
        args = Args::try_parse_from(with_preset)?;
        // A fan-out room bigger than a conversation may be is split into equal groups.
        if preset == Preset::Fanout {
            let limit = chat_proto::limits::CONV_MEMBERS_MAX;
            let groups = args.group_size.div_ceil(limit).max(1);
            args.users = args.group_size;
            args.group_size = args.group_size.div_ceil(groups);
            if matches.value_source("senders") != Some(ValueSource::CommandLine) {
                args.senders = Some(groups);
            }
        }
        if preset == Preset::Idle && matches.value_source("pings") != Some(ValueSource::CommandLine)
        {
            args.pings = args.users as u64;
        }
        Ok(args)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit (500ms, 90s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("`{text}`: unknown unit `{unit}` (ms, s, m)")),
    }
}

fn main() -> std::process::ExitCode {
    let args = match Args::parse_with_preset(std::env::args_os()) {
        Ok(args) => args,
        Err(e) => e.exit(),
    };
    let outcome = validate(&args).and_then(|()| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        runtime.block_on(run(args))
    });
    match outcome {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn validate(args: &Args) -> anyhow::Result<()> {
    ensure!(args.users >= 2, "--users must be at least 2");
    ensure!(
        args.conns_per_user >= 1,
        "--conns-per-user must be at least 1"
    );
    // In-process, both ends of every WebSocket are descriptors of this process.
    let conns_max = if args.server.is_some() {
        CONNS_MAX
    } else {
        CONNS_MAX / 2
    };
    ensure!(
        args.users * args.conns_per_user <= conns_max,
        "at most {conns_max} connections here"
    );
    ensure!(args.window >= 1, "--window must be at least 1");
    ensure!(
        args.senders
            .is_none_or(|s| s <= args.users * args.conns_per_user),
        "--senders exceeds the connections"
    );
    ensure!(
        args.send_rate.is_none_or(|r| r.is_finite() && r > 0.0),
        "--send-rate must be positive"
    );
    ensure!(
        args.group_size <= chat_proto::limits::CONV_MEMBERS_MAX
            || args.convs == Convs::Direct
            || args.convs == Convs::None,
        "--group-size must be at most {} (the member limit); `--preset fanout --members N` splits a bigger room",
        chat_proto::limits::CONV_MEMBERS_MAX
    );
    ensure!(
        args.messages == 0 || args.convs != Convs::None,
        "--convs none sends nothing: use --messages 0"
    );
    ensure!(
        (BODY_STAMP_BYTES + 1..=chat_proto::limits::BODY_BYTES_MAX).contains(&args.body_bytes),
        "--body-bytes must be {}..={}",
        BODY_STAMP_BYTES + 1,
        chat_proto::limits::BODY_BYTES_MAX
    );
    if let Some(url) = &args.server {
        let base = chat_client::BaseUrl::parse(url)?;
        let loopback = base.ip().is_some_and(|ip| ip.is_loopback()) || base.host == "localhost";
        ensure!(
            loopback,
            "--server must be on this machine (127.0.0.1, ::1 or localhost), not `{}`",
            base.host
        );
    }
    Ok(())
}

/// Microseconds since the Unix epoch (the send stamp in bodies).
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The server under load.

/// The in-process server: the binary's own `run`, over the durable store.
struct InProcess {
    base: String,
    kv: Arc<chat_store::RedbKv>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start() -> anyhow::Result<InProcess> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let kv = Arc::new(
            chat_store::RedbKv::open(dir.path().join("messages.redb"))
                .context("opening the store")?,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding 127.0.0.1:0")?;
        let base = format!("http://{}", listener.local_addr()?);
        let secret: Vec<u8> = (0..chat_auth::secret::SECRET_BYTES)
            .map(|_| rand::random())
            .collect();
        let mut options = chat::serve::Options::new(secret);
        // A load test of messaging, not of Argon2.
        options.app.password_cost = chat_auth::PasswordCost::TESTING;
        // Every simulated user comes from 127.0.0.1: the per-IP limit would throttle setup.
        options.rates = chat_gateway::ratelimit::RateConfig::unlimited();
        // A load test of messaging: each simulated user sends as fast as it is told to.
        options.conn.frame_rate = None;
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let kv_dyn: Arc<dyn chat_store::Kv> = kv.clone();
        let task = tokio::spawn(chat::serve::run(listener, kv_dyn, options, async {
            let _ = stopped.await;
        }));
        Ok(InProcess {
            base,
            kv,
            shutdown,
            task,
            _dir: dir,
        })
    }

    async fn stop(self, wait_max: Duration) {
        let _ = self.shutdown.send(());
        match tokio::time::timeout(wait_max, self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("loadgen: the in-process server failed: {e:#}"),
            Ok(Err(e)) => eprintln!("loadgen: the in-process server task ended abnormally: {e}"),
            Err(_) => eprintln!(
                "loadgen: the in-process server did not stop within {wait_max:?}; leaving it"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setup: users, conversations, connections.

struct Conversation {
    id: ConvId,
    members: Vec<usize>,
}

struct Setup {
    run: String,
    clients: Vec<Client>,
    convs: Vec<Conversation>,
    /// Conversations of each user.
    convs_of: Vec<Vec<ConvId>>,
    /// Members of each conversation.
    members_of: HashMap<ConvId, usize>,
}

/// Attempts of one setup call answered with a retryable error (`overloaded` from a rate
/// limit, `unavailable`, a timeout).
const SETUP_ATTEMPTS_MAX: u32 = 8;

/// Runs a setup call, retrying retryable errors with exponential back-off (100 ms doubling,
/// at most 2 s), as the protocol asks of clients.
async fn with_retries<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Duration::from_millis(100);
    for attempt in 1.. {
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() && attempt < SETUP_ATTEMPTS_MAX => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).with_context(|| format!("{what} (attempt {attempt})")),
        }
    }
    unreachable!("the loop returns")
}

fn username(run: &str, i: usize) -> String {
    format!("lg{run}_{i}")
}

async fn setup(args: &Args, base: &str) -> anyhow::Result<Setup> {
    // 6 random characters of a-z0-9: usernames stay unique across runs against one server.
    let run: String = (0..6)
        .map(|_| {
            let i = rand::random_range(0..36u8);
            (if i < 10 { b'0' + i } else { b'a' + i - 10 }) as char
        })
        .collect();
    let password = format!("pw-{run}-{}", rand::random::<u64>());
    let anon = Client::new(base)?.with_timeout(args.wait_max);

    let clients: Vec<Client> = futures::stream::iter(0..args.users)
        .map(|i| {
            let (anon, name, password) = (anon.clone(), username(&run, i), password.clone());
            async move {
                with_retries(&format!("registering {name}"), || {
                    anon.register(&name, &password)
                })
                .await?;
                let session = with_retries(&format!("logging in {name}"), || {
                    anon.login(&name, &password)
                })
                .await?;
                anyhow::Ok(anon.with_token(session.token))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    // Direct pairs: each user with the next `directs_per_user` users (wrapping, deduplicated).
    let mut plans: Vec<Vec<usize>> = Vec::new();
    if matches!(args.convs, Convs::Direct | Convs::Both) {
        let mut pairs = BTreeSet::new();
        for i in 0..args.users {
            for k in 1..=args.directs_per_user {
                let j = (i + k) % args.users;
                if i != j && pairs.insert((i.min(j), i.max(j))) {
                    plans.push(vec![i, j]);
                }
            }
        }
    }
    if matches!(args.convs, Convs::Group | Convs::Both) && args.group_size >= 2 {
        let users: Vec<usize> = (0..args.users).collect();
        plans.extend(
            users
                .chunks(args.group_size)
                .filter(|chunk| chunk.len() >= 2)
                .map(<[usize]>::to_vec),
        );
    }
    ensure!(
        !plans.is_empty() || args.convs == Convs::None,
        "no conversations: use --directs-per-user >= 1 or --group-size >= 2"
    );

    let convs: Vec<Conversation> = futures::stream::iter(plans)
        .map(|members| {
            let creator = clients[members[0]].clone();
            let others: Vec<String> = members[1..].iter().map(|&m| username(&run, m)).collect();
            // Two members and no title open a direct conversation; a title makes a group.
            let title = (members.len() > 2 || args.convs == Convs::Group).then_some("loadgen");
            async move {
                // A retried group creation may create a second group; the first one is unused.
                let (view, _) = with_retries("creating a conversation", || {
                    creator.create_conversation(&others, title)
                })
                .await?;
                anyhow::Ok(Conversation {
                    id: view.conv_id,
                    members,
                })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let mut convs_of = vec![Vec::new(); args.users];
    let mut members_of = HashMap::new();
    for conv in &convs {
        for &m in &conv.members {
            convs_of[m].push(conv.id);
        }
        members_of.insert(conv.id, conv.members.len());
    }
    Ok(Setup {
        run,
        clients,
        convs,
        convs_of,
        members_of,
    })
}

struct Conn {
    index: usize,
    user: usize,
    sender: WsSender,
    receiver: WsReceiver,
}

/// Opens connections `range` (of users x conns-per-user, in order).
async fn connect(
    args: &Args,
    setup: &Setup,
    range: std::ops::Range<usize>,
) -> anyhow::Result<Vec<Conn>> {
    let wanted: Vec<(usize, usize)> = (0..args.users)
        .flat_map(|u| (0..args.conns_per_user).map(move |_| u))
        .enumerate()
        .skip(range.start)
        .take(range.len())
        .collect();
    futures::stream::iter(wanted)
        .map(|(index, user)| {
            let client = setup.clients[user].clone();
            async move {
                let ws = with_retries(&format!("opening WebSocket {index}"), || {
                    client.connect_ws()
                })
                .await?;
                let (sender, receiver) = ws.split();
                anyhow::Ok(Conn {
                    index,
                    user,
                    sender,
                    receiver,
                })
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Which sender connection `i` of `conns` is, if any: sender k is connection
/// k * conns / senders, spread over the users (so over the groups too). That is
/// ceil(i * senders / conns), when that sender lands on `i`.
fn sender_rank(i: usize, senders: usize, conns: usize) -> Option<usize> {
    let k = (i * senders).div_ceil(conns.max(1));
    (k < senders && k * conns / senders == i).then_some(k)
}

/// `total` spread over `n` parts, the remainder going to the first ones.
fn share(total: u64, n: usize, i: usize) -> u64 {
    total / n as u64 + u64::from((i as u64) < total % n as u64)
}

// ---------------------------------------------------------------------------------------
// Measurements.

/// Latencies in microseconds.
#[derive(Default)]
struct Latencies(Vec<u32>);

impl Latencies {
    fn record(&mut self, elapsed: Duration) {
        self.0
            .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
    }

    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// `p50 .. p99 .. max` in milliseconds.
    fn summary(mut self) -> String {
        if self.0.is_empty() {
            return "no samples".into();
        }
        self.0.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
            self.0[rank - 1] as f64 / 1000.0
        };
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            at(0.50),
            at(0.99),
            at(1.0)
        )
    }
}

/// What went wrong on connections, by kind, for the report.
#[derive(Default, Debug)]
struct Problems {
    /// Frames that could not be decoded, or that answered nothing we asked.
    unexpected_frames: u64,
    /// Error frames that match no pending send.
    error_frames: u64,
    /// Connections closed by the server or broken.
    closed: u64,
    /// Waits that hit `--wait-max`.
    stalls: u64,
    first: Option<String>,
}

impl Problems {
    fn note(&mut self, what: String) {
        self.first.get_or_insert(what);
    }

    fn merge(&mut self, other: Problems) {
        self.unexpected_frames += other.unexpected_frames;
        self.error_frames += other.error_frames;
        self.closed += other.closed;
        self.stalls += other.stalls;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    fn is_empty(&self) -> bool {
        self.unexpected_frames + self.error_frames + self.closed + self.stalls == 0
    }
}

/// Counters shared by every connection of a phase.
struct Phase {
    started: Instant,
    /// The whole run's deadline passed.
    stop: Arc<AtomicBool>,
    /// Set by the coordinator once the phase is complete or can make no more progress.
    over: AtomicBool,
    /// Connections whose own frames are all answered (or given up on).
    conns_done: AtomicUsize,
    replies: AtomicU64,
    failed: AtomicU64,
    /// Sends sent again after a retryable error.
    retried: AtomicU64,
    delivered: AtomicU64,
    deliveries_expected: AtomicU64,
    last_reply_micros: AtomicU64,
    last_push_micros: AtomicU64,
}

impl Phase {
    fn new(stop: Arc<AtomicBool>) -> Arc<Phase> {
        Arc::new(Phase {
            started: Instant::now(),
            stop,
            over: AtomicBool::new(false),
            conns_done: AtomicUsize::new(0),
            replies: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            deliveries_expected: AtomicU64::new(0),
            last_reply_micros: AtomicU64::new(0),
            last_push_micros: AtomicU64::new(0),
        })
    }

    fn ending(&self) -> bool {
        self.over.load(Ordering::Relaxed) || self.stop.load(Ordering::Relaxed)
    }

    fn since_start_micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn replied(&self) {
        self.replies.fetch_add(1, Ordering::Relaxed);
        self.last_reply_micros
            .fetch_max(self.since_start_micros(), Ordering::Relaxed);
    }

    fn pushed(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_push_micros
            .fetch_max(self.since_start_micros(), Ordering::Relaxed);
    }

    /// Ends the phase once every connection has its replies and every expected push is in,
    /// or once nothing moved for `wait_max` after that (lost pushes), or at the deadline.
    async fn coordinate(&self, conns: usize, wait_max: Duration) {
        let mut last_progress = (0, 0, Instant::now());
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(TICK / 2).await;
            let replies =
                self.replies.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
            let delivered = self.delivered.load(Ordering::Relaxed);
            let senders_done = self.conns_done.load(Ordering::Relaxed) == conns;
            if senders_done && delivered >= self.deliveries_expected.load(Ordering::Relaxed) {
                break;
            }
            if (replies, delivered) != (last_progress.0, last_progress.1) {
                last_progress = (replies, delivered, Instant::now());
            } else if senders_done && last_progress.2.elapsed() > wait_max {
                break;
            }
        }
        self.over.store(true, Ordering::Relaxed);
    }

    fn rate(&self, count: u64, last_micros: &AtomicU64) -> (f64, f64) {
        let secs = last_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (secs, if secs > 0.0 { count as f64 / secs } else { 0.0 })
    }
}

/// Locks a mutex held only for map and queue updates, never across an `.await`; a panic
/// elsewhere leaves plain data behind, still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits for a window slot, giving up after `wait_max` or when the phase ends.
async fn window_slot(
    window: &Semaphore,
    phase: &Phase,
    wait_max: Duration,
) -> Result<(), &'static str> {
    let give_up = Instant::now() + wait_max;
    loop {
        if phase.ending() {
            return Err("the phase ended");
        }
        match tokio::time::timeout(TICK, window.acquire()).await {
            Ok(Ok(permit)) => {
                permit.forget();
                return Ok(());
            }
            Ok(Err(_)) => return Err("the window closed"),
            Err(_) if Instant::now() > give_up => return Err("no reply within --wait-max"),
            Err(_) => {}
        }
    }
}

/// The next event of a connection: `None` on a quiet tick; an `Err` text once the
/// connection is unusable.
async fn next_event(
    receiver: &mut WsReceiver,
    problems: &mut Problems,
) -> Result<Option<ServerFrame>, String> {
    match receiver.recv_timeout(CONN_TICK).await {
        Ok(WsEvent::Frame(frame)) => Ok(Some(frame)),
        Ok(WsEvent::Pong(_)) => Ok(None),
        Ok(WsEvent::Closed { code, reason }) => {
            Err(format!("closed by the server ({code:?}): {reason}"))
        }
        Err(ClientError::Timeout { .. }) => Ok(None),
        Err(ClientError::Decode(e)) => {
            problems.unexpected_frames += 1;
            problems.note(format!("undecodable frame: {e}"));
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

// ---------------------------------------------------------------------------------------
// Phase 1: ping round trips.

struct ConnResult {
    conn: Conn,
    latencies: Latencies,
    pushes: Latencies,
    problems: Problems,
}

async fn ping_conn(
    mut conn: Conn,
    quota: u64,
    window: usize,
    wait_max: Duration,
    phase: Arc<Phase>,
) -> ConnResult {
    let slots = Semaphore::new(window);
    let in_flight: Mutex<VecDeque<Instant>> = Mutex::new(VecDeque::new());
    let sent = AtomicU64::new(0);
    let sender_done = AtomicBool::new(false);
    let Conn {
        sender, receiver, ..
    } = &mut conn;

    let send = async {
        let mut problem = None;
        for _ in 0..quota {
            if let Err(why) = window_slot(&slots, &phase, wait_max).await {
                if !phase.ending() {
                    problem = Some(format!("ping send stopped: {why}"));
                }
                break;
            }
            lock(&in_flight).push_back(Instant::now());
            if let Err(e) = sender.send(&ClientFrame::Ping).await {
                problem = Some(format!("ping send failed: {e}"));
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        sender_done.store(true, Ordering::Relaxed);
        problem
    };
    let receive = async {
        let mut latencies = Latencies::default();
        let mut problems = Problems::default();
        let mut received = 0u64;
        let mut last_progress = Instant::now();
        loop {
            let done = sender_done.load(Ordering::Relaxed);
            if (done && received >= sent.load(Ordering::Relaxed)) || phase.ending() {
                break;
            }
            if done && last_progress.elapsed() > wait_max {
                problems.stalls += 1;
                problems.note(format!(
                    "{} pongs missing after --wait-max",
                    sent.load(Ordering::Relaxed) - received
                ));
                break;
            }
            match next_event(receiver, &mut problems).await {
                Ok(None) => {}
                Ok(Some(ServerFrame::Pong)) => {
                    last_progress = Instant::now();
                    let Some(at) = lock(&in_flight).pop_front() else {
                        problems.unexpected_frames += 1;
                        continue;
                    };
                    latencies.record(at.elapsed());
                    received += 1;
                    phase.replied();
                    slots.add_permits(1);
                }
                Ok(Some(other)) => {
                    problems.unexpected_frames += 1;
                    problems.note(format!("unexpected frame during pings: {other:?}"));
                }
                Err(why) => {
                    problems.closed += 1;
                    problems.note(why);
                    slots.close();
                    break;
                }
            }
        }
        (latencies, problems)
    };
    let (send_problem, (latencies, mut problems)) = tokio::join!(send, receive);
    phase.conns_done.fetch_add(1, Ordering::Relaxed);
    if let Some(why) = send_problem {
        problems.stalls += 1;
        problems.note(why);
    }
    ConnResult {
        conn,
        latencies,
        pushes: Latencies::default(),
        problems,
    }
}

// ---------------------------------------------------------------------------------------
// Phase 2: sends, acks and pushes.

struct Pending {
    first_sent: Instant,
    conv: ConvId,
    body: String,
    retries: u32,
}

struct SendPlan {
    run: String,
    quota: u64,
    convs: Vec<ConvId>,
    /// Connections that get a push of a message in each conversation (all members'
    /// connections but the sending one).
    recipients: Arc<HashMap<ConvId, u64>>,
    body_bytes: usize,
    /// Open loop: one send every this long (the first after `first_after`), window permitting.
    pace: Option<(Duration, Duration)>,
    /// Sends start once this file exists.
    go_file: Option<std::path::PathBuf>,
}

fn body(stamp_micros: u64, bytes: usize) -> String {
    let mut body = format!("{stamp_micros:016} ");
    body.extend(std::iter::repeat_n('x', bytes.saturating_sub(body.len())));
    body
}

async fn send_conn(
    mut conn: Conn,
    plan: SendPlan,
    window: usize,
    wait_max: Duration,
    phase: Arc<Phase>,
) -> ConnResult {
    let slots = Semaphore::new(window);
    let pending: Mutex<HashMap<String, Pending>> = Mutex::new(HashMap::new());
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<String>();
    let receiver_dead = AtomicBool::new(false);
    // Sends acknowledged or refused for good, counted by the receiver.
    let answered = AtomicU64::new(0);
    let index = conn.index;
    let Conn {
        sender, receiver, ..
    } = &mut conn;
    // A user left out of every conversation (a last group of one) has nothing to send.
    let quota = if plan.convs.is_empty() { 0 } else { plan.quota };

    let send = async {
        if let Some(go) = &plan.go_file {
            while !go.exists() && !phase.ending() {
                tokio::time::sleep(CONN_TICK).await;
            }
        }
        let mut next: u64 = 0;
        let mut progress = (next, answered.load(Ordering::Relaxed), Instant::now());
        let paced_from = tokio::time::Instant::now()
            + plan
                .pace
                .map_or(Duration::ZERO, |(_, first_after)| first_after);
        let due = |next: u64| {
            plan.pace
                .map_or(paced_from, |(every, _)| paced_from + every * next as u32)
        };
        let problem: Option<String> = loop {
            if phase.ending() || receiver_dead.load(Ordering::Relaxed) {
                break None;
            }
            let now_answered = answered.load(Ordering::Relaxed);
            if next == quota && lock(&pending).is_empty() {
                break None;
            }
            if (next, now_answered) != (progress.0, progress.1) {
                progress = (next, now_answered, Instant::now());
            } else if progress.2.elapsed() > wait_max && !lock(&pending).is_empty() {
                break Some(format!(
                    "{} sends unanswered after --wait-max",
                    lock(&pending).len()
                ));
            }
            // New sends while the window has room; resends of refused ones as they come.
            let outcome = tokio::select! {
                Some(id) = retry_rx.recv() => {
                    tokio::time::sleep(RETRY_BACKOFF).await;
                    let mut ids = vec![id];
                    while let Ok(id) = retry_rx.try_recv() {
                        ids.push(id);
                    }
                    let mut outcome = Ok(());
                    for id in ids {
                        let frame = lock(&pending).get(&id).map(|p| ClientFrame::Send { id, conv: p.conv, body: p.body.clone() });
                        if let Some(frame) = frame {
                            phase.retried.fetch_add(1, Ordering::Relaxed);
                            outcome = sender.send(&frame).await;
                            if outcome.is_err() {
                                break;
                            }
                        }
                    }
                    outcome
                }
                _ = tokio::time::sleep_until(due(next)), if next < quota && tokio::time::Instant::now() < due(next) => Ok(()),
                slot = slots.acquire(), if next < quota && tokio::time::Instant::now() >= due(next) => {
                    let Ok(slot) = slot else { break None };
                    slot.forget();
                    let id = format!("{}-{index}-{next}", plan.run);
                    let conv = plan.convs[next as usize % plan.convs.len()];
                    let text = body(now_micros(), plan.body_bytes);
                    lock(&pending).insert(id.clone(), Pending { first_sent: Instant::now(), conv, body: text.clone(), retries: 0 });
                    next += 1;
                    sender.send(&ClientFrame::Send { id, conv, body: text }).await
                }
                _ = tokio::time::sleep(CONN_TICK) => Ok(()),
            };
            if let Err(e) = outcome {
                break Some(format!("send failed: {e}"));
            }
        };
        phase.conns_done.fetch_add(1, Ordering::Relaxed);
        problem
    };
    let receive = async {
        let mut acks = Latencies::default();
        let mut pushes = Latencies::default();
        let mut problems = Problems::default();
        // Until the coordinator ends the phase: other connections' pushes keep coming after
        // this connection's own sends are all acknowledged.
        while !phase.ending() {
            match next_event(receiver, &mut problems).await {
                Ok(None) => {}
                Ok(Some(ServerFrame::Sent { id, conv, .. })) => {
                    let Some(p) = lock(&pending).remove(&id) else {
                        problems.unexpected_frames += 1;
                        problems.note(format!("ack of an unknown send `{id}`"));
                        continue;
                    };
                    acks.record(p.first_sent.elapsed());
                    answered.fetch_add(1, Ordering::Relaxed);
                    phase.deliveries_expected.fetch_add(
                        plan.recipients.get(&conv).copied().unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    phase.replied();
                    slots.add_permits(1);
                }
                Ok(Some(ServerFrame::Error {
                    code,
                    message,
                    id: Some(id),
                    ..
                })) => {
                    let mut pending = lock(&pending);
                    let Some(p) = pending.get_mut(&id) else {
                        problems.error_frames += 1;
                        problems.note(format!(
                            "error for an unknown send `{id}`: {code:?} {message}"
                        ));
                        continue;
                    };
                    if code.is_retryable() && p.retries < SEND_RETRIES_MAX {
                        p.retries += 1;
                        let _ = retry_tx.send(id);
                    } else {
                        pending.remove(&id);
                        drop(pending);
                        problems.note(format!("send `{id}` refused: {code:?} {message}"));
                        phase.failed.fetch_add(1, Ordering::Relaxed);
                        answered.fetch_add(1, Ordering::Relaxed);
                        slots.add_permits(1);
                    }
                }
                Ok(Some(ServerFrame::Message { sender, body, .. })) => {
                    // Only pushes of this run's messages count; the stamp is our own clock.
                    let stamp = body
                        .get(..BODY_STAMP_BYTES - 1)
                        .and_then(|s| s.parse::<u64>().ok());
                    match stamp {
                        Some(stamp) if sender.starts_with(&format!("lg{}_", plan.run)) => {
                            pushes
                                .record(Duration::from_micros(now_micros().saturating_sub(stamp)));
                            phase.pushed();
                        }
                        _ => problems.unexpected_frames += 1,
                    }
                }
                Ok(Some(other)) => {
                    problems.unexpected_frames += 1;
                    problems.note(format!("unexpected frame during sends: {other:?}"));
                }
                Err(why) => {
                    problems.closed += 1;
                    problems.note(why);
                    receiver_dead.store(true, Ordering::Relaxed);
                    slots.close();
                    break;
                }
            }
        }
        (acks, pushes, problems)
    };
    let (send_problem, (acks, pushes, mut problems)) = tokio::join!(send, receive);
    if let Some(why) = send_problem {
        problems.stalls += 1;
        problems.note(why);
    }
    ConnResult {
        conn,
        latencies: acks,
        pushes,
        problems,
    }
}

// ---------------------------------------------------------------------------------------
// Server memory and the READS phase.

/// Resident memory of the given processes in KiB, summed (this process if none is given);
/// `None` where /proc cannot tell (not Linux, a process gone).
fn rss_kib(pids: &[u32]) -> Option<u64> {
    let read = |path: String| -> Option<u64> {
        let status = std::fs::read_to_string(path).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    if pids.is_empty() {
        return read("/proc/self/status".into());
    }
    pids.iter()
        .map(|pid| read(format!("/proc/{pid}/status")))
        .sum()
}

struct Reads {
    report: String,
    problems: Problems,
}

/// One reader's keep-alive HTTP/1 connection: real clients (browsers, the apps) keep theirs
/// open, and a TCP handshake per read would measure the kernel rather than the server.
struct KeepAlive {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    authority: String,
}

impl KeepAlive {
    async fn open(base: &chat_client::BaseUrl) -> anyhow::Result<KeepAlive> {
        let authority = base.authority();
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(KeepAlive { sender, authority })
    }

    /// GETs `path` as the holder of `token`; the body of a 200 answer.
    async fn get(
        &mut self,
        path: &str,
        token: &str,
        wait_max: Duration,
    ) -> anyhow::Result<hyper::body::Bytes> {
        use http_body_util::BodyExt;
        let request = http::Request::get(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(http_body_util::Empty::new())?;
        let answer = tokio::time::timeout(wait_max, async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        })
        .await
        .map_err(|_| anyhow::anyhow!("no answer within --wait-max"))??;
        ensure!(
            answer.0 == http::StatusCode::OK,
            "{path}: {} {}",
            answer.0,
            String::from_utf8_lossy(&answer.1)
        );
        Ok(answer.1)
    }
}

/// `--readers` REST clients at once, `--reads` in total, each over its own keep-alive
/// connection: a history page of 50 (at a random depth of a random conversation of a random
/// user) and that user's inbox of 20, alternately. Every answer is decoded and checked.
async fn read_phase(
    args: &Args,
    base: &str,
    setup: &Setup,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Reads> {
    const PAGE: u32 = 50;
    const INBOX: u32 = 20;
    let base = chat_client::BaseUrl::parse(base)?;
    // Messages per conversation, about: pages start at a random depth within it.
    let depth = (args.messages / setup.convs.len().max(1) as u64).max(1);
    let tokens: Arc<Vec<String>> = Arc::new(
        setup
            .clients
            .iter()
            .map(|c| c.token().unwrap_or_default().to_owned())
            .collect(),
    );
    let convs_of = Arc::new(setup.convs_of.clone());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.readers);
    for r in 0..args.readers {
        let quota = share(args.reads, args.readers, r);
        let (tokens, convs_of, stop, wait_max, base) = (
            tokens.clone(),
            convs_of.clone(),
            stop.clone(),
            args.wait_max,
            base.clone(),
        );
        let mut conn = KeepAlive::open(&base).await?;
        tasks.push(tokio::spawn(async move {
            let (mut history, mut inbox, mut problems) = (
                Latencies::default(),
                Latencies::default(),
                Problems::default(),
            );
            for n in 0..quota {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let user = rand::random_range(0..tokens.len());
                let begun = Instant::now();
                let outcome = match convs_of[user].as_slice() {
                    convs if n % 2 == 0 && !convs.is_empty() => {
                        let conv = convs[rand::random_range(0..convs.len())];
                        let before = rand::random_range(1..=depth + 1);
                        let path = format!(
                            "/v1/conversations/{conv}/messages?before={before}&limit={PAGE}"
                        );
                        conn.get(&path, &tokens[user], wait_max)
                            .await
                            .and_then(|body| {
                                let page: chat_proto::rest::HistoryPage =
                                    serde_json::from_slice(&body)?;
                                history.record(begun.elapsed());
                                ensure!(
                                    page.messages.len() <= PAGE as usize,
                                    "a page of {} messages",
                                    page.messages.len()
                                );
                                Ok(())
                            })
                    }
                    _ => conn
                        .get(&format!("/v1/inbox?limit={INBOX}"), &tokens[user], wait_max)
                        .await
                        .and_then(|body| {
                            let page: chat_proto::rest::Inbox = serde_json::from_slice(&body)?;
                            inbox.record(begun.elapsed());
                            ensure!(
                                page.conversations.len() <= INBOX as usize,
                                "an inbox of {}",
                                page.conversations.len()
                            );
                            Ok(())
                        }),
                };
                if let Err(e) = outcome {
                    problems.error_frames += 1;
                    problems.note(format!("read failed: {e:#}"));
                    // The connection may be broken: a new one for the next read.
                    match KeepAlive::open(&base).await {
                        Ok(fresh) => conn = fresh,
                        Err(e) => {
                            problems.note(format!("reconnect failed: {e:#}"));
                            break;
                        }
                    }
                }
            }
            (history, inbox, problems)
        }));
    }
    let (mut history, mut inbox, mut problems) = (
        Latencies::default(),
        Latencies::default(),
        Problems::default(),
    );
    for task in tasks {
        match task.await {
            Ok((h, i, p)) => {
                history.extend(h);
                inbox.extend(i);
                problems.merge(p);
            }
            Err(e) => problems.note(format!("a reader task failed: {e}")),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let done = history.0.len() + inbox.0.len();
    let report = format!(
        "READS          : {done}/{} by {} readers (keep-alive) in {secs:.2} s = {:.0}/s; history page of {PAGE} {}; inbox of {INBOX} {}\n",
        args.reads,
        args.readers,
        done as f64 / secs.max(1e-9),
        history.summary(),
        inbox.summary()
    );
    Ok(Reads { report, problems })
}

// ---------------------------------------------------------------------------------------
// The run and its report.

struct PhaseOutcome {
    conns: Vec<Conn>,
    latencies: Latencies,
    pushes: Latencies,
    problems: Problems,
}

async fn gather(handles: Vec<tokio::task::JoinHandle<ConnResult>>) -> anyhow::Result<PhaseOutcome> {
    let mut outcome = PhaseOutcome {
        conns: Vec::new(),
        latencies: Latencies::default(),
        pushes: Latencies::default(),
        problems: Problems::default(),
    };
    for handle in handles {
        let result = handle.await.context("a connection task failed")?;
        outcome.conns.push(result.conn);
        outcome.latencies.extend(result.latencies);
        outcome.pushes.extend(result.pushes);
        outcome.problems.merge(result.problems);
    }
    Ok(outcome)
}

async fn run(args: Args) -> anyhow::Result<String> {
    let deadline_started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (stop, duration_max) = (stop.clone(), args.duration_max);
        tokio::spawn(async move {
            tokio::time::sleep(duration_max).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let in_process = match &args.server {
        Some(_) => None,
        None => Some(InProcess::start().await?),
    };
    let base = match (&args.server, &in_process) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.base.clone(),
        (None, None) => unreachable!("a server is started when none is given"),
    };
    let result = tokio::time::timeout(
        args.duration_max + args.wait_max,
        load(&args, &base, &stop, in_process.as_ref()),
    )
    .await;
    watchdog.abort();
    if let Some(server) = in_process {
        server.stop(args.wait_max).await;
    }
    let mut report = match result {
        Ok(report) => report?,
        Err(_) => bail!("the run did not end within --duration-max + --wait-max"),
    };
    report.push_str(&format!(
        "\ntotal run time {:.1} s",
        deadline_started.elapsed().as_secs_f64()
    ));
    Ok(report)
}

async fn load(
    args: &Args,
    base: &str,
    stop: &Arc<AtomicBool>,
    server: Option<&InProcess>,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let setup = setup(args, base).await?;
    // Memory per WebSocket is the growth from half the connections to all of them: the
    // first ones also reuse memory the allocator kept from setup (logins hash passwords).
    let total = args.users * args.conns_per_user;
    let mut conns = connect(args, &setup, 0..total / 2).await?;
    let rss_half = rss_kib(&args.server_pid);
    conns.extend(connect(args, &setup, total / 2..total).await?);
    let conns_len = conns.len();
    let setup_secs = started.elapsed().as_secs_f64();

    // 1. BASELINE: pings.
    let phase = Phase::new(stop.clone());
    let handles = conns
        .drain(..)
        .enumerate()
        .map(|(i, conn)| {
            tokio::spawn(ping_conn(
                conn,
                share(args.pings, conns_len, i),
                args.window,
                args.wait_max,
                phase.clone(),
            ))
        })
        .collect();
    phase.coordinate(conns_len, args.wait_max).await;
    let pings = gather(handles).await?;
    let pongs = phase.replies.load(Ordering::Relaxed);
    let (ping_secs, pings_per_sec) = phase.rate(pongs, &phase.last_reply_micros);
    let ping_stopped = stop.load(Ordering::Relaxed);

    // 2. SENDS: each connection starts once every generator of a multi-process run is ready
    // (`--go-file`), reading meanwhile (the server closes connections that answer no pings).
    if let Some(go) = &args.go_file {
        eprintln!(
            "loadgen: {conns_len} WebSockets open; sends start when {} exists",
            go.display()
        );
    }
    let recipients: Arc<HashMap<ConvId, u64>> = Arc::new(
        setup
            .members_of
            .iter()
            .map(|(&conv, &members)| (conv, (members * args.conns_per_user) as u64 - 1))
            .collect(),
    );
    let store_before = server.map(|s| (s.kv.txs_committed(), s.kv.batches_committed()));
    let senders = args.senders.unwrap_or(conns_len).min(conns_len);
    let phase = Phase::new(stop.clone());
    let handles = pings
        .conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let rank = sender_rank(i, senders, conns_len);
            let quota = rank.map_or(0, |k| share(args.messages, senders, k));
            let plan = SendPlan {
                run: setup.run.clone(),
                quota,
                convs: setup.convs_of[conn.user].clone(),
                recipients: recipients.clone(),
                body_bytes: args.body_bytes,
                // Senders start spread over one interval, not all at once.
                pace: args.send_rate.map(|rate| {
                    let every = Duration::from_secs_f64(senders as f64 / rate);
                    (
                        every,
                        every.mul_f64(rank.unwrap_or(0) as f64 / senders.max(1) as f64),
                    )
                }),
                go_file: args.go_file.clone(),
            };
            tokio::spawn(send_conn(
                conn,
                plan,
                args.window,
                args.wait_max,
                phase.clone(),
            ))
        })
        .collect();
    phase.coordinate(conns_len, args.wait_max).await;
    let sends = gather(handles).await?;
    let store_after = server.map(|s| (s.kv.txs_committed(), s.kv.batches_committed()));
    let acked = phase.replies.load(Ordering::Relaxed);
    let failed = phase.failed.load(Ordering::Relaxed);
    let retried = phase.retried.load(Ordering::Relaxed);
    let delivered = phase.delivered.load(Ordering::Relaxed);
    let expected = phase.deliveries_expected.load(Ordering::Relaxed);
    let (send_secs, sends_per_sec) = phase.rate(acked, &phase.last_reply_micros);
    let (push_secs, pushes_per_sec) = phase.rate(delivered, &phase.last_push_micros);
    let send_stopped = stop.load(Ordering::Relaxed);

    // 3. HOLD: every WebSocket open and quiet, then the server's memory.
    if !args.hold.is_zero() && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(args.hold).await;
    }
    let rss_held = rss_kib(&args.server_pid);

    for conn in sends.conns {
        let mut sender = conn.sender;
        let _ = sender.close().await;
    }

    // 4. READS.
    let reads = if args.readers > 0 && !stop.load(Ordering::Relaxed) {
        Some(read_phase(args, base, &setup, stop).await?)
    } else {
        None
    };

    // The report.
    let directs = setup.convs.iter().filter(|c| c.members.len() == 2).count();
    let groups = setup.convs.len() - directs;
    let mut out = String::new();
    let target = match server {
        Some(_) => {
            "in-process chat::serve::run over RedbKv (tempdir), TESTING password cost".to_string()
        }
        None => base.to_string(),
    };
    out.push_str(&format!("loadgen: server {target}\n"));
    out.push_str(&format!(
        "  preset {}; users {} x {} conns = {} WebSockets, {senders} sending; convs {} ({} direct, {} groups of <= {}); window {}/conn; body {} B; cores {}\n",
        args.preset.map_or("none".to_string(), |p| format!("{p:?}")),
        args.users,
        args.conns_per_user,
        conns_len,
        setup.convs.len(),
        directs,
        groups,
        args.group_size,
        args.window,
        args.body_bytes,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    ));
    out.push_str(&format!(
        "  setup (register, login, create, connect) {setup_secs:.1} s\n"
    ));
    out.push_str(&format!(
        "BASELINE pings : {pongs}/{} round trips in {ping_secs:.2} s = {pings_per_sec:.0}/s; rtt {}{}\n",
        args.pings,
        pings.latencies.summary(),
        if ping_stopped { " [STOPPED at --duration-max]" } else { "" }
    ));
    out.push_str(&format!(
        "SENDS          : {acked}/{} acked ({failed} refused, {retried} resent) in {send_secs:.2} s = {sends_per_sec:.0}/s; ack {}{}\n",
        args.messages,
        sends.latencies.summary(),
        if send_stopped { " [STOPPED at --duration-max]" } else { "" }
    ));
    out.push_str(&format!(
        "PUSHES         : {delivered}/{expected} delivered in {push_secs:.2} s = {pushes_per_sec:.0}/s; end-to-end {}\n",
        sends.pushes.summary()
    ));
    let ratio = if pings_per_sec > 0.0 {
        sends_per_sec / pings_per_sec
    } else {
        0.0
    };
    out.push_str(&format!(
        "RATIO          : sends/s / pings/s = {ratio:.3}\n"
    ));
    if let (Some((txs0, batches0)), Some((txs1, batches1))) = (store_before, store_after) {
        let (txs, batches) = (txs1 - txs0, batches1 - batches0);
        out.push_str(&format!(
            "STORE          : {txs} transactions in {batches} fsyncs during sends: {:.1} messages/transaction, {:.1} transactions/fsync\n",
            acked as f64 / txs.max(1) as f64,
            txs as f64 / batches.max(1) as f64
        ));
    }
    if let (false, Some(half), Some(held)) = (args.hold.is_zero(), rss_half, rss_held) {
        let whose = if args.server_pid.is_empty() {
            "generator and in-process server together"
        } else {
            "server"
        };
        let added = conns_len - conns_len / 2;
        out.push_str(&format!(
            "MEMORY         : {whose} RSS {:.1} MiB with {} WebSockets open, {:.1} MiB with {conns_len} after {:?}: {:.1} KiB per WebSocket\n",
            half as f64 / 1024.0,
            conns_len / 2,
            held as f64 / 1024.0,
            args.hold,
            held.saturating_sub(half) as f64 / added.max(1) as f64
        ));
    }
    let mut problems = pings.problems;
    problems.merge(sends.problems);
    if let Some(reads) = reads {
        out.push_str(&reads.report);
        problems.merge(reads.problems);
    }
    if problems.is_empty() {
        out.push_str("problems       : none");
    } else {
        out.push_str(&format!(
            "problems       : {} unexpected frames, {} unmatched errors, {} closed, {} stalled; first: {}",
            problems.unexpected_frames,
            problems.error_frames,
            problems.closed,
            problems.stalls,
            problems.first.as_deref().unwrap_or("-")
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn shares_add_up() {
        assert_eq!((0..7).map(|i| share(50_000, 7, i)).sum::<u64>(), 50_000);
        assert_eq!(share(3, 5, 4), 0);
    }

    #[test]
    fn bodies_carry_their_stamp() {
        let b = body(1_767_139_200_123_456, 200);
        assert_eq!(b.len(), 200);
        assert_eq!(
            b[..BODY_STAMP_BYTES - 1].parse::<u64>(),
            Ok(1_767_139_200_123_456)
        );
    }

    #[test]
    fn each_sender_is_one_connection_spread_evenly() {
        for (senders, conns) in [
            (0, 5),
            (1, 1),
            (1, 7),
            (4, 1000),
            (200, 1000),
            (7, 10),
            (999, 1000),
            (1000, 1000),
        ] {
            let ranks: Vec<usize> = (0..conns)
                .filter_map(|i| sender_rank(i, senders, conns))
                .collect();
            assert_eq!(
                ranks,
                (0..senders).collect::<Vec<_>>(),
                "{senders} of {conns}"
            );
            for k in 0..senders {
                assert_eq!(
                    sender_rank(k * conns / senders, senders, conns),
                    Some(k),
                    "{senders} of {conns}"
                );
            }
        }
    }

    #[test]
    fn presets_fill_flags_the_command_line_does_not_give() {
        let args =
            Args::parse_with_preset(["loadgen", "--preset", "one-to-one", "--messages", "7"])
                .unwrap();
        assert_eq!(
            (args.users, args.convs, args.directs_per_user, args.senders),
            (1000, Convs::Direct, 20, Some(200))
        );
        assert_eq!(args.messages, 7);
        assert!(validate(&args).is_ok());
        let args = Args::parse_with_preset(["loadgen", "--preset", "fanout", "--members", "1000"])
            .unwrap();
        assert_eq!(
            (args.users, args.group_size, args.senders),
            (1000, 250, Some(4))
        );
        assert!(validate(&args).is_ok());
        let args = Args::parse_with_preset([
            "loadgen",
            "--preset",
            "idle",
            "--connections",
            "3000",
            "--server",
            "http://127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(
            (args.users, args.messages, args.pings, args.hold),
            (3000, 0, 3000, Duration::from_secs(10))
        );
        assert!(validate(&args).is_ok());
        let args = Args::parse_with_preset(["loadgen", "--preset", "reads"]).unwrap();
        assert_eq!((args.messages, args.readers), (1_000_000, 64));
        // Without a preset nothing changes.
        assert_eq!(Args::parse_with_preset(["loadgen"]).unwrap().users, 50);
        // A room over the member limit needs the fan-out preset.
        assert!(
            validate(
                &Args::parse_with_preset(["loadgen", "--convs", "group", "--group-size", "1000"])
                    .unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn only_loopback_servers() {
        let mut args = Args::parse_with_preset(["loadgen"]).unwrap();
        assert!(validate(&args).is_ok());
        args.server = Some("http://10.0.0.1:8080".into());
        assert!(validate(&args).is_err());
        args.server = Some("http://127.0.0.1:8080".into());
        assert!(validate(&args).is_ok());
    }
}
