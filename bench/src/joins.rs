//! Join throughput: many connections joining distinct rooms at once, each
//! waiting for its join reply before the next join.

use std::time::Instant;

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::connect;

#[derive(Args)]
pub struct JoinsArgs {
    /// WebSocket URL(s), comma-separated; connections are spread over them.
    #[arg(long)]
    url: String,
    #[arg(long)]
    token: String,
    /// Connections joining concurrently.
    #[arg(long)]
    conns: usize,
    /// Joins per connection (each to its own room).
    #[arg(long, default_value_t = 20)]
    joins_per_conn: usize,
    #[arg(long, default_value = "chat")]
    namespace: String,
}

pub async fn run(args: JoinsArgs) -> anyhow::Result<Value> {
    let urls: Vec<String> = args.url.split(',').map(str::to_string).collect();
    let gate = std::sync::Arc::new(Semaphore::new(256));
    let mut sockets = Vec::new();
    for i in 0..args.conns {
        let _permit = gate.acquire().await?;
        sockets.push(connect(&urls[i % urls.len()], &args.token).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut ws) in sockets.into_iter().enumerate() {
        let (namespace, joins) = (args.namespace.clone(), args.joins_per_conn);
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0u64;
            for j in 0..joins {
                let sent = Instant::now();
                let frame = json!({"type":"join","id":j + 1,"room":format!("{namespace}:j-{c}-{j}")});
                ws.send(Message::text(frame.to_string())).await?;
                loop {
                    let Some(Ok(Message::Text(text))) = ws.next().await else {
                        anyhow::bail!("connection ended");
                    };
                    if text.contains(r#""type":"reply""#) {
                        if !text.contains(r#""ok":true"#) {
                            failed += 1;
                        }
                        break;
                    }
                }
                latency.record(sent.elapsed().as_micros().max(1) as u64)?;
            }
            anyhow::Ok((latency, failed, ws))
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    let mut keep = Vec::new();
    for task in tasks {
        let (latency, f, ws) = task.await??;
        total.add(&latency)?;
        failed += f;
        keep.push(ws);
    }
    let secs = started.elapsed().as_secs_f64();
    let joins = total.len();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    drop(keep);
    Ok(json!({
        "scenario": "joins",
        "connections": args.conns,
        "joins": joins,
        "failed": failed,
        "joins_per_second": (joins as f64 / secs).round(),
        "reply_latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "max": total.max() as f64 / 1000.0},
    }))
}
