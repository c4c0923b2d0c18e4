//! Idle connections: the server's memory per connection, from the slope of
//! its RSS over several connection counts. Connections are held by child
//! processes (`starling-bench hold`), at most `--shard-size` each, so one
//! process's file limit (about 20k here) never caps the count.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

use crate::proto::{Conn, Protocol};
use crate::sys::{parse_pids, total_rss};
use crate::target::Target;

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: Target,
    /// Connection counts at which the RSS is read, ascending.
    #[arg(long, default_value = "1000,5000,10000,19000")]
    pub steps: String,
    /// Server pids (comma-separated) whose summed RSS is measured.
    #[arg(long)]
    pub server_pids: String,
    /// Connections per holding child process.
    #[arg(long, default_value_t = 10_000)]
    pub shard_size: usize,
    /// The `starling-bench` executable for the children (default: this one).
    #[arg(long)]
    pub exe: Option<String>,
    /// Longest wait for the RSS to settle after each step.
    #[arg(long, default_value_t = 5.0)]
    pub settle_secs: f64,
}

#[derive(Args, Clone, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub conns: usize,
}

/// Child side: open `conns` connections (Pusher: each subscribed to one
/// public channel), print `ready N`, hold them (answering heartbeats)
/// until stdin closes.
pub async fn hold(args: HoldArgs) -> anyhow::Result<Value> {
    let urls = args.target.urls();
    let gate = std::sync::Arc::new(Semaphore::new(128));
    let mut opening = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let (url, token, gate) =
            (urls[i % urls.len()].clone(), args.target.credential().to_string(), gate.clone());
        opening.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore open");
            let mut conn = Conn::connect(args.target.protocol, &url, &token).await?;
            // A Pusher client is subscribed to something: one public channel
            // of 100 (as bench/pusher-idle.mjs measured it).
            if args.target.protocol == Protocol::Pusher {
                conn.join(&format!("bench:{}", i % 100)).await?;
            }
            drop(permit);
            anyhow::Ok(conn)
        }));
    }
    let mut held = Vec::with_capacity(args.conns);
    for task in opening {
        let mut conn = task.await??;
        held.push(tokio::spawn(async move { while let Some(Ok(_)) = conn.next().await {} }));
    }
    println!("ready {}", held.len());
    let mut sink = Vec::new();
    tokio::io::stdin().read_to_end(&mut sink).await?;
    // Nothing more on stdout: the parent stopped reading it.
    Ok(Value::Null)
}

/// A holding child; its stdout reader is kept so the pipe stays open.
struct Holder {
    child: Child,
    _stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_holder(exe: &str, args: &IdleArgs, conns: usize) -> anyhow::Result<Holder> {
    let mut child = Command::new(exe)
        .arg("hold")
        .args(args.target.to_args())
        .args(["--conns", &conns.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {exe} hold"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("holder did not get ready in 120 s")??;
    match line {
        Some(l) if l == format!("ready {conns}") => Ok(Holder { child, _stdout: lines }),
        other => bail!("holder failed: {other:?}"),
    }
}

/// Polls the RSS until two readings 500 ms apart differ by under 1 %, or
/// `patience` runs out; returns the last reading.
async fn settled_rss(pids: &[u32], patience: Duration) -> u64 {
    let deadline = Instant::now() + patience;
    let mut previous = total_rss(pids);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = total_rss(pids);
        if now.abs_diff(previous) * 100 < now || Instant::now() >= deadline {
            return now;
        }
        previous = now;
    }
}

/// Least-squares slope of y over x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let num: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = points.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

pub async fn run(args: IdleArgs) -> anyhow::Result<Value> {
    let pids = parse_pids(&args.server_pids)?;
    anyhow::ensure!(!pids.is_empty(), "--server-pids is required");
    let exe = match &args.exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?.to_string_lossy().into_owned(),
    };
    let counts: Vec<usize> = args.steps.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?;
    let patience = Duration::from_secs_f64(args.settle_secs);
    let baseline = settled_rss(&pids, patience).await;
    let mut points = vec![(0.0, baseline as f64)];
    let mut rows = Vec::new();
    let mut children = Vec::new();
    let mut open = 0usize;
    for &target in &counts {
        anyhow::ensure!(target > open, "steps must ascend");
        let started = Instant::now();
        while open < target {
            let n = (target - open).min(args.shard_size);
            children.push(spawn_holder(&exe, &args, n).await?);
            open += n;
        }
        let connect_secs = started.elapsed().as_secs_f64();
        let rss = settled_rss(&pids, patience).await;
        eprintln!("idle: {open} connections, server RSS {:.1} MB", rss as f64 / 1e6);
        points.push((open as f64, rss as f64));
        rows.push(json!({
            "connections": open,
            "server_rss_bytes": rss,
            "bytes_per_connection": (rss.saturating_sub(baseline) as f64 / open as f64).round(),
            "connect_seconds": connect_secs,
        }));
    }
    for Holder { mut child, .. } in children {
        drop(child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    Ok(json!({
        "scenario": "idle",
        "protocol": args.target.protocol,
        "server_rss_baseline_bytes": baseline,
        "steps": rows,
        "bytes_per_connection_slope": slope(&points).round(),
    }))
}

#[cfg(test)]
mod tests {
    /// The slope of exactly linear points is their gradient.
    #[test]
    fn slope_of_a_line() {
        let points = [(0.0, 100.0), (1000.0, 8_100.0), (5000.0, 40_100.0)];
        assert!((super::slope(&points) - 8.0).abs() < 1e-9);
    }
}
