//! `chat serve`: the whole system in one process.
//!
//! The gateway, one connection server and one app server, built by the same builders as a
//! cluster's roles ([`crate::roles`]) and wired in-process through the same seams a cluster
//! uses over the network: [`chat_proto::api::AppApi`] and [`chat_proto::link::Delivery`],
//! the [`chat_registry::Registry`] and the store's [`chat_store::Kv`]. The simulator calls
//! [`run`] on a simulated disk.

use crate::roles::{AppOptions, Common, app_server, conn_server, gateway};
use chat_auth::Tokens;
use chat_conn::ConnConfig;
use chat_conn::hub::ConnHub;
use chat_gateway::WsBackend;
use chat_gateway::ratelimit::RateConfig;
use chat_net::accept::Listener;
use chat_net::http::HttpConfig;
use chat_registry::{LocalRegistry, Registry};
use chat_store::Kv;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on for HTTP and WebSocket clients (port 0 picks a free one).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the message store and the generated token secret.
    #[arg(long, env = "CHAT_DATA", default_value = "./chat-data")]
    pub data: PathBuf,
    /// Without one, a secret is generated once and kept in `<data>/token-secret`, so tokens
    /// survive restarts.
    #[command(flatten)]
    pub secret: crate::cli::SecretArgs,
    /// Lifetime of session tokens, in seconds.
    #[arg(long, default_value_t = Tokens::TTL_DEFAULT.as_secs())]
    pub token_ttl_secs: u64,
    /// WebSockets held at most (each is a file descriptor).
    #[arg(long, default_value_t = ConnConfig::default().connections_max)]
    pub connections_max: usize,
    #[command(flatten)]
    pub frames: crate::cli::FrameRateArgs,
    #[command(flatten)]
    pub passwords: crate::cli::PasswordArgs,
    #[command(flatten)]
    pub rates: crate::cli::RateArgs,
    #[command(flatten)]
    pub proxies: crate::cli::ProxyArgs,
}

/// Everything [`run`] needs besides the listener and the store.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub common: Common,
    pub app: AppOptions,
    pub conn: ConnConfig,
    pub http: HttpConfig,
    pub rates: RateConfig,
}

impl Options {
    pub fn new(token_secret: Vec<u8>) -> Options {
        Options {
            common: Common::new(token_secret),
            ..Options::default()
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.common.validate()?;
        self.app.validate()?;
        // The in-process registry's entries never expire.
        crate::roles::validate_conn(&self.conn, None)?;
        crate::roles::validate_http(&self.http)?;
        crate::roles::validate_rates(&self.rates)
    }
}

/// Runs the whole system on `listener` over `kv` until `shutdown` completes.
pub async fn run(
    listener: impl Listener,
    kv: Arc<dyn Kv>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    options.validate()?;
    let registry: Arc<dyn Registry> = Arc::new(LocalRegistry::new());
    // One connection server, id 0: the registry names it in every entry.
    let hub = ConnHub::new(0);
    let common = &options.common;
    let app = app_server(common, &options.app, kv, registry.clone(), hub.clone())?;
    let (conn, _heartbeat) = conn_server(hub, app.clone(), registry, options.conn);
    let (gateway, _cleanup) = gateway(common, app, WsBackend::Local(conn), options.rates);
    chat_net::http::serve(listener, gateway.router(), options.http, shutdown).await;
    Ok(())
}

/// `chat serve` as the binary runs it: the durable embedded store under `--data`.
#[cfg(not(madsim))]
pub async fn main(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    crate::store::private_dir(&args.data)?;
    let token_secret = match args.secret.secret()? {
        Some(secret) => secret,
        None => chat_auth::secret::load_or_create(&args.data)?,
    };
    let mut options = Options::new(token_secret);
    options.common.token_ttl = std::time::Duration::from_secs(args.token_ttl_secs);
    options.conn.connections_max = args.connections_max;
    options.conn.frame_rate = args.frames.rate();
    args.passwords.apply(&mut options.app);
    options.rates = args.rates.config();
    options.http.trusted_proxies = args.proxies.trusted_proxies.clone();
    options.validate()?;
    let store_path = args.data.join("messages.redb");
    let kv = crate::store::open_redb(&store_path)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %args.data.display(), "serving");
    // Tests and scripts read this line to find the port.
    println!("chat: listening on http://{addr}");
    run(listener, Arc::new(kv), options, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
#[cfg(not(madsim))]
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
