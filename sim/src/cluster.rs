//! A simulated chat cluster and the tester's vocabulary.
//!
//! Every server node runs its production entry point unchanged ([`chat::roles`]): app
//! servers over the simulated FoundationDB ([`crate::fdb`]) and the Redis model
//! ([`crate::resp`]) through the real `redis` crate, connection servers, gateways. The
//! tester verbs read as the story of a test: `kill(Node::Conn(1))`, `partition(a, b)`,
//! `isolate(node)`, `heal()`, `flush_registry()`, `latency(range)`.

use crate::disk::{DiskFaults, SimDisk};
use crate::fdb::{FaultConfig, SimFdbFaults, SimFdbKv, SimFdbServer};
use crate::resp::{RespServer, RespState};
use crate::sockets::{ShapedListener, Stalls};
use crate::trace::Trace;
use chat::roles::{AppOptions, Common, ConnOptions, GatewayOptions};
use chat_app::AppConfig;
use chat_auth::PasswordCost;
use chat_conn::ConnConfig;
use chat_gateway::SpliceConfig;
use chat_link::LinkConfig;
use chat_net::http::HttpConfig;
use chat_registry::redis::{RedisConfig, RedisRegistry};
use chat_store::{MemoryKv, RedbKv, RedbOptions};
use madsim::runtime::{Handle, NodeHandle};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub const SECRET: &[u8] = b"simulated-cluster-token-secret-0123456789";
const FDB_PORT: u16 = 4500;
const REDIS_PORT: u16 = 6379;
const APP_PORT: u16 = 7100;
const CONN_PORT: u16 = 7200;
const GATEWAY_PORT: u16 = 8080;

/// How many of each server, and their knobs.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub apps: usize,
    pub conns: usize,
    pub gateways: usize,
    pub knobs: Knobs,
    /// Instead of the cluster: one node running the `chat serve` wiring (gateway, connection
    /// server and app server in one process) over `RedbKv` on a simulated disk.
    pub single: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            apps: 2,
            conns: 3,
            gateways: 2,
            knobs: Knobs::default(),
            single: false,
        }
    }
}

impl ClusterConfig {
    /// The `chat serve` deployment: one node, the embedded store on a simulated disk.
    pub fn single() -> ClusterConfig {
        ClusterConfig {
            apps: 0,
            conns: 0,
            gateways: 0,
            knobs: Knobs::default(),
            single: true,
        }
    }

    /// Every server node.
    pub fn servers(&self) -> Vec<Node> {
        if self.single {
            return vec![Node::Serve];
        }
        let mut servers = vec![Node::Fdb, Node::Redis];
        servers.extend((0..self.apps).map(Node::App));
        servers.extend((0..self.conns).map(Node::Conn));
        servers.extend((0..self.gateways).map(Node::Gateway));
        servers
    }
}

/// The servers' tunables, drawn per seed the way FoundationDB's BUGGIFY draws knobs: small
/// queues, batches of one, short timeouts and sync pages of a few messages make the rare
/// paths (full queues, multi-page syncs, timeouts) common.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub app: AppConfig,
    pub conn: ConnConfig,
    pub link: LinkConfig,
    /// The registry entry TTL is three refresh intervals.
    pub registry_refresh: Duration,
    /// The HTTP listeners of gateways, connection servers and `chat serve`.
    pub http: HttpConfig,
    /// The gateways' spliced WebSockets.
    pub splice: SpliceConfig,
}

impl Default for Knobs {
    fn default() -> Self {
        let mut link = LinkConfig::default();
        link.request_timeout = Duration::from_secs(5);
        let registry_refresh = Duration::from_secs(2);
        Knobs {
            app: AppConfig::default(),
            conn: ConnConfig {
                registry_refresh_interval: registry_refresh,
                ..ConnConfig::default()
            },
            link,
            registry_refresh,
            http: HttpConfig::default(),
            splice: SpliceConfig::default(),
        }
    }
}

