//! The cluster roles: `chat app`, `chat conn` and `chat gateway`, each a process.
//!
//! Each role has an options struct and a `run` function that takes already-bound listeners
//! and its seams (store, registry): the binary calls them with real sockets, RedbKv and
//! Redis; the simulator calls the very same functions on simulated nodes.

use chat_app::{AppConfig, AppServer};
use chat_auth::{PasswordCost, Passwords, Tokens};
use chat_conn::hub::ConnHub;
use chat_conn::{ConnConfig, ConnServer};
use chat_gateway::http::{HttpConfig, Listener};
use chat_gateway::placement::Placement;
use chat_gateway::ratelimit::{RateConfig, RateLimits};
use chat_gateway::{Gateway, WsBackend};
use chat_link::frame::Peer;
use chat_link::{AppPool, LinkClient, LinkConfig, LinkRoutes};
use chat_proto::ServerId;
use chat_registry::Registry;
use chat_store::{ChatStore, Kv};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Settings every role shares.
#[derive(Clone)]
pub struct Common {
    /// Must be the same on every gateway, connection server and app server of a cluster.
    pub token_secret: Vec<u8>,
    pub token_ttl: Duration,
    pub link: LinkConfig,
}

impl Common {
    pub fn new(token_secret: Vec<u8>) -> Common {
        Common {
            token_secret,
            token_ttl: Tokens::TTL_DEFAULT,
            link: LinkConfig::default(),
        }
    }

    fn tokens(&self) -> Tokens {
        Tokens::new(&self.token_secret, self.token_ttl)
    }
}

/// An app server: serves the link on `listener`, over `kv`, with `registry`.
#[derive(Clone)]
pub struct AppOptions {
    pub common: Common,
    pub password_cost: PasswordCost,
    pub app: AppConfig,
    /// Link connections (connection servers and gateways) served at once.
    pub link_connections_max: usize,
}

pub async fn run_app(
    listener: TcpListener,
    kv: Arc<dyn Kv>,
    registry: Arc<dyn Registry>,
    options: AppOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let passwords = Passwords::new(options.password_cost)?;
    let routes = LinkRoutes::new();
    let app = AppServer::new(
        ChatStore::new(kv),
        registry,
        routes.clone(),
        passwords,
        options.common.tokens(),
        options.app,
    );
    tokio::select! {
        _ = chat_link::server::serve(listener, app, routes, options.common.link.clone(), options.link_connections_max) => {}
        _ = shutdown => {}
    }
    Ok(())
}

/// A connection server: WebSockets on `listener`, linked to every app server in `apps`.
#[derive(Clone)]
pub struct ConnOptions {
    pub common: Common,
    pub server_id: ServerId,
    pub apps: Vec<SocketAddr>,
    pub conn: ConnConfig,
    pub http: HttpConfig,
}

pub async fn run_conn(
    listener: impl Listener,
    registry: Arc<dyn Registry>,
    options: ConnOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.apps.is_empty(),
        "a connection server needs at least one app server address"
    );
    let hub = ConnHub::new(options.server_id);
    let links = options
        .apps
        .iter()
        .map(|addr| {
            LinkClient::new(
                *addr,
                Peer::Conn(options.server_id),
                Some(hub.clone()),
                options.common.link.clone(),
            )
        })
        .collect();
    let app = Arc::new(AppPool::new(links));
    let conn = ConnServer::new(hub, app.clone(), registry, options.conn);
    let heartbeat = tokio::spawn(conn.clone().run_heartbeat());
    // Rate limits are the gateway's job; here the token is checked again, since this
    // listener is reachable by whoever can reach the gateway's network.
    let gateway = Gateway::new(
        app,
        options.common.tokens(),
        WsBackend::Local(conn),
        Arc::new(RateLimits::new(RateConfig::unlimited())),
    );
    chat_gateway::http::serve(listener, gateway.websocket_router(), options.http, shutdown).await;
    heartbeat.abort();
    Ok(())
}

/// A gateway: REST to app servers over the link, WebSockets spliced to connection servers.
#[derive(Clone)]
pub struct GatewayOptions {
    pub common: Common,
    pub apps: Vec<SocketAddr>,
    pub conns: Vec<SocketAddr>,
    pub rates: RateConfig,
    pub http: HttpConfig,
    /// How often connection servers are checked.
    pub health_check_interval: Duration,
}

pub async fn run_gateway(
    listener: impl Listener,
    options: GatewayOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !options.apps.is_empty(),
        "a gateway needs at least one app server address"
    );
    anyhow::ensure!(
        !options.conns.is_empty(),
        "a gateway needs at least one connection server address"
    );
    let links = options
        .apps
        .iter()
        .map(|addr| LinkClient::new(*addr, Peer::Gateway, None, options.common.link.clone()))
        .collect();
    let app = Arc::new(AppPool::new(links));
    let placement = Arc::new(Placement::new(
        options.conns.clone(),
        options.health_check_interval,
        options.common.link.connect_timeout,
        options.http.write_timeout,
    ));
    let health = tokio::spawn(placement.clone().run_health_checks());
    let limits = Arc::new(RateLimits::new(options.rates));
    let cleanup = tokio::spawn(limits.clone().run_cleanup(Duration::from_secs(60)));
    let gateway = Gateway::new(
        app,
        options.common.tokens(),
        WsBackend::Splice(placement),
        limits,
    );
    chat_gateway::http::serve(listener, gateway.router(), options.http, shutdown).await;
    health.abort();
    cleanup.abort();
    Ok(())
}
