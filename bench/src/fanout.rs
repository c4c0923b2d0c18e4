//! Fan-out: members in rooms, one publisher per room on a fixed schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{connect, cpu_seconds, rss_bytes};

#[derive(Args, Clone)]
pub struct FanoutArgs {
    /// WebSocket URL(s), comma-separated; members are spread over them.
    #[arg(long)]
    url: String,
    /// Where the publishers connect (default: the first `--url`).
    #[arg(long)]
    publish_url: Option<String>,
    /// A token that allows `--namespace:*` for the whole run.
    #[arg(long)]
    token: String,
    /// Members in total, spread evenly over the rooms.
    #[arg(long)]
    members: usize,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Messages per second published into each room.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Size of the padding in each message's data.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    #[arg(long, default_value = "chat")]
    namespace: String,
    /// The server's pid, to report its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    offset: Option<u64>,
    data: Option<Stamp>,
}

#[derive(Deserialize)]
struct Stamp {
    /// Scheduled send time, microseconds after the run's start.
    t: u64,
}

/// What one member saw.
struct MemberStats {
    received: u64,
    lost: u64,
    duplicates: u64,
    reordered: u64,
    latency_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

pub async fn run(args: FanoutArgs) -> anyhow::Result<Value> {
    anyhow::ensure!(args.rooms > 0 && args.members >= args.rooms, "need at least one member per room");
    let room_name = |i: usize| format!("{}:bench-{i}", args.namespace);
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(256));
    let start_cell: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();

    let urls: Vec<String> = args.url.split(',').map(str::to_string).collect();
    let publish_url = args.publish_url.clone().unwrap_or_else(|| urls[0].clone());
    let mut members = Vec::new();
    for i in 0..args.members {
        let (url, token, room) =
            (urls[i % urls.len()].clone(), args.token.clone(), room_name(i % args.rooms));
        let (gate, ready, mut stop, start_cell) =
            (gate.clone(), ready_tx.clone(), stop_rx.clone(), start_cell.clone());
        members.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let mut ws = connect(&url, &token).await?;
            ws.send(Message::text(json!({"type":"join","id":1,"room":room}).to_string())).await?;
            while let Some(Ok(Message::Text(text))) = ws.next().await {
                if text.contains(r#""type":"reply""#) {
                    anyhow::ensure!(text.contains(r#""ok":true"#), "join failed: {text}");
                    break;
                }
            }
            drop(permit);
            let _ = ready.send(());
            let mut stats =
                MemberStats { received: 0, lost: 0, duplicates: 0, reordered: 0, latency_us: histogram() };
            let mut last_offset = 0u64;
            loop {
                let message = tokio::select! {
                    _ = stop.changed() => break,
                    message = ws.next() => message,
                };
                let Some(Ok(Message::Text(text))) = message else { break };
                if text.as_str() == r#"{"type":"ping"}"# {
                    ws.send(Message::text(r#"{"type":"pong"}"#)).await?;
                    continue;
                }
                let Ok(incoming) = serde_json::from_str::<Incoming>(&text) else { continue };
                if incoming.kind != "message" {
                    continue;
                }
                let (Some(offset), Some(stamp), Some(start)) =
                    (incoming.offset, incoming.data, start_cell.get())
                else {
                    continue;
                };
                stats.received += 1;
                match offset.cmp(&(last_offset + 1)) {
                    std::cmp::Ordering::Equal => last_offset = offset,
                    std::cmp::Ordering::Greater => {
                        stats.lost += offset - last_offset - 1;
                        last_offset = offset;
                    }
                    std::cmp::Ordering::Less if offset == last_offset => stats.duplicates += 1,
                    std::cmp::Ordering::Less => stats.reordered += 1,
                }
                let now_us = start.elapsed().as_micros() as u64;
                let _ = stats.latency_us.record(now_us.saturating_sub(stamp.t).max(1));
            }
            anyhow::Ok(stats)
        }));
    }
    drop(ready_tx);
    let mut ready = 0;
    while ready < args.members && ready_rx.recv().await.is_some() {
        ready += 1;
        if ready % 1000 == 0 {
            eprintln!("fanout: {ready} members joined");
        }
    }
    anyhow::ensure!(ready == args.members, "only {ready} of {} members joined", args.members);

    // Publishers are members too (the namespace lets members publish); each
    // drains its own socket so it never becomes a slow consumer.
    let mut publishers = Vec::new();
    let mut drains = Vec::new();
    for r in 0..args.rooms {
        let mut ws = connect(&publish_url, &args.token).await?;
        ws.send(Message::text(json!({"type":"join","id":1,"room":room_name(r)}).to_string())).await?;
        let (sink, mut stream) = ws.split();
        drains.push(tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} }));
        publishers.push((sink, room_name(r)));
    }
    let cpu_before = args.server_pid.map(cpu_seconds).transpose()?;
    let start = Instant::now();
    start_cell.set(start).expect("start is set once");
    let duration = Duration::from_secs(args.duration_secs);
    let padding = "x".repeat(args.payload_bytes);
    let mut publisher_tasks = Vec::new();
    for (mut ws, room) in publishers {
        let (rate, padding) = (args.rate, padding.clone());
        publisher_tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let scheduled = Duration::from_secs_f64(sent as f64 / rate);
                if scheduled >= duration {
                    break;
                }
                tokio::time::sleep_until((start + scheduled).into()).await;
                let t = scheduled.as_micros() as u64;
                let frame = json!({"type":"publish","room":room,"data":{"t":t,"p":padding}});
                ws.send(Message::text(frame.to_string())).await?;
                sent += 1;
            }
            // Keep the socket open (and drained) until the members are done.
            anyhow::Ok((sent, ws))
        }));
    }
    let mut published = 0u64;
    let mut keep = Vec::new();
    for task in publisher_tasks {
        let (sent, ws) = task.await??;
        published += sent;
        keep.push(ws);
    }
    let publish_secs = start.elapsed().as_secs_f64();
    let expected = published * (args.members / args.rooms) as u64;
    // Let in-flight deliveries land (bounded), then stop.
    let grace = Instant::now() + Duration::from_secs(5);
    let cpu_after = args.server_pid.map(cpu_seconds).transpose()?;
    let rss = args.server_pid.map(rss_bytes).transpose()?;
    tokio::time::sleep_until(grace.into()).await;
    let _ = stop_tx.send(true);
    let mut total = histogram();
    let (mut received, mut lost, mut duplicates, mut reordered) = (0, 0, 0, 0);
    for member in members {
        let stats = member.await??;
        received += stats.received;
        lost += stats.lost;
        duplicates += stats.duplicates;
        reordered += stats.reordered;
        total.add(&stats.latency_us)?;
    }
    drop(keep);
    for drain in drains {
        drain.abort();
    }
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "scenario": "fanout",
        "members": args.members,
        "rooms": args.rooms,
        "rate_per_room": args.rate,
        "payload_bytes": args.payload_bytes,
        "published": published,
        "expected_deliveries": expected,
        "received": received,
        "missing": expected.saturating_sub(received),
        "lost_gaps": lost,
        "duplicates": duplicates,
        "reordered": reordered,
        "deliveries_per_second": (received as f64 / publish_secs).round(),
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": total.max() as f64 / 1000.0},
        "server_cpu_seconds": cpu_before.zip(cpu_after).map(|(a, b)| b - a),
        "server_rss_bytes": rss,
    }))
}
