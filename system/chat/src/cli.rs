//! Command-line flags of the cluster roles, turned into [`crate::roles`] options.

use crate::roles::{AppOptions, Common, ConnOptions, GatewayOptions};
use crate::store::StoreSpec;
use anyhow::Context;
use chat_auth::{PasswordCost, Tokens};
use chat_conn::ConnConfig;
use chat_gateway::ratelimit::RateConfig;
use chat_link::LinkConfig;
use chat_net::ratelimit::Rate;
use std::net::SocketAddr;
use std::time::Duration;

/// The token signing secret (`chat serve` and every cluster role).
#[derive(clap::Args, Debug, Clone)]
pub struct SecretArgs {
    /// Token signing secret, hex, at least 32 bytes; the same on every process of a cluster.
    /// On the command line it shows in `ps`: prefer `--token-secret-file` or the environment.
    #[arg(
        long,
        env = "CHAT_TOKEN_SECRET",
        hide_env_values = true,
        conflicts_with = "token_secret_file"
    )]
    pub token_secret: Option<String>,
    /// A file holding the token signing secret (hex), readable by its owner only.
    #[arg(long, env = "CHAT_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<std::path::PathBuf>,
}

impl SecretArgs {
    /// The secret given, if any.
    pub fn secret(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match (&self.token_secret, &self.token_secret_file) {
            (Some(hex_secret), _) => Ok(Some(
                chat_auth::secret::parse_hex(hex_secret).context("--token-secret")?,
            )),
            (None, Some(path)) => secret_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Flags every cluster role takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    pub secret: SecretArgs,
    /// Lifetime of session tokens, in seconds.
    #[arg(long, env = "CHAT_TOKEN_TTL_SECS", default_value_t = Tokens::TTL_DEFAULT.as_secs())]
    pub token_ttl_secs: u64,
    /// Link heartbeat interval in milliseconds; a link silent for 4 intervals is reconnected.
    #[arg(long, env = "CHAT_LINK_HEARTBEAT_MS",
          default_value_t = LinkConfig::default().heartbeat_interval.as_millis() as u64)]
    pub link_heartbeat_ms: u64,
}

/// The token secret in `path` (hex), refused if other users may read the file.
pub fn secret_file(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let context = || format!("--token-secret-file {}", path.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(context)?
            .permissions()
            .mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "{}: mode {:o} lets other users read the secret; chmod 600 it",
            context(),
            mode & 0o777
        );
    }
    let text = std::fs::read_to_string(path).with_context(context)?;
    chat_auth::secret::parse_hex(&text).with_context(context)
}

