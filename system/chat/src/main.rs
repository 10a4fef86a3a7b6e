//! `chat`: run the system, or chat with it from a terminal.

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "chat", version, about = "A horizontally scalable WebSocket chat system")]
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
}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve(_) => "info",
        Command::Client(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => chat::serve::main(args).await,
        Command::Client(args) => chat::client_cmd::run(args).await,
    }
}

/// The binary is not simulated; the simulator starts [`chat::serve::run`] on its nodes.
#[cfg(madsim)]
fn main() {
    let _ = Cli::parse;
    eprintln!("the chat binary does not run under --cfg madsim; see sim/");
}
