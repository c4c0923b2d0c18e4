//! Join/leave throughput: many connections, each joining (and optionally
//! leaving) its own rooms one request at a time, waiting for each reply.

use std::time::Instant;

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::proto::Conn;
use crate::target::Target;

#[derive(Args, Clone, Debug)]
pub struct JoinsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connections joining concurrently.
    #[arg(long)]
    pub conns: usize,
    /// Joins per connection (each to its own room).
    #[arg(long, default_value_t = 20)]
    pub joins_per_conn: usize,
    /// Leave each room right after joining it (join + leave cycles).
    #[arg(long)]
    pub leave: bool,
    #[arg(long, default_value = "chat")]
    pub namespace: String,
}

pub async fn run(args: JoinsArgs) -> anyhow::Result<Value> {
    let urls = args.target.urls();
    let gate = std::sync::Arc::new(Semaphore::new(128));
    let mut sockets = Vec::new();
    for i in 0..args.conns {
        let _permit = gate.acquire().await?;
        sockets.push(
            Conn::connect(args.target.protocol, &urls[i % urls.len()], args.target.credential()).await?,
        );
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in sockets.into_iter().enumerate() {
        let (namespace, joins, leave) = (args.namespace.clone(), args.joins_per_conn, args.leave);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0u64;
            let ops: &[&str] = if leave { &["join", "leave"] } else { &["join"] };
            for j in 0..joins {
                let room = format!("{namespace}:j-{c}-{j}");
                for op in ops {
                    let sent = Instant::now();
                    if !conn.request(op, &room).await? {
                        failed += 1;
                    }
                    latency.record(sent.elapsed().as_micros().max(1) as u64)?;
                }
            }
            anyhow::Ok((latency, failed, conn))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    let mut keep = Vec::new();
    for task in tasks {
        let (latency, f, conn) = task.await??;
        total.add(&latency)?;
        failed += f;
        keep.push(conn);
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = total.len();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    drop(keep);
    Ok(json!({
        "scenario": "joins",
        "protocol": args.target.protocol,
        "connections": args.conns,
        "with_leave": args.leave,
        "operations": ops,
        "failed": failed,
        "operations_per_second": (ops as f64 / secs).round(),
        "reply_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": total.max() as f64 / 1000.0},
    }))
}
