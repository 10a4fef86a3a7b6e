//! The roles and how each is wired: the one wiring path of every deployment.
//!
//! A cluster runs `chat app`, `chat conn` and `chat gateway`, each a process; `chat serve`
//! runs all three in one. Both are built from the same builders here ([`app_server`],
//! [`conn_server`], [`gateway`]), so a `chat serve` is a cluster minus the network. Each
//! role's `run_*` takes already-bound listeners and its seams (store, registry): the binary
//! calls them with real sockets, the store the operator chose and Redis; the simulator calls
//! the very same functions on simulated nodes.
//!
//! Options have defaults (written once, here and in each crate's config) and a `validate`
//! that refuses values that cannot work together, with a message naming them, before a
//! role binds anything.

use anyhow::ensure;
use chat_app::{AppConfig, AppServer};
use chat_auth::{PasswordCost, Passwords, Tokens};
use chat_conn::hub::ConnHub;
use chat_conn::{ConnConfig, ConnServer};
use chat_gateway::placement::Placement;
use chat_gateway::ratelimit::{RateConfig, RateLimits};
use chat_gateway::{Gateway, SpliceConfig, WsBackend};
use chat_link::frame::Peer;
use chat_link::{AppPool, LinkClient, LinkConfig, LinkKey, LinkRoutes};
use chat_net::accept::Listener;
use chat_net::http::HttpConfig;
use chat_net::ratelimit::Rate;
use chat_proto::ServerId;
use chat_proto::api::AppApi;
use chat_proto::link::Delivery;
use chat_registry::Registry;
use chat_store::{ChatStore, Kv};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How often a gateway drops the rate-limit state of idle users and addresses.
const RATE_LIMIT_CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// Settings every role shares.
#[derive(Debug, Clone)]
pub struct Common {
    /// Must be the same on every gateway, connection server and app server of a cluster.
    pub token_secret: Vec<u8>,
    pub token_ttl: Duration,
    pub link: LinkConfig,
}

impl Default for Common {
    /// Every default but the secret, which has none: [`Common::validate`] refuses an empty one.
    fn default() -> Self {
        Common {
            token_secret: Vec::new(),
            token_ttl: Tokens::TTL_DEFAULT,
            link: LinkConfig::default(),
        }
    }
}

impl Common {
    pub fn new(token_secret: Vec<u8>) -> Common {
        Common {
            token_secret,
            ..Common::default()
        }
    }

    fn tokens(&self) -> Tokens {
        Tokens::new(&self.token_secret, self.token_ttl)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let bytes = chat_auth::secret::SECRET_BYTES;
        ensure!(
            self.token_secret.len() >= bytes,
            "the token secret is {} bytes; it must be at least {bytes}",
            self.token_secret.len()
        );
        ensure!(
            !self.token_ttl.is_zero(),
            "the token lifetime must not be zero"
        );
        let link = &self.link;
        heartbeat_fits("link", link.heartbeat_interval, link.idle_timeout)?;
        positive("link outbound_queue_len_max", link.outbound_queue_len_max)?;
        positive("link requests_in_flight_max", link.requests_in_flight_max)?;
        ensure!(
            !link.request_timeout.is_zero() && !link.connect_timeout.is_zero(),
            "link request and connect timeouts must not be zero"
        );
        ensure!(
            link.reconnect_backoff_min <= link.reconnect_backoff_max,
            "link reconnect_backoff_min ({:?}) is above reconnect_backoff_max ({:?})",
            link.reconnect_backoff_min,
            link.reconnect_backoff_max
        );
        Ok(())
    }
}

/// An app server: serves the link on a listener, over a store, with a registry.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub password_cost: PasswordCost,
    pub app: AppConfig,
    /// Link connections (connection servers and gateways) served at once.
    pub link_connections_max: usize,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            password_cost: PasswordCost::DEFAULT,
            app: AppConfig::default(),
            link_connections_max: 4096,
        }
    }
}

