//! `chat`: run the system, or chat with it from a terminal.

use clap::{Parser, Subcommand};

// Chosen by measurement against glibc malloc: docs/performance.md, "Where the one-to-one time
// goes".
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "chat",
    version,
    about = "A horizontally scalable WebSocket chat system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole system in one process: gateway, connection server, app server, embedded store.
    Serve(chat::serve::ServeArgs),
    /// A terminal client: register or log in, list the inbox, open a conversation, chat.
    Client(chat::client_cmd::ClientArgs),
    /// Cluster role: an app server (business logic, the store, routing), serving the link.
    App(chat::cli::AppArgs),
    /// Cluster role: a connection server (holds WebSockets), linked to the app servers.
    Conn(chat::cli::ConnArgs),
    /// Cluster role: the API gateway (REST, auth, rate limits, WebSocket placement).
    Gateway(chat::cli::GatewayArgs),
}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Client(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => chat::serve::main(args).await,
        Command::Client(args) => chat::client_cmd::run(args).await,
        Command::App(args) => run_app(args).await,
        Command::Conn(args) => run_conn(args).await,
        Command::Gateway(args) => run_gateway(args).await,
    }
}

#[cfg(not(madsim))]
async fn bind(addr: std::net::SocketAddr, role: &str) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // Scripts read this line to find the port.
    println!("chat {role}: listening on {}", listener.local_addr()?);
    Ok(listener)
}

#[cfg(not(madsim))]
async fn run_app(args: chat::cli::AppArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let (common, options) = args.options()?;
    let (kv, store_guard) = args
        .store
        .open()
        .with_context(|| format!("opening --store {}", args.store))?;
    tracing::info!(store = %args.store, "store open");
    let listener = bind(args.listen, "app").await?;
    let registry = std::sync::Arc::new(args.redis.registry());
    let stopped = chat::roles::run_app(
        listener,
        kv,
        registry,
        common,
        options,
        chat::serve::shutdown_signal(),
    )
    .await;
    // Only now that the app server has stopped serving: for `fdb:` this stops FoundationDB's
    // network thread, which must happen before the process exits.
    drop(store_guard);
    stopped
}

#[cfg(not(madsim))]
async fn run_conn(args: chat::cli::ConnArgs) -> anyhow::Result<()> {
    let (common, options) = args.options()?;
    let listener = bind(args.listen, "conn").await?;
    let registry = std::sync::Arc::new(args.redis.registry());
    let shutdown = chat::serve::shutdown_signal();
    chat::roles::run_conn(listener, registry, common, options, shutdown).await
}

#[cfg(not(madsim))]
async fn run_gateway(args: chat::cli::GatewayArgs) -> anyhow::Result<()> {
    let (common, options) = args.options()?;
    let listener = bind(args.listen, "gateway").await?;
    chat::roles::run_gateway(listener, common, options, chat::serve::shutdown_signal()).await
}

/// The binary is not simulated; the simulator starts [`chat::serve::run`] on its nodes.
#[cfg(madsim)]
fn main() {
    let _ = Cli::parse;
    eprintln!("the chat binary does not run under --cfg madsim; see sim/");
}