impl Knobs {
    /// The knobs of `seed`, from a random stream of their own.
    pub fn draw(seed: u64) -> Knobs {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x6b6e_6f62_735f_7365);
        let mut knobs = Knobs::default();
        let ms = |rng: &mut rand::rngs::StdRng, range: std::ops::Range<u64>| {
            Duration::from_millis(rng.random_range(range))
        };
        // Not below 8: a conversation's sequencer commits one batch at a time (about 15 a
        // second at the simulated latencies), so with batches of 1 or 2 the hot group's
        // ~22 messages a second exceed what it can take, and the latency checkers report
        // overload, not a bug (seeds 14 and 24 did, until this bound).
        knobs.app.batch_messages_max =
            *[8, 16, 64, 128].get(rng.random_range(0..4)).unwrap_or(&128);
        knobs.app.conv_queue_len_max = rng.random_range(16..1024);
        knobs.app.sequencer_idle_timeout = ms(&mut rng, 500..30_000);
        knobs.conn.outbound_queue_len_max = rng.random_range(64..1024);
        knobs.conn.sends_in_flight_max = rng.random_range(2..256);
        knobs.conn.sync_held_messages_max = rng.random_range(256..4096);
        knobs.conn.sync_page_messages_max = rng.random_range(3..=10);
        knobs.conn.heartbeat_interval = ms(&mut rng, 2_000..20_000);
        knobs.conn.request_timeout = ms(&mut rng, 5_000..10_000);
        knobs.registry_refresh = ms(&mut rng, 1_000..3_000);
        knobs.conn.registry_refresh_interval = knobs.registry_refresh;
        // The failover checker counts on a dead app server's link being noticed within 4 s.
        knobs.link.heartbeat_interval = ms(&mut rng, 500..1_000);
        knobs.link.idle_timeout = knobs.link.heartbeat_interval * rng.random_range(3..=4);
        knobs.link.outbound_queue_len_max = rng.random_range(256..4096);
        knobs.link.request_timeout = ms(&mut rng, 3_000..10_000);
        // Drawn last, so the knobs above stay what each seed made them before these existed.
        knobs.conn.write_timeout = ms(&mut rng, 1_000..10_000);
        knobs.splice.write_timeout = ms(&mut rng, 1_000..10_000);
        // Three or four pings without an answer: one late pong must not close a connection.
        knobs.conn.idle_timeout = knobs.conn.heartbeat_interval * rng.random_range(3..=4);
        knobs
    }
}

impl std::fmt::Display for Knobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "knobs: batch {} conv-queue {} seq-idle {:?} out-queue {} sends-in-flight {} held {} sync-page {} conn-heartbeat {:?} conn-idle {:?} conn-write {:?} splice-write {:?} conn-timeout {:?} refresh {:?} link-heartbeat {:?} link-idle {:?} link-queue {} link-timeout {:?}",
            self.app.batch_messages_max,
            self.app.conv_queue_len_max,
            self.app.sequencer_idle_timeout,
            self.conn.outbound_queue_len_max,
            self.conn.sends_in_flight_max,
            self.conn.sync_held_messages_max,
            self.conn.sync_page_messages_max,
            self.conn.heartbeat_interval,
            self.conn.idle_timeout,
            self.conn.write_timeout,
            self.splice.write_timeout,
            self.conn.request_timeout,
            self.registry_refresh,
            self.link.heartbeat_interval,
            self.link.idle_timeout,
            self.link.outbound_queue_len_max,
            self.link.request_timeout
        )
    }
}

/// A server node of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Fdb,
    Redis,
    App(usize),
    Conn(usize),
    Gateway(usize),
    /// The single node of the `chat serve` deployment; killing it is a power loss.
    Serve,
}

impl Node {
    /// Reads `Display`'s form: `fdb`, `redis`, `app0`, `conn2`, `gateway1`.
    pub fn parse(name: &str) -> Option<Node> {
        match name {
            "fdb" => return Some(Node::Fdb),
            "redis" => return Some(Node::Redis),
            "serve" => return Some(Node::Serve),
            _ => {}
        }
        let split = name.find(|c: char| c.is_ascii_digit())?;
        let (kind, index) = name.split_at(split);
        let index = index.parse().ok()?;
        match kind {
            "app" => Some(Node::App(index)),
            "conn" => Some(Node::Conn(index)),
            "gateway" => Some(Node::Gateway(index)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Fdb => write!(f, "fdb"),
            Node::Redis => write!(f, "redis"),
            Node::App(i) => write!(f, "app{i}"),
            Node::Conn(i) => write!(f, "conn{i}"),
            Node::Gateway(i) => write!(f, "gateway{i}"),
            Node::Serve => write!(f, "serve"),
        }
    }
}

pub struct Cluster {
    handle: Handle,
    config: ClusterConfig,
    trace: Trace,
    /// The simulated FoundationDB's data and fault switches; they outlive its node.
    pub fdb_data: MemoryKv,
    pub fdb_faults: SimFdbFaults,
    /// The Redis model's data; a restart of its node keeps it unless flushed.
    pub redis_state: Arc<RespState>,
    /// The single node's disk (unused by the cluster); it outlives the node's restarts.
    pub disk: SimDisk,
    /// Clients that stopped reading, honoured by every listener clients connect to.
    pub stalls: Arc<Stalls>,
    nodes: Vec<(Node, NodeHandle)>,
}

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
}