impl AppOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        let app = &self.app;
        positive("app conv_queue_len_max", app.conv_queue_len_max)?;
        positive("app batch_messages_max", app.batch_messages_max)?;
        positive("app convs_active_max", app.convs_active_max)?;
        positive(
            "app password_hashes_in_flight_max",
            app.password_hashes_in_flight_max,
        )?;
        positive("link_connections_max", self.link_connections_max)?;
        positive("app groups_per_hour_max", app.groups_per_hour_max as usize)?;
        ensure!(
            !app.password_hash_wait_max.is_zero(),
            "the password hash wait must not be zero"
        );
        ensure!(
            !app.registry_timeout.is_zero() && !app.sequencer_idle_timeout.is_zero(),
            "app registry_timeout and sequencer_idle_timeout must not be zero"
        );
        Ok(())
    }
}

/// A connection server: WebSockets on a listener, linked to every app server in `apps`.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub server_id: ServerId,
    pub apps: Vec<SocketAddr>,
    pub conn: ConnConfig,
    pub http: HttpConfig,
}

impl Default for ConnOptions {
    /// No app server addresses: [`ConnOptions::validate`] asks for at least one.
    fn default() -> Self {
        ConnOptions {
            server_id: 0,
            apps: Vec::new(),
            conn: ConnConfig::default(),
            http: HttpConfig {
                // Its clients are the gateways, each splicing many WebSockets.
                connections_per_address_max: None,
                ..HttpConfig::default()
            },
        }
    }
}

impl ConnOptions {
    /// `registry_entry_ttl` is the registry's ([`Registry::entry_ttl`]).
    pub fn validate(&self, registry_entry_ttl: Option<Duration>) -> anyhow::Result<()> {
        ensure!(
            !self.apps.is_empty(),
            "a connection server needs at least one app server address"
        );
        validate_conn(&self.conn, registry_entry_ttl)?;
        validate_http(&self.http)
    }
}

/// A gateway: REST to app servers over the link, WebSockets spliced to connection servers.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub apps: Vec<SocketAddr>,
    pub conns: Vec<SocketAddr>,
    pub rates: RateConfig,
    pub http: HttpConfig,
    pub splice: SpliceConfig,
    /// How often connection servers are checked.
    pub health_check_interval: Duration,
}

impl Default for GatewayOptions {
    /// No addresses: [`GatewayOptions::validate`] asks for at least one of each.
    fn default() -> Self {
        GatewayOptions {
            apps: Vec::new(),
            conns: Vec::new(),
            rates: RateConfig::default(),
            http: HttpConfig::default(),
            splice: SpliceConfig::default(),
            health_check_interval: Duration::from_millis(500),
        }
    }
}

impl GatewayOptions {
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.apps.is_empty(),
            "a gateway needs at least one app server address"
        );
        ensure!(
            !self.conns.is_empty(),
            "a gateway needs at least one connection server address"
        );
        ensure!(
            !self.health_check_interval.is_zero(),
            "the health check interval must not be zero"
        );
        ensure!(
            !self.splice.connect_timeout.is_zero() && !self.splice.write_timeout.is_zero(),
            "splice connect and write timeouts must not be zero"
        );
        validate_rates(&self.rates)?;
        validate_http(&self.http)
    }
}

pub(crate) fn validate_conn(
    conn: &ConnConfig,
    registry_entry_ttl: Option<Duration>,
) -> anyhow::Result<()> {
    positive("connections_max", conn.connections_max)?;
    positive("conn outbound_queue_len_max", conn.outbound_queue_len_max)?;
    positive("conn sends_in_flight_max", conn.sends_in_flight_max)?;
    positive("conn sync_held_messages_max", conn.sync_held_messages_max)?;
    positive(
        "conn sync_page_messages_max",
        conn.sync_page_messages_max as usize,
    )?;
    conn.frame_rate.into_iter().try_for_each(validate_rate)?;
    heartbeat_fits("WebSocket", conn.heartbeat_interval, conn.idle_timeout)?;
    ensure!(
        !conn.write_timeout.is_zero() && !conn.request_timeout.is_zero(),
        "conn write_timeout and request_timeout must not be zero"
    );
    ensure!(
        !conn.registry_refresh_interval.is_zero(),
        "the registry refresh interval must not be zero"
    );
    if let Some(ttl) = registry_entry_ttl {
        // Refreshing at most every half TTL leaves a whole refresh's slack before an entry
        // of a live connection expires and its messages stop being pushed.
        ensure!(
            conn.registry_refresh_interval * 2 <= ttl,
            "the registry refresh interval ({:?}) must be at most half the registry entry TTL \
             ({ttl:?}), or live connections' entries expire between refreshes",
            conn.registry_refresh_interval
        );
    }
    Ok(())
}

