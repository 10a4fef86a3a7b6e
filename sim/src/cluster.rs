//! A simulated chat cluster and the tester's vocabulary.
//!
//! Every server node runs its production entry point unchanged ([`chat::roles`]): app
//! servers over the simulated FoundationDB ([`crate::fdb`]) and the Redis model
//! ([`crate::resp`]) through the real `redis` crate, connection servers, gateways. The
//! tester verbs read as the story of a test: `kill(Node::Conn(1))`, `partition(a, b)`,
//! `isolate(node)`, `heal()`, `flush_registry()`, `latency(range)`.

use crate::fdb::{FaultConfig, SimFdbFaults, SimFdbKv, SimFdbServer};
use crate::resp::{RespServer, RespState};
use crate::trace::Trace;
use chat::roles::{AppOptions, Common, ConnOptions, GatewayOptions};
use chat_app::AppConfig;
use chat_auth::PasswordCost;
use chat_conn::ConnConfig;
use chat_gateway::http::HttpConfig;
use chat_gateway::ratelimit::RateConfig;
use chat_registry::redis::{RedisConfig, RedisRegistry};
use chat_store::MemoryKv;
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

/// How many of each server.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub apps: usize,
    pub conns: usize,
    pub gateways: usize,
    /// Registry refresh interval of connection servers.
    pub registry_refresh: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { apps: 2, conns: 3, gateways: 2, registry_refresh: Duration::from_secs(2) }
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
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Fdb => write!(f, "fdb"),
            Node::Redis => write!(f, "redis"),
            Node::App(i) => write!(f, "app{i}"),
            Node::Conn(i) => write!(f, "conn{i}"),
            Node::Gateway(i) => write!(f, "gateway{i}"),
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

fn common() -> Common {
    let mut common = Common::new(SECRET.to_vec());
    // Heartbeats and timeouts as in production; simulated time makes them cheap.
    common.link.request_timeout = Duration::from_secs(5);
    common
}

fn registry(config: &ClusterConfig) -> Arc<RedisRegistry> {
    let mut redis = RedisConfig::new(redis_addr().to_string());
    redis.entry_ttl = config.registry_refresh * 3;
    Arc::new(RedisRegistry::new(redis))
}

impl Cluster {
    /// Starts every node; returns once they are created (they finish starting on their own).
    pub fn start(config: ClusterConfig, trace: Trace) -> Cluster {
        let handle = Handle::current();
        let fdb_data = MemoryKv::new();
        let fdb_faults = SimFdbFaults::new(FaultConfig::QUIET);
        let redis_state = Arc::new(RespState::new());
        let mut nodes = Vec::new();

        let fdb = SimFdbServer::new(fdb_data.clone(), fdb_faults.clone()).start_node("fdb", fdb_addr().ip(), FDB_PORT);
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
                        let options = AppOptions { common: common(), password_cost: PasswordCost::TESTING, app: AppConfig::default(), link_connections_max: 1024 };
                        let kv = Arc::new(SimFdbKv::new(fdb_addr()));
                        if let Err(err) = chat::roles::run_app(bind(app_addr(i)).await, kv, registry(&cfg), options, std::future::pending()).await {
                            panic!("app{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::App(i), node));
        }

        let apps: Vec<SocketAddr> = (0..config.apps).map(app_addr).collect();
        for i in 0..config.conns {
            let (cfg, apps) = (config.clone(), apps.clone());
            let node = handle
                .create_node()
                .name(format!("conn{i}"))
                .ip(conn_addr(i).ip())
                .init(move || {
                    let (cfg, apps) = (cfg.clone(), apps.clone());
                    async move {
                        let conn = ConnConfig { registry_refresh_interval: cfg.registry_refresh, ..ConnConfig::default() };
                        let options = ConnOptions { common: common(), server_id: i as u32 + 1, apps, conn, http: HttpConfig::default() };
                        if let Err(err) = chat::roles::run_conn(bind(conn_addr(i)).await, registry(&cfg), options, std::future::pending()).await {
                            panic!("conn{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::Conn(i), node));
        }

        let conns: Vec<SocketAddr> = (0..config.conns).map(conn_addr).collect();
        for i in 0..config.gateways {
            let (apps, conns) = (apps.clone(), conns.clone());
            let node = handle
                .create_node()
                .name(format!("gateway{i}"))
                .ip(gateway_addr(i).ip())
                .init(move || {
                    let (apps, conns) = (apps.clone(), conns.clone());
                    async move {
                        let options = GatewayOptions {
                            common: common(),
                            apps,
                            conns,
                            // Every simulated client has its own address; limits stay on, generous.
                            rates: RateConfig::default(),
                            http: HttpConfig::default(),
                            health_check_interval: Duration::from_millis(500),
                        };
                        if let Err(err) = chat::roles::run_gateway(bind(gateway_addr(i)).await, options, std::future::pending()).await {
                            panic!("gateway{i} failed: {err:#}");
                        }
                    }
                })
                .build();
            nodes.push((Node::Gateway(i), node));
        }
        Cluster { handle, config, trace, fdb_data, fdb_faults, redis_state, nodes }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn gateway_urls(&self) -> Vec<String> {
        (0..self.config.gateways).map(|i| format!("http://{}", gateway_addr(i))).collect()
    }

    pub fn servers(&self) -> Vec<Node> {
        self.nodes.iter().map(|(n, _)| *n).collect()
    }

    fn id(&self, node: Node) -> madsim::task::NodeId {
        self.nodes.iter().find(|(n, _)| *n == node).map(|(_, h)| h.id()).unwrap_or_else(|| panic!("no node {node}"))
    }

    /// Crashes `node`: its tasks and sockets are gone at once.
    pub fn kill(&self, node: Node) {
        self.trace.record(format!("fault kill {node}"));
        self.handle.kill(self.id(node));
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
        self.trace.record(format!("fault latency {}..{} ms", range.start.as_millis(), range.end.as_millis()));
        madsim::net::NetSim::current().update_config(|c| c.send_latency = range);
    }

    /// Store faults (conflicts, unknown results, latency) on or off.
    pub fn store_faults(&self, on: bool) {
        self.trace.record(format!("fault store_faults {on}"));
        if on { self.fdb_faults.set(FaultConfig::NOISY) } else { self.fdb_faults.quiet() }
    }
}
