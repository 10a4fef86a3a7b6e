//! `chat serve`: the whole system in one process.
//!
//! The gateway, one connection server and one app server are wired in-process through the
//! same seams a cluster uses over the network: [`chat_proto::link::AppApi`] and
//! [`chat_proto::link::Delivery`], the [`chat_registry::Registry`] and the store's
//! [`chat_store::Kv`]. The simulator calls [`run`] with an in-memory store.

use chat_app::{AppConfig, AppServer};
use chat_auth::{PasswordCost, Passwords, Tokens};
use chat_conn::hub::ConnHub;
use chat_conn::{ConnConfig, ConnServer};
use chat_gateway::http::{HttpConfig, Listener};
use chat_gateway::ratelimit::{RateConfig, RateLimits};
use chat_gateway::{Gateway, WsBackend};
use chat_registry::LocalRegistry;
use chat_store::{ChatStore, Kv};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on for HTTP and WebSocket clients (port 0 picks a free one).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory for the message store and the generated token secret.
    #[arg(long, env = "CHAT_DATA", default_value = "./chat-data")]
    pub data: PathBuf,
    /// Token signing secret (hex, at least 32 bytes). Default: generated once and kept in
    /// `<data>/token-secret`, so tokens survive restarts.
    #[arg(long, env = "CHAT_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Lifetime of session tokens, in seconds.
    #[arg(long, default_value_t = Tokens::TTL_DEFAULT.as_secs())]
    pub token_ttl_secs: u64,
    /// WebSockets held at most (each is a file descriptor).
    #[arg(long, default_value_t = ConnConfig::default().connections_max)]
    pub connections_max: usize,
    #[command(flatten)]
    pub passwords: crate::cli::PasswordArgs,
    #[command(flatten)]
    pub rates: crate::cli::RateArgs,
}

/// Everything [`run`] needs besides the listener and the store.
#[derive(Clone)]
pub struct Options {
    pub token_secret: Vec<u8>,
    pub token_ttl: Duration,
    pub password_cost: PasswordCost,
    pub app: AppConfig,
    pub conn: ConnConfig,
    pub http: HttpConfig,
    pub rates: RateConfig,
}

impl Options {
    pub fn new(token_secret: Vec<u8>) -> Options {
        Options {
            token_secret,
            token_ttl: Tokens::TTL_DEFAULT,
            password_cost: PasswordCost::DEFAULT,
            app: AppConfig::default(),
            conn: ConnConfig::default(),
            http: HttpConfig::default(),
            rates: RateConfig::default(),
        }
    }
}

/// Runs the whole system on `listener` over `kv` until `shutdown` completes.
pub async fn run(
    listener: impl Listener,
    kv: Arc<dyn Kv>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tokens = Tokens::new(&options.token_secret, options.token_ttl);
    let passwords = Passwords::new(options.password_cost)?;
    let registry = Arc::new(LocalRegistry::new());
    // One connection server, id 0: the registry names it in every entry.
    let hub = ConnHub::new(0);
    let app = AppServer::new(
        ChatStore::new(kv),
        registry.clone(),
        hub.clone(),
        passwords,
        tokens.clone(),
        options.app,
    );
    let conn = ConnServer::new(hub, app.clone(), registry, options.conn);
    let heartbeat = tokio::spawn(conn.clone().run_heartbeat());
    let limits = Arc::new(RateLimits::new(options.rates));
    let router = Gateway::new(app, tokens, WsBackend::Local(conn), limits).router();
    chat_gateway::http::serve(listener, router, options.http, shutdown).await;
    heartbeat.abort();
    Ok(())
}

/// `chat serve` as the binary runs it: the durable embedded store under `--data`.
#[cfg(not(madsim))]
pub async fn main(args: ServeArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating {}", args.data.display()))?;
    let token_secret = match &args.token_secret {
        Some(hex_secret) => {
            let secret = hex::decode(hex_secret.trim()).context("--token-secret must be hex")?;
            anyhow::ensure!(
                secret.len() >= chat_auth::secret::SECRET_BYTES,
                "--token-secret must be at least 32 bytes"
            );
            secret
        }
        None => chat_auth::secret::load_or_create(&args.data)?,
    };
    let store_path = args.data.join("messages.redb");
    let kv = chat_store::RedbKv::open(&store_path)
        .with_context(|| format!("opening {}", store_path.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut options = Options::new(token_secret);
    options.token_ttl = Duration::from_secs(args.token_ttl_secs);
    options.conn.connections_max = args.connections_max;
    options.password_cost = args.passwords.cost();
    options.rates = args.rates.config();
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