impl CommonArgs {
    pub fn common(&self) -> anyhow::Result<Common> {
        let secret = self
            .secret
            .secret()?
            .context("--token-secret or --token-secret-file is required")?;
        let mut common = Common::new(secret);
        common.token_ttl = Duration::from_secs(self.token_ttl_secs);
        common.link.heartbeat_interval = Duration::from_millis(self.link_heartbeat_ms);
        common.link.idle_timeout = common.link.heartbeat_interval * 4;
        common.validate()?;
        Ok(common)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RedisArgs {
    /// Address of the Redis server holding the connection registry.
    #[arg(long, env = "CHAT_REDIS", default_value = "127.0.0.1:6379")]
    pub redis: String,
    /// Prefix of every registry key, so deployments can share a Redis.
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat:")]
    pub redis_prefix: String,
    /// Registry entries not refreshed for this many seconds expire.
    #[arg(long, env = "CHAT_REGISTRY_TTL_SECS", default_value_t = 30)]
    pub registry_ttl_secs: u64,
}

impl RedisArgs {
    pub fn registry(&self) -> chat_registry::redis::RedisRegistry {
        let mut config = chat_registry::redis::RedisConfig::new(self.redis.clone());
        config.key_prefix = self.redis_prefix.clone();
        config.entry_ttl = self.entry_ttl();
        chat_registry::redis::RedisRegistry::new(config)
    }

    fn entry_ttl(&self) -> Duration {
        Duration::from_secs(self.registry_ttl_secs.max(1))
    }
}

/// `chat app`: an app server.
#[derive(clap::Args, Debug, Clone)]
pub struct AppArgs {
    /// Address for link connections from connection servers and gateways.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// The message store: `redb:PATH`, an embedded redb file (created, with its directory, if
    /// absent), or `fdb:CLUSTER_FILE`, a FoundationDB cluster (in a binary built with the
    /// `fdb` feature). One owner per redb file: several app servers need `fdb:`.
    #[arg(
        long,
        env = "CHAT_STORE",
        default_value = "redb:./chat-data/messages.redb"
    )]
    pub store: StoreSpec,
    #[command(flatten)]
    pub passwords: PasswordArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl AppArgs {
    pub fn options(&self) -> anyhow::Result<(Common, AppOptions)> {
        let mut options = AppOptions::default();
        self.passwords.apply(&mut options);
        options.validate()?;
        Ok((self.common.common()?, options))
    }
}

/// `chat conn`: a connection server.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// This server's id in the registry: unique in the cluster, stable across restarts.
    #[arg(long, env = "CHAT_SERVER_ID")]
    pub id: u32,
    /// Address for WebSockets (spliced from gateways).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:7200")]
    pub listen: SocketAddr,
    /// App server link addresses, comma-separated.
    #[arg(long, env = "CHAT_APPS", value_delimiter = ',', required = true)]
    pub app: Vec<SocketAddr>,
    /// WebSockets held at most.
    #[arg(long, env = "CHAT_CONNECTIONS_MAX", default_value_t = ConnConfig::default().connections_max)]
    pub connections_max: usize,
    #[command(flatten)]
    pub frames: FrameRateArgs,
    /// How often this server's connections are re-asserted in the registry, in milliseconds.
    #[arg(long, env = "CHAT_REGISTRY_REFRESH_MS",
          default_value_t = ConnConfig::default().registry_refresh_interval.as_millis() as u64)]
    pub registry_refresh_ms: u64,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

impl ConnArgs {
    pub fn options(&self) -> anyhow::Result<(Common, ConnOptions)> {
        let conn = ConnConfig {
            connections_max: self.connections_max,
            frame_rate: self.frames.rate(),
            registry_refresh_interval: Duration::from_millis(self.registry_refresh_ms),
            ..ConnConfig::default()
        };
        let options = ConnOptions {
            server_id: self.id,
            apps: self.app.clone(),
            conn,
            ..ConnOptions::default()
        };
        options.validate(Some(self.redis.entry_ttl()))?;
        Ok((self.common.common()?, options))
    }
}

/// `chat gateway`: the API gateway.
#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Address for clients (REST and WebSocket).
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// App server link addresses, comma-separated.
    #[arg(long, env = "CHAT_APPS", value_delimiter = ',', required = true)]
    pub app: Vec<SocketAddr>,
    /// Connection server WebSocket addresses, comma-separated.
    #[arg(long, env = "CHAT_CONNS", value_delimiter = ',', required = true)]
    pub conn: Vec<SocketAddr>,
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub proxies: ProxyArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Reverse proxies in front of a gateway (`chat gateway`, `chat serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// Addresses or ranges (CIDR) of trusted reverse proxies, comma-separated: for a
    /// connection from one of them, the client's address (for per-address limits) is taken
    /// from `X-Forwarded-For`, and its connections are not capped per address. Only list
    /// proxies that set the header themselves; anyone else could write anything in it.
    #[arg(long, env = "CHAT_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: chat_net::proxy::TrustedProxies,
}

/// The per-user frame limit of a connection server (`chat conn`, `chat serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct FrameRateArgs {
    /// `send`, `read` and `sync` frames per second allowed per user (0: no limit); beyond,
    /// each is answered `rate_limited` with `retry_after_ms`. Load tests need 0 here.
    #[arg(long, env = "CHAT_FRAME_RATE",
          default_value_t = ConnConfig::default().frame_rate.map_or(0, |r| r.per_second))]
    pub frame_rate_per_sec: u32,
    /// Burst of frames allowed per user.
    #[arg(long, env = "CHAT_FRAME_BURST",
          default_value_t = ConnConfig::default().frame_rate.map_or(1, |r| r.burst))]
    pub frame_burst: u32,
}

