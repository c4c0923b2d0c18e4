//! `starling-bench`: the load generator for Starling and its peers.
//!
//! # Layout
//! - [`proto`]: one client connection speaking Starling's wire contract v1,
//!   the Socket.IO v4 wire protocol or Pusher Channels protocol 7, so the
//!   same code measures every peer.
//! - [`pusher`]: Pusher's frames, channel names and channel authorisation.
//! - [`fanout`]: members in rooms, publishers on a fixed schedule, latency
//!   from the scheduled send time, losses/duplicates/reordering, step search.
//! - [`idle`]: memory per idle connection from the server's RSS slope, with
//!   connections held by child processes (`hold`).
//! - [`joins`]: join/leave throughput; [`churn`]: connect/close throughput.
//! - [`raw`]: the raw tokio-tungstenite broadcast server (the ceiling).
//! - [`report`]: the Markdown comparison table from a directory of results.
//! - [`sys`]: RSS and CPU time from /proc, `kill -9`.
//! - [`target`]: the `--protocol`/`--url`/`--token`/`--app-secret` block every client command shares.
//!
//! Every command prints one JSON object on stdout; progress goes to stderr.

#![forbid(unsafe_code)]

pub mod churn;
pub mod fanout;
pub mod idle;
pub mod joins;
pub mod proto;
pub mod pusher;
pub mod raw;
pub mod report;
pub mod sys;
pub mod target;

use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "starling-bench", about = "Load generator for Starling and its peers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Idle connections: the server's memory per connection (RSS slope).
    Idle(idle::IdleArgs),
    /// Hold idle connections until stdin closes (a child of `idle`).
    Hold(idle::HoldArgs),
    /// Fan-out throughput and latency, at fixed rates or by step search.
    Fanout(fanout::FanoutArgs),
    /// Join (and leave) throughput and reply latency.
    Joins(joins::JoinsArgs),
    /// Connect/close churn.
    Churn(churn::ChurnArgs),
    /// Serve the raw tokio-tungstenite broadcast server (the ceiling).
    RawServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// Wait until the servers are idle (under 5% of a core over 500 ms),
    /// so that one scenario's aftermath (disconnects, GC) does not load the next.
    Quiesce {
        #[arg(long)]
        server_pids: String,
        #[arg(long, default_value_t = 30.0)]
        max_secs: f64,
    },
    /// Print the Markdown comparison table for a directory of results.
    Report { dir: std::path::PathBuf },
}

/// Runs one command; the result is the JSON the binary prints.
pub async fn run(command: Command) -> anyhow::Result<Value> {
    match command {
        Command::Idle(args) => idle::run(args).await,
        Command::Hold(args) => idle::hold(args).await,
        Command::Fanout(args) => fanout::run(args).await,
        Command::Joins(args) => joins::run(args).await,
        Command::Churn(args) => churn::run(args).await,
        Command::RawServer { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            eprintln!("raw-server: listening on {}", listener.local_addr()?);
            raw::serve(listener).await?;
            Ok(Value::Null)
        }
        Command::Quiesce { server_pids, max_secs } => {
            let pids = sys::parse_pids(&server_pids)?;
            let waited = sys::quiesce(&pids, std::time::Duration::from_secs_f64(max_secs)).await;
            eprintln!("quiesce: servers idle after {:.1} s", waited.as_secs_f64());
            Ok(Value::Null)
        }
        Command::Report { dir } => {
            print!("{}", report::markdown(&dir)?);
            Ok(Value::Null)
        }
    }
}

/// Parses `argv` (without the program name) as the binary would and runs it.
pub async fn run_args<I, S>(argv: I) -> anyhow::Result<Value>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let argv = std::iter::once("starling-bench".to_string()).chain(argv.into_iter().map(Into::into));
    run(Cli::try_parse_from(argv)?.command).await
}