pub(crate) fn validate_http(http: &HttpConfig) -> anyhow::Result<()> {
    positive("http connections_max", http.connections_max)?;
    http.connections_per_address_max
        .into_iter()
        .try_for_each(|max| positive("http connections_per_address_max", max))?;
    ensure!(
        !http.request_timeout.is_zero(),
        "the request timeout must not be zero"
    );
    ensure!(
        !http.header_read_timeout.is_zero(),
        "the header read timeout must not be zero"
    );
    Ok(())
}

pub(crate) fn validate_rates(rates: &RateConfig) -> anyhow::Result<()> {
    [rates.user, rates.ip, rates.credentials]
        .into_iter()
        .flatten()
        .try_for_each(validate_rate)
}

fn validate_rate(rate: Rate) -> anyhow::Result<()> {
    ensure!(
        rate.per_second > 0 && rate.burst > 0,
        "a rate limit needs a rate and a burst above zero (no limit is `None`)"
    );
    Ok(())
}

fn positive(name: &str, value: usize) -> anyhow::Result<()> {
    // A zero bound is never meant: `mpsc::channel(0)` panics, a zero semaphore hangs.
    ensure!(value > 0, "{name} must be at least 1");
    Ok(())
}

/// A peer is dropped after `idle_timeout` of silence; pings every `heartbeat_interval` must
/// fit twice in it, or one late ping drops a healthy peer.
fn heartbeat_fits(
    what: &str,
    heartbeat_interval: Duration,
    idle_timeout: Duration,
) -> anyhow::Result<()> {
    ensure!(
        !heartbeat_interval.is_zero() && heartbeat_interval * 2 <= idle_timeout,
        "the {what} heartbeat interval ({heartbeat_interval:?}) must be above zero and fit twice \
         in its idle timeout ({idle_timeout:?})"
    );
    Ok(())
}

/// Builds an app server over `kv` that delivers through `delivery`.
pub fn app_server(
    common: &Common,
    options: &AppOptions,
    kv: Arc<dyn Kv>,
    registry: Arc<dyn Registry>,
    delivery: Arc<dyn Delivery>,
) -> anyhow::Result<Arc<AppServer>> {
    let passwords = Passwords::new(options.password_cost)?;
    Ok(AppServer::new(
        ChatStore::new(kv),
        registry,
        delivery,
        passwords,
        common.tokens(),
        options.app.clone(),
    ))
}

/// Builds a connection server whose frames go to `app`, and starts its registry heartbeat
/// (stopped when the returned guard drops).
pub fn conn_server(
    hub: Arc<ConnHub>,
    app: Arc<dyn AppApi>,
    registry: Arc<dyn Registry>,
    conn: ConnConfig,
) -> (Arc<ConnServer>, AbortOnDrop) {
    let server = ConnServer::new(hub, app, registry, conn);
    let heartbeat = AbortOnDrop(tokio::spawn(server.clone().run_heartbeat()));
    (server, heartbeat)
}

/// Builds a gateway over `app` whose WebSockets go to `ws`, and starts its rate-limit
/// cleanup (stopped when the returned guard drops).
pub fn gateway(
    common: &Common,
    app: Arc<dyn AppApi>,
    ws: WsBackend,
    rates: RateConfig,
) -> (Gateway, AbortOnDrop) {
    let limits = Arc::new(RateLimits::new(rates));
    let cleanup = AbortOnDrop(tokio::spawn(
        limits.clone().run_cleanup(RATE_LIMIT_CLEANUP_INTERVAL),
    ));
    (Gateway::new(app, common.tokens(), ws, limits), cleanup)
}

/// Links to every app server in `apps`, as `peer`; deliveries (for a connection server) go
/// to `delivery`.
fn app_pool(
    common: &Common,
    apps: &[SocketAddr],
    peer: Peer,
    delivery: Option<Arc<dyn Delivery>>,
) -> Arc<AppPool> {
    let links = apps
        .iter()
        .map(|addr| {
            let key = LinkKey::derive(&common.token_secret);
            LinkClient::new(*addr, peer, delivery.clone(), common.link.clone(), key)
        })
        .collect();
    Arc::new(AppPool::new(links))
}

