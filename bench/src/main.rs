//! The `starling-bench` binary: see the library's layout for the commands.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = starling_bench::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(starling_bench::run(cli.command))?;
    if !report.is_null() {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
