//! Idle connections: the server's memory per connection.

use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{connect, rss_bytes};

#[derive(Args)]
pub struct IdleArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:7601/ws
    #[arg(long)]
    url: String,
    /// A token valid for the whole run.
    #[arg(long)]
    token: String,
    /// Connections to open (at most about 19,000 per process).
    #[arg(long)]
    conns: usize,
    /// The server's pid, to read its RSS.
    #[arg(long)]
    server_pid: u32,
    /// Join this room on every connection (idle members instead of bare sockets).
    #[arg(long)]
    room: Option<String>,
    /// How long to hold the connections after the last one opened.
    #[arg(long, default_value_t = 2)]
    hold_secs: u64,
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Value> {
    let rss_before = rss_bytes(args.server_pid)?;
    let started = Instant::now();
    let gate = std::sync::Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(args.conns);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..args.conns {
        let (url, token, room, gate, ready) =
            (args.url.clone(), args.token.clone(), args.room.clone(), gate.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let mut ws = connect(&url, &token).await?;
            if let Some(room) = room {
                ws.send(Message::text(json!({"type":"join","id":1,"room":room}).to_string())).await?;
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    if text.contains(r#""type":"reply""#) {
                        break;
                    }
                }
            }
            drop(permit);
            let _ = ready.send(());
            // Stay connected, answering heartbeats, until the run ends.
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Text(text) = message {
                    if text.as_str() == r#"{"type":"ping"}"# {
                        ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    drop(ready_tx);
    let mut opened = 0;
    while opened < args.conns {
        if ready_rx.recv().await.is_none() {
            break;
        }
        opened += 1;
        if opened % 2000 == 0 {
            eprintln!("idle: {opened} connections");
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let rss_after = rss_bytes(args.server_pid)?;
    for task in &tasks {
        task.abort();
    }
    let per_conn = (rss_after.saturating_sub(rss_before)) as f64 / opened.max(1) as f64;
    Ok(json!({
        "scenario": "idle",
        "connections": opened,
        "connect_seconds": connect_secs,
        "server_rss_before_bytes": rss_before,
        "server_rss_after_bytes": rss_after,
        "server_bytes_per_connection": per_conn.round(),
    }))
}