/// A background task, stopped when this is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs an app server on `listener` until `shutdown` completes.
pub async fn run_app(
    listener: impl Listener,
    kv: Arc<dyn Kv>,
    registry: Arc<dyn Registry>,
    common: Common,
    options: AppOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    common.validate()?;
    options.validate()?;
    let routes = LinkRoutes::new();
    let app = app_server(&common, &options, kv, registry, routes.clone())?;
    let serving = chat_link::server::serve(
        listener,
        app,
        routes,
        common.link.clone(),
        options.link_connections_max,
        LinkKey::derive(&common.token_secret),
    );
    tokio::select! {
        _ = serving => {}
        _ = shutdown => {}
    }
    Ok(())
}

/// Runs a connection server on `listener` until `shutdown` completes.
pub async fn run_conn(
    listener: impl Listener,
    registry: Arc<dyn Registry>,
    common: Common,
    options: ConnOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    common.validate()?;
    options.validate(registry.entry_ttl())?;
    let hub = ConnHub::new(options.server_id);
    let peer = Peer::Conn(options.server_id);
    let app = app_pool(&common, &options.apps, peer, Some(hub.clone()));
    let (conn, _heartbeat) = conn_server(hub, app, registry, options.conn);
    let router = chat_conn::endpoint::router(conn, common.tokens());
    chat_net::http::serve(listener, router, options.http, shutdown).await;
    Ok(())
}

/// Runs a gateway on `listener` until `shutdown` completes.
pub async fn run_gateway(
    listener: impl Listener,
    common: Common,
    options: GatewayOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    common.validate()?;
    options.validate()?;
    let app = app_pool(&common, &options.apps, Peer::Gateway, None);
    let placement = Arc::new(Placement::new(
        options.conns.clone(),
        options.health_check_interval,
        options.splice.connect_timeout,
    ));
    let _health = AbortOnDrop(tokio::spawn(placement.clone().run_health_checks()));
    let ws = WsBackend::Splice(placement, options.splice);
    let (gateway, _cleanup) = gateway(&common, app, ws, options.rates);
    chat_net::http::serve(listener, gateway.router(), options.http, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        Common::new(vec![7; 32])
    }

    fn conn_options() -> ConnOptions {
        ConnOptions {
            apps: vec!["127.0.0.1:7100".parse().expect("address")],
            ..ConnOptions::default()
        }
    }

    /// The defaults work together; each value that cannot work with another is refused
    /// with a message that names it.
    #[test]
    fn options_that_cannot_work_together_are_refused() {
        common().validate().expect("default common options");
        AppOptions::default()
            .validate()
            .expect("default app options");
        conn_options()
            .validate(Some(Duration::from_secs(30)))
            .expect("default conn options with Redis's default TTL");
        conn_options()
            .validate(None)
            .expect("an in-process registry");

        let refused = |result: anyhow::Result<()>, needle: &str| {
            let message = format!("{:#}", result.expect_err(needle));
            assert!(
                message.contains(needle),
                "{message:?} should name {needle:?}"
            );
        };
        refused(Common::new(vec![1; 16]).validate(), "at least 32");
        let mut c = common();
        c.link.idle_timeout = c.link.heartbeat_interval;
        refused(c.validate(), "link heartbeat");

        let mut conn = conn_options();
        conn.conn.registry_refresh_interval = Duration::from_secs(20);
        refused(
            conn.validate(Some(Duration::from_secs(30))),
            "registry entry TTL",
        );
        conn.validate(None)
            .expect("entries that never expire need no refresh bound");
        let mut conn = conn_options();
        conn.conn.outbound_queue_len_max = 0;
        refused(conn.validate(None), "outbound_queue_len_max");
        refused(ConnOptions::default().validate(None), "app server address");

        let mut app = AppOptions::default();
        app.app.batch_messages_max = 0;
        refused(app.validate(), "batch_messages_max");
        refused(GatewayOptions::default().validate(), "app server address");
    }
}