impl FrameRateArgs {
    pub fn rate(&self) -> Option<Rate> {
        (self.frame_rate_per_sec > 0).then_some(Rate {
            per_second: self.frame_rate_per_sec,
            burst: self.frame_burst.max(1),
        })
    }
}

/// Rate limits of a gateway (`chat gateway`, `chat serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct RateArgs {
    /// Requests per second allowed per user (0: no limit).
    #[arg(long, env = "CHAT_RATE_USER", default_value_t = 20)]
    pub rate_user_per_sec: u32,
    /// Burst allowed per user.
    #[arg(long, env = "CHAT_RATE_USER_BURST", default_value_t = 100)]
    pub rate_user_burst: u32,
    /// Requests per second allowed per client IP (0: no limit). Load tests from one address
    /// need 0 here.
    #[arg(long, env = "CHAT_RATE_IP", default_value_t = 200)]
    pub rate_ip_per_sec: u32,
    /// Burst allowed per client IP.
    #[arg(long, env = "CHAT_RATE_IP_BURST", default_value_t = 1000)]
    pub rate_ip_burst: u32,
    /// Registrations and logins per second allowed per client IP, on top of the above: each
    /// costs a password hash (0: no limit). Load tests that log thousands of users in from
    /// one address need 0 here.
    #[arg(long, env = "CHAT_RATE_CREDENTIALS", default_value_t = 10)]
    pub rate_credentials_per_sec: u32,
    /// Burst of registrations and logins allowed per client IP.
    #[arg(long, env = "CHAT_RATE_CREDENTIALS_BURST", default_value_t = 100)]
    pub rate_credentials_burst: u32,
}

impl RateArgs {
    pub fn config(&self) -> RateConfig {
        let rate = |per_second: u32, burst: u32| {
            (per_second > 0).then_some(Rate {
                per_second,
                burst: burst.max(1),
            })
        };
        RateConfig {
            user: rate(self.rate_user_per_sec, self.rate_user_burst),
            ip: rate(self.rate_ip_per_sec, self.rate_ip_burst),
            credentials: rate(self.rate_credentials_per_sec, self.rate_credentials_burst),
        }
    }
}

/// The cost of new password hashes (`chat app`, `chat serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct PasswordArgs {
    /// Argon2id memory cost of new password hashes, in KiB (OWASP's minimum is the default;
    /// load tests that register thousands of users may lower it, never a real deployment).
    #[arg(long, env = "CHAT_PASSWORD_MEMORY_KIB", default_value_t = PasswordCost::DEFAULT.memory_kib)]
    pub password_memory_kib: u32,
    /// Password hashes run at once (0: one per core). Each holds the memory cost while it
    /// runs; logins beyond wait their turn, then are answered 503 with `Retry-After`.
    #[arg(long, env = "CHAT_PASSWORD_HASHES_MAX", default_value_t = 0)]
    pub password_hashes_max: usize,
}

impl PasswordArgs {
    /// Sets the password cost and the hashes run at once.
    pub fn apply(&self, options: &mut AppOptions) {
        options.password_cost = PasswordCost {
            memory_kib: self.password_memory_kib,
            ..PasswordCost::DEFAULT
        };
        options.app.password_hashes_in_flight_max = match self.password_hashes_max {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            max => max,
        };
    }
}

impl GatewayArgs {
    pub fn options(&self) -> anyhow::Result<(Common, GatewayOptions)> {
        let options = GatewayOptions {
            apps: self.app.clone(),
            conns: self.conn.clone(),
            rates: self.rates.config(),
            http: chat_net::http::HttpConfig {
                trusted_proxies: self.proxies.trusted_proxies.clone(),
                ..Default::default()
            },
            ..GatewayOptions::default()
        };
        options.validate()?;
        Ok((self.common.common()?, options))
    }
}