pub fn fdb_addr() -> SocketAddr {
    SocketAddr::new(ip(0, 2), FDB_PORT)
}

pub fn redis_addr() -> SocketAddr {
    SocketAddr::new(ip(0, 3), REDIS_PORT)
}

pub fn app_addr(i: usize) -> SocketAddr {
    SocketAddr::new(ip(1, i as u8 + 1), APP_PORT)
}

pub fn conn_addr(i: usize) -> SocketAddr {
    SocketAddr::new(ip(2, i as u8 + 1), CONN_PORT)
}

pub fn gateway_addr(i: usize) -> SocketAddr {
    SocketAddr::new(ip(3, i as u8 + 1), GATEWAY_PORT)
}

pub fn serve_addr() -> SocketAddr {
    SocketAddr::new(ip(4, 1), GATEWAY_PORT)
}

/// The address of client `i`'s node.
pub fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 1, (i / 200) as u8, (i % 200) as u8 + 1))
}

/// Binds the node's port, retrying while a killed incarnation of the node still holds it.
async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
    let mut backoff = Duration::from_millis(10);
    loop {
        match tokio::net::TcpListener::bind(any).await {
            Ok(listener) => return listener,
            Err(err) => {
                tracing::debug!(%addr, %err, "bind failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn common(knobs: &Knobs) -> Common {
    let mut common = Common::new(SECRET.to_vec());
    common.link = knobs.link.clone();
    common
}

fn registry(config: &ClusterConfig) -> Arc<RedisRegistry> {
    let mut redis = RedisConfig::new(redis_addr().to_string());
    redis.entry_ttl = config.knobs.registry_refresh * 3;
    Arc::new(RedisRegistry::new(redis))
}

impl Cluster {
    /// Starts every node; returns once they are created (they finish starting on their own).
    pub fn start(config: ClusterConfig, trace: Trace) -> Cluster {
        let handle = Handle::current();
        let disk = SimDisk::new();
        let stalls = Arc::new(Stalls::default());
        if config.single {
            let (cfg, disk_of_node, stalls_of_node) =
                (config.clone(), disk.clone(), stalls.clone());
            let node = handle
                .create_node()
                .name("serve")
                .ip(serve_addr().ip())
                .init(move || {
                    let (cfg, disk, stalls) = (cfg.clone(), disk_of_node.clone(), stalls_of_node.clone());
                    async move {
                        // What `chat serve` does, over the simulated disk instead of a file. A
                        // store that cannot open (its disk still failing) exits the process;
                        // its supervisor starts it again a little later.
                        let mut backoff = Duration::from_millis(100);
                        let kv = loop {
                            match RedbKv::open_with_backend(disk.clone(), RedbOptions::default()) {
                                Ok(kv) => break Arc::new(kv),
                                Err(err) => {
                                    tracing::warn!(%err, "serve: the store did not open; starting again");
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(2));
                                }
                            }
                        };
                        let mut options = chat::serve::Options::new(SECRET.to_vec());
                        options.app.password_cost = PasswordCost::TESTING;
                        options.app.app = cfg.knobs.app.clone();
                        options.conn = cfg.knobs.conn.clone();
                        options.http = cfg.knobs.http.clone();
                        let listener = ShapedListener::new(bind(serve_addr()).await, stalls);
                        if let Err(err) = chat::serve::run(listener, kv, options, std::future::pending()).await {
                            panic!("serve failed: {err:#}");
                        }
                    }
                })
                .build();
            let nodes = vec![(Node::Serve, node)];
            return Cluster {
                handle,
                config,
                trace,
                fdb_data: MemoryKv::new(),
                fdb_faults: SimFdbFaults::new(FaultConfig::QUIET),
                redis_state: Arc::new(RespState::new()),
                disk,
                stalls,
                nodes,
            };
        }
        let fdb_data = MemoryKv::new();
        let fdb_faults = SimFdbFaults::new(FaultConfig::QUIET);
        let redis_state = Arc::new(RespState::new());
        let mut nodes = Vec::new();

        let fdb = SimFdbServer::new(fdb_data.clone(), fdb_faults.clone())
            .with_clients(config.apps)
            .start_node("fdb", fdb_addr().ip(), FDB_PORT);
        nodes.push((Node::Fdb, fdb));

        let state = redis_state.clone();
        let redis = handle
            .create_node()
            .name("redis")
            .ip(redis_addr().ip())
            .init(move || {
                let state = state.clone();
                async move { RespServer::serve(bind(redis_addr()).await, state).await }
            })
            .build();
        nodes.push((Node::Redis, redis));

        for i in 0..config.apps {
            let cfg = config.clone();
            let node = handle
                .create_node()
                .name(format!("app{i}"))
                .ip(app_addr(i).ip())
                .init(move || {
                    let cfg = cfg.clone();
                    async move {
                        let options = AppOptions {
                            password_cost: PasswordCost::TESTING,
                            app: cfg.knobs.app.clone(),
                            ..AppOptions::default()
                        };
                        let kv = Arc::new(SimFdbKv::new(fdb_addr()));
                        if let Err(err) = chat::roles::run_app(
                            bind(app_addr(i)).await,
                            kv,
                            registry(&cfg),
                            common(&cfg.knobs),
                            options,
                            std::future::pending(),
                        )
                        .await
                        {
                            panic!("app{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::App(i), node));
        }

        let apps: Vec<SocketAddr> = (0..config.apps).map(app_addr).collect();
        for i in 0..config.conns {
            let (cfg, apps, stalls) = (config.clone(), apps.clone(), stalls.clone());
            let node = handle
                .create_node()
                .name(format!("conn{i}"))
                .ip(conn_addr(i).ip())
                .init(move || {
                    let (cfg, apps, stalls) = (cfg.clone(), apps.clone(), stalls.clone());
                    async move {
                        let options = ConnOptions {
                            server_id: i as u32 + 1,
                            apps,
                            conn: cfg.knobs.conn.clone(),
                            ..ConnOptions::default()
                        };
                        let listener = ShapedListener::new(bind(conn_addr(i)).await, stalls);
                        if let Err(err) = chat::roles::run_conn(
                            listener,
                            registry(&cfg),
                            common(&cfg.knobs),
                            options,
                            std::future::pending(),
                        )
                        .await
                        {
                            panic!("conn{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::Conn(i), node));
        }

        let conns: Vec<SocketAddr> = (0..config.conns).map(conn_addr).collect();
        for i in 0..config.gateways {
            let (cfg, apps, conns, stalls) =
                (config.clone(), apps.clone(), conns.clone(), stalls.clone());
            let node = handle
                .create_node()
                .name(format!("gateway{i}"))
                .ip(gateway_addr(i).ip())
                .init(move || {
                    let (cfg, apps, conns, stalls) =
                        (cfg.clone(), apps.clone(), conns.clone(), stalls.clone());
                    async move {
                        // Every simulated client has its own address; limits stay on, generous,
                        // but the setup registers and logs in every user from one address.
                        let options = GatewayOptions {
                            apps,
                            conns,
                            rates: chat_gateway::ratelimit::RateConfig {
                                credentials: None,
                                ..Default::default()
                            },
                            http: cfg.knobs.http.clone(),
                            splice: cfg.knobs.splice.clone(),
                            ..GatewayOptions::default()
                        };
                        let listener = ShapedListener::new(bind(gateway_addr(i)).await, stalls);
                        if let Err(err) = chat::roles::run_gateway(
                            listener,
                            common(&cfg.knobs),
                            options,
                            std::future::pending(),
                        )
                        .await
                        {
                            panic!("gateway{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::Gateway(i), node));
        }
        Cluster {
            handle,
            config,
            trace,
            fdb_data,
            fdb_faults,
            redis_state,
            disk,
            stalls,
            nodes,
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Where clients go for REST (and WebSockets through a gateway).
    pub fn gateway_urls(&self) -> Vec<String> {
        if self.config.single {
            return vec![format!("http://{}", serve_addr())];
        }
        (0..self.config.gateways)
            .map(|i| format!("http://{}", gateway_addr(i)))
            .collect()
    }

    pub fn servers(&self) -> Vec<Node> {
        self.nodes.iter().map(|(n, _)| *n).collect()
    }

    fn id(&self, node: Node) -> madsim::task::NodeId {
        self.nodes
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, h)| h.id())
            .unwrap_or_else(|| panic!("no node {node}"))
    }

    /// Crashes `node`: its tasks and sockets are gone at once. For the single node it is a
    /// power loss too: what its disk had not synced is lost (all, a prefix, or a torn page).
    pub fn kill(&self, node: Node) {
        self.trace.record(format!("fault kill {node}"));
        self.handle.kill(self.id(node));
        if node == Node::Serve {
            let mode = self.disk.draw_power_loss(&mut rand::rng());
            self.trace.record(format!("fault power loss {mode:?}"));
            self.disk.power_loss(mode);
        }
    }

    /// The single node's disk fails its writes and syncs as `faults` says (until cleared).
    pub fn disk_faults(&self, faults: DiskFaults) {
        self.trace.record(format!("fault disk {faults:?}"));
        self.disk.set_faults(faults);
    }

    /// Starts `node` again from its production entry point (a killed node stays down until
    /// then). Redis has no persistence: it comes back empty. The store is durable: it keeps
    /// every commit.
    pub fn restart(&self, node: Node) {
        self.trace.record(format!("fault restart {node}"));
        if node == Node::Redis {
            self.redis_state.flush_all();
        }
        // madsim's `restart` does not close the old incarnation's sockets (only `kill`
        // does): a listener left open would hold the port and reset every new connection.
        self.handle.kill(self.id(node));
        self.handle.restart(self.id(node));
    }

    /// Cuts the network between `a` and `b` both ways. Like a real partition, it raises no
    /// error: data is held, and only timeouts and heartbeats notice.
    pub fn partition(&self, a: Node, b: Node) {
        self.trace.record(format!("fault partition {a} {b}"));
        let net = madsim::net::NetSim::current();
        net.clog_link(self.id(a), self.id(b));
        net.clog_link(self.id(b), self.id(a));
    }

    /// Repairs the partition between `a` and `b`.
    pub fn unpartition(&self, a: Node, b: Node) {
        self.trace.record(format!("fault unpartition {a} {b}"));
        let net = madsim::net::NetSim::current();
        net.unclog_link(self.id(a), self.id(b));
        net.unclog_link(self.id(b), self.id(a));
    }

    /// Loses every packet from `a` to `b` (only that way).
    pub fn one_way(&self, a: Node, b: Node) {
        self.trace.record(format!("fault one-way {a} {b}"));
        madsim::net::NetSim::current().clog_link(self.id(a), self.id(b));
    }

    /// Repairs a one-way partition.
    pub fn unone_way(&self, a: Node, b: Node) {
        self.trace.record(format!("fault two-way {a} {b}"));
        madsim::net::NetSim::current().unclog_link(self.id(a), self.id(b));
    }

    /// Stops every task of `node`, keeping its state, until [`Cluster::resume`].
    pub fn pause(&self, node: Node) {
        self.trace.record(format!("fault pause {node}"));
        self.handle.pause(self.id(node));
    }

    pub fn resume(&self, node: Node) {
        self.trace.record(format!("fault resume {node}"));
        self.handle.resume(self.id(node));
    }

    /// Connects an isolated `node` again.
    pub fn rejoin(&self, node: Node) {
        self.trace.record(format!("fault rejoin {node}"));
        madsim::net::NetSim::current().unclog_node(self.id(node));
    }

    /// Cuts `node` off from everyone.
    pub fn isolate(&self, node: Node) {
        self.trace.record(format!("fault isolate {node}"));
        madsim::net::NetSim::current().clog_node(self.id(node));
    }

    /// Repairs every partition and isolation.
    pub fn heal(&self) {
        self.trace.record("fault heal");
        let net = madsim::net::NetSim::current();
        for (_, a) in &self.nodes {
            net.unclog_node(a.id());
            for (_, b) in &self.nodes {
                net.unclog_link(a.id(), b.id());
            }
        }
    }

    /// Redis restarts without persistence: every registry entry is gone.
    pub fn flush_registry(&self) {
        self.trace.record("fault flush_registry");
        self.restart(Node::Redis);
    }

    /// Sets the network's per-packet latency range.
    pub fn latency(&self, range: std::ops::Range<Duration>) {
        self.trace.record(format!(
            "fault latency {}..{} ms",
            range.start.as_millis(),
            range.end.as_millis()
        ));
        madsim::net::NetSim::current().update_config(|c| c.send_latency = range);
    }

    /// Store faults (conflicts, unknown results, latency) on or off.
    pub fn store_faults(&self, on: bool) {
        self.trace.record(format!("fault store_faults {on}"));
        if on {
            self.fdb_faults.set(FaultConfig::NOISY)
        } else {
            self.fdb_faults.quiet()
        }
    }
}
