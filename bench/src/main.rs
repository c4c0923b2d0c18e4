//! `starling-bench`: a load generator for Starling.
//!
//! - `idle`: opens N connections and reports the server's RSS per connection.
//! - `fanout`: members in rooms, publishers on a fixed schedule; reports
//!   deliveries per second and publish-to-deliver latency measured from the
//!   *scheduled* send time, so a stalled server cannot hide its delay
//!   (no coordinated omission), plus losses, duplicates and reordering.
//!
//! Results are printed as one JSON object on stdout; progress goes to stderr.

#![forbid(unsafe_code)]

mod fanout;
mod idle;
mod joins;
mod ws;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "starling-bench", about = "Load generator for Starling")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open idle connections and measure the server's memory per connection.
    Idle(idle::IdleArgs),
    /// Fan-out throughput and latency.
    Fanout(fanout::FanoutArgs),
    /// Join throughput and join-reply latency.
    Joins(joins::JoinsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        match cli.command {
            Command::Idle(args) => idle::run(args).await,
            Command::Fanout(args) => fanout::run(args).await,
            Command::Joins(args) => joins::run(args).await,
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
