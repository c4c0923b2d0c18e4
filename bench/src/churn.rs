//! Connect churn: workers that connect (until the server is ready for
//! requests), close, and connect again, for a fixed time.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::proto::Conn;
use crate::target::Target;

#[derive(Args, Clone, Debug)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub target: Target,
    /// Concurrent connect/close loops.
    #[arg(long, default_value_t = 50)]
    pub workers: usize,
    #[arg(long, default_value_t = 5.0)]
    pub duration_secs: f64,
}

pub async fn run(args: ChurnArgs) -> anyhow::Result<Value> {
    let urls = args.target.urls();
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration_secs);
    let mut tasks = Vec::new();
    for w in 0..args.workers {
        let (url, token, protocol) =
            (urls[w % urls.len()].clone(), args.target.credential().to_string(), args.target.protocol);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0u64;
            while Instant::now() < end {
                let begun = Instant::now();
                match Conn::connect(protocol, &url, &token).await {
                    Ok(conn) => {
                        latency.record(begun.elapsed().as_micros().max(1) as u64)?;
                        conn.close().await;
                    }
                    Err(_) => failed += 1,
                }
            }
            anyhow::Ok((latency, failed))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for task in tasks {
        let (latency, f) = task.await??;
        total.add(&latency)?;
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "scenario": "churn",
        "protocol": args.target.protocol,
        "workers": args.workers,
        "connections": total.len(),
        "failed": failed,
        "connections_per_second": (total.len() as f64 / secs).round(),
        "connect_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": total.max() as f64 / 1000.0},
    }))
}
