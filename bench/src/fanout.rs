//! Fan-out: members in rooms, one publisher per room on a fixed schedule.
//!
//! Latency is measured from each message's *scheduled* send time, so a
//! stalled server (or publisher) shows its delay instead of hiding it
//! (no coordinated omission). Every member checks the publisher's sequence
//! numbers: gaps (losses), duplicates and reordering are counted. A run is
//! a list of steps over the same connected members; a search raises the
//! rate step by step until p99 exceeds the bound or anything is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::proto::{bench_data, now_us, publish_frame, Conn, Incoming, Protocol};
use crate::sys::{cpu_seconds, kill9, parse_pids, total_cpu, total_rss};
use crate::target::{split_urls, Target};

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    // Members are spread over `--url`; the token must allow `--namespace:*`.
    #[command(flatten)]
    pub target: Target,
    /// Where the publishers connect, comma-separated (default: `--url`).
    #[arg(long)]
    pub publish_url: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    #[arg(long)]
    pub members_per_room: usize,
    /// Messages per second per room, comma-separated: one step per rate.
    #[arg(long, conflicts_with = "search_from")]
    pub rates: Option<String>,
    /// Search: start at this many deliveries/s and step up (or down) by
    /// `--factor` until p99 exceeds `--p99-bound-ms` or anything is lost.
    #[arg(long)]
    pub search_from: Option<f64>,
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    #[arg(long, default_value_t = 6)]
    pub max_steps: usize,
    #[arg(long, default_value_t = 100.0)]
    pub p99_bound_ms: f64,
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// How long to wait for in-flight deliveries after the last publish.
    #[arg(long, default_value_t = 3.0)]
    pub grace_secs: f64,
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    #[arg(long, default_value = "chat")]
    pub namespace: String,
    /// Server pids (comma-separated) whose CPU time and RSS are reported.
    #[arg(long, default_value = "")]
    pub server_pids: String,
    /// `kill -9` this pid during the (single) step, `--kill-after-secs` in.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    #[arg(long, default_value_t = 3.0)]
    pub kill_after_secs: f64,
}

/// What one member saw in the current step.
struct MemberStats {
    step: u64,
    received: u64,
    gaps: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    last_seq: Option<u64>,
    latency_us: Histogram<u64>,
    /// Messages scheduled at or after this time (µs) mark recovery.
    kill_us: Option<u64>,
    first_after_kill_us: Option<u64>,
    disconnected: bool,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl MemberStats {
    fn new(step: u64, kill_us: Option<u64>) -> Self {
        MemberStats {
            step,
            received: 0,
            gaps: 0,
            duplicates: 0,
            reordered: 0,
            late: 0,
            last_seq: None,
            latency_us: histogram(),
            kill_us,
            first_after_kill_us: None,
            disconnected: false,
        }
    }

    fn record(&mut self, t: u64, s: u64, k: u64, now: u64) -> bool {
        if k != self.step {
            self.late += 1;
            return false;
        }
        let expected = self.last_seq.map_or(0, |l| l + 1);
        match s.cmp(&expected) {
            std::cmp::Ordering::Equal => self.last_seq = Some(s),
            std::cmp::Ordering::Greater => {
                self.gaps += s - expected;
                self.last_seq = Some(s);
            }
            std::cmp::Ordering::Less if Some(s) == self.last_seq => self.duplicates += 1,
            std::cmp::Ordering::Less => self.reordered += 1,
        }
        self.received += 1;
        let _ = self.latency_us.record(now.saturating_sub(t).max(1));
        if let Some(kill) = self.kill_us {
            if t >= kill && self.first_after_kill_us.is_none() {
                self.first_after_kill_us = Some(now);
            }
        }
        true
    }
}

struct Run {
    step: u64,
    /// This room's first publish: the step's start plus a phase that
    /// spreads the rooms evenly over one period, so that 1,000 rooms at
    /// 1 msg/s make a steady 1,000 msg/s rather than one burst a second.
    start_us: u64,
    rate: f64,
    duration_us: u64,
    done: oneshot::Sender<u64>,
}

/// Connected members and publishers, reused by every step of a run.
pub struct Swarm {
    args: FanoutArgs,
    members: Vec<(usize, Arc<Mutex<MemberStats>>)>,
    publishers: Vec<mpsc::Sender<Run>>,
    received: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    /// Publishes the server refused with an error reply (the publisher was
    /// told; nothing was accepted and lost).
    refused: Arc<AtomicU64>,
    next_step: u64,
    /// Progress lines say "warm-up" instead of the step number.
    warming_up: bool,
}

fn room_name(namespace: &str, i: usize) -> String {
    format!("{namespace}:bench-{i}")
}

impl Swarm {
    pub async fn connect(args: FanoutArgs) -> anyhow::Result<Swarm> {
        anyhow::ensure!(args.rooms > 0 && args.members_per_room > 0, "need rooms and members");
        let urls = args.target.urls();
        let publish_urls = args.publish_url.as_deref().map(split_urls).unwrap_or_else(|| urls.clone());
        let received = Arc::new(AtomicU64::new(0));
        let gate = Arc::new(Semaphore::new(128));
        let total = args.rooms * args.members_per_room;
        let mut joining = Vec::with_capacity(total);
        for i in 0..total {
            let room = i % args.rooms;
            let stats = Arc::new(Mutex::new(MemberStats::new(u64::MAX, None)));
            let (url, token, name) = (
                urls[i % urls.len()].clone(),
                args.target.credential().to_string(),
                room_name(&args.namespace, room),
            );
            let (gate, protocol, shared, counter) =
                (gate.clone(), args.target.protocol, stats.clone(), received.clone());
            joining.push((
                room,
                stats,
                tokio::spawn(async move {
                    let permit = gate.acquire_owned().await.expect("semaphore open");
                    let mut conn = Conn::connect(protocol, &url, &token).await?;
                    conn.join(&name).await?;
                    drop(permit);
                    anyhow::Ok(tokio::spawn(member_loop(conn, shared, counter)))
                }),
            ));
        }
        let mut members = Vec::with_capacity(total);
        for (n, (room, stats, task)) in joining.into_iter().enumerate() {
            task.await??;
            members.push((room, stats));
            if (n + 1) % 2000 == 0 {
                eprintln!("fanout: {} of {total} members joined", n + 1);
            }
        }
        let sent = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut publishers = Vec::with_capacity(args.rooms);
        let padding = "x".repeat(args.payload_bytes);
        for room in 0..args.rooms {
            let url = &publish_urls[room % publish_urls.len()];
            let mut conn = Conn::connect(args.target.protocol, url, args.target.credential()).await?;
            let name = room_name(&args.namespace, room);
            conn.join(&name).await?;
            let (tx, rx) = mpsc::channel(1);
            let counters = (sent.clone(), refused.clone());
            tokio::spawn(publisher_loop(conn, args.target.protocol, name, padding.clone(), rx, counters));
            publishers.push(tx);
        }
        Ok(Swarm { args, members, publishers, received, sent, refused, next_step: 0, warming_up: false })
    }

    /// One second of publishing at `rate`, not reported.
    pub async fn warm_up(&mut self, rate: f64) -> anyhow::Result<()> {
        let (duration, grace) = (self.args.duration_secs, self.args.grace_secs);
        self.args.duration_secs = 1.0;
        self.args.grace_secs = 1.0;
        self.warming_up = true;
        let result = self.step(rate, None).await;
        self.warming_up = false;
        (self.args.duration_secs, self.args.grace_secs) = (duration, grace);
        result.map(drop)
    }

    /// Publishes at `rate` per room for `duration`, waits for the deliveries
    /// (at most `grace`), and reports what the members saw.
    pub async fn step(&mut self, rate: f64, kill: Option<(u32, Duration)>) -> anyhow::Result<Value> {
        let step = self.next_step;
        self.next_step += 1;
        let label = if self.warming_up { "warm-up".to_string() } else { format!("step {step}") };
        let duration_us = (self.args.duration_secs * 1e6) as u64;
        let start_us = now_us() + 200_000;
        let refused_before = self.refused.load(Ordering::Relaxed);
        let kill_us = kill.map(|(_, after)| start_us + after.as_micros() as u64);
        for (_, stats) in &self.members {
            let mut stats = stats.lock().expect("stats lock");
            let disconnected = stats.disconnected;
            *stats = MemberStats::new(step, kill_us);
            stats.disconnected = disconnected;
        }
        self.received.store(0, Ordering::Relaxed);
        self.sent.store(0, Ordering::Relaxed);
        let pids = parse_pids(&self.args.server_pids)?;
        let cpu_before = total_cpu(&pids);
        let own_cpu_before = cpu_seconds(std::process::id())?;
        let mut done = Vec::with_capacity(self.publishers.len());
        let rooms = self.publishers.len() as f64;
        for (room, publisher) in self.publishers.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            let phase_us = (room as f64 / rooms * 1e6 / rate) as u64;
            let run = Run { step, start_us: start_us + phase_us, rate, duration_us, done: tx };
            publisher.send(run).await.map_err(|_| anyhow::anyhow!("a publisher ended"))?;
            done.push(rx);
        }
        if let (Some((pid, _)), Some(at)) = (kill, kill_us) {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(at.saturating_sub(now_us()))).await;
                if let Err(e) = kill9(pid) {
                    eprintln!("fanout: {e}");
                }
                eprintln!("fanout: killed pid {pid}");
            });
        }
        let per_member_expected = (rate * self.args.duration_secs).ceil() as u64;
        let expected_total = per_member_expected * self.members.len() as u64;
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        let mut sent_per_room = Vec::with_capacity(done.len());
        for mut rx in done {
            let sent = loop {
                tokio::select! {
                    sent = &mut rx => break sent.unwrap_or(0),
                    _ = progress.tick() => eprintln!(
                        "fanout {label} @{rate:.1}/room/s: {:.0} s, sent {}, delivered {} of ~{expected_total}",
                        now_us().saturating_sub(start_us) as f64 / 1e6,
                        self.sent.load(Ordering::Relaxed),
                        self.received.load(Ordering::Relaxed),
                    ),
                }
            };
            sent_per_room.push(sent);
        }
        let published_secs = now_us().saturating_sub(start_us) as f64 / 1e6;
        // Deliveries owed to, and received by, the members still connected
        // (a killed node's members are left out).
        let tally = |members: &[(usize, Arc<Mutex<MemberStats>>)]| -> (u64, u64) {
            members.iter().fold((0, 0), |(owed, got), (room, stats)| {
                let stats = stats.lock().expect("stats lock");
                match stats.disconnected {
                    true => (owed, got),
                    false => (owed + sent_per_room[*room], got + stats.received),
                }
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(self.args.grace_secs);
        loop {
            let (owed, got) = tally(&self.members);
            if got >= owed || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (expected, _) = tally(&self.members);
        let server_cpu = total_cpu(&pids) - cpu_before;
        let client_cpu = cpu_seconds(std::process::id())? - own_cpu_before;
        let mut latency = histogram();
        let (mut received, mut missing, mut gaps, mut duplicates, mut reordered, mut late) =
            (0, 0, 0, 0, 0, 0);
        let (mut disconnected, mut recovered_at, mut unrecovered) = (0u64, 0u64, 0u64);
        for (room, stats) in &self.members {
            let stats = stats.lock().expect("stats lock");
            if stats.disconnected {
                disconnected += 1;
                continue;
            }
            received += stats.received;
            missing += sent_per_room[*room].saturating_sub(stats.received);
            gaps += stats.gaps;
            duplicates += stats.duplicates;
            reordered += stats.reordered;
            late += stats.late;
            latency.add(&stats.latency_us)?;
            match stats.first_after_kill_us {
                Some(at) => recovered_at = recovered_at.max(at),
                None if kill_us.is_some() => unrecovered += 1,
                None => {}
            }
        }
        let published: u64 = sent_per_room.iter().sum();
        let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
        let p99 = ms(0.99);
        let ok = missing == 0
            && duplicates == 0
            && reordered == 0
            && disconnected == 0
            && received > 0
            && p99 <= self.args.p99_bound_ms;
        let duration = self.args.duration_secs;
        let mut report = json!({
            "step": step,
            "rate_per_room": rate,
            "published": published,
            "publishes_refused": self.refused.load(Ordering::Relaxed) - refused_before,
            "expected_deliveries": expected,
            "received": received,
            "missing": missing,
            "gaps": gaps,
            "duplicates": duplicates,
            "reordered": reordered,
            "late": late,
            "disconnected_members": disconnected,
            "deliveries_per_second": (received as f64 / duration).round(),
            "publish_seconds": published_secs,
            "latency_ms": {"p50": ms(0.5), "p99": p99, "p999": ms(0.999), "max": latency.max() as f64 / 1000.0},
            "server_cpu_seconds": server_cpu,
            "server_cpu_us_per_delivery": if received > 0 { server_cpu * 1e6 / received as f64 } else { 0.0 },
            "server_rss_bytes": total_rss(&pids),
            "client_cpu_share": client_cpu / duration,
            "ok": ok,
        });
        if let Some(at) = kill_us {
            report["kill"] = json!({
                "members_unrecovered": unrecovered,
                "recovery_ms": if unrecovered == 0 && recovered_at > 0 {
                    Some(recovered_at.saturating_sub(at) as f64 / 1000.0)
                } else {
                    None
                },
            });
        }
        eprintln!(
            "fanout {label} @{rate:.1}/room/s: {} deliveries/s, p99 {p99} ms, missing {missing}, {}",
            report["deliveries_per_second"],
            if ok { "ok" } else { "FAILED the bound" }
        );
        Ok(report)
    }
}

async fn member_loop(mut conn: Conn, stats: Arc<Mutex<MemberStats>>, received: Arc<AtomicU64>) {
    loop {
        match conn.next().await {
            Some(Ok(Incoming::Delivery { t, s, k })) => {
                let now = now_us();
                if stats.lock().expect("stats lock").record(t, s, k, now) {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    stats.lock().expect("stats lock").disconnected = true;
}

/// A publisher is a member of its room too (Starling lets members publish);
/// it drains its own socket so it never becomes a slow consumer.
async fn publisher_loop(
    mut conn: Conn,
    protocol: Protocol,
    room: String,
    padding: String,
    mut runs: mpsc::Receiver<Run>,
    (sent_total, refused): (Arc<AtomicU64>, Arc<AtomicU64>),
) {
    loop {
        let run = tokio::select! {
            run = runs.recv() => match run { Some(run) => run, None => return },
            incoming = conn.next() => match incoming {
                Some(Ok(Incoming::Refused)) => { refused.fetch_add(1, Ordering::Relaxed); continue }
                Some(Ok(_)) => continue,
                _ => return,
            },
        };
        let mut sent = 0u64;
        loop {
            let offset_us = (sent as f64 * 1e6 / run.rate) as u64;
            if offset_us >= run.duration_us {
                break;
            }
            let scheduled = run.start_us + offset_us;
            let wait = Duration::from_micros(scheduled.saturating_sub(now_us()));
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut sleep => break,
                    incoming = conn.next() => match incoming {
                        Some(Ok(Incoming::Refused)) => { refused.fetch_add(1, Ordering::Relaxed); }
                        Some(Ok(_)) => {}
                        _ => {
                            let _ = run.done.send(sent);
                            return;
                        }
                    },
                }
            }
            let frame = publish_frame(protocol, &room, &bench_data(scheduled, sent, run.step, &padding));
            if conn.ws.send(Message::text(frame)).await.is_err() {
                let _ = run.done.send(sent);
                return;
            }
            sent += 1;
            sent_total.fetch_add(1, Ordering::Relaxed);
        }
        let _ = run.done.send(sent);
    }
}

/// Runs the steps `args` asks for and returns every step's report.
pub async fn run(args: FanoutArgs) -> anyhow::Result<Value> {
    let per_room = args.members_per_room as f64;
    let rooms = args.rooms as f64;
    let kill = args.kill_pid.map(|pid| (pid, Duration::from_secs_f64(args.kill_after_secs)));
    let mut swarm = Swarm::connect(args.clone()).await?;
    // A short unreported warm-up, so the first step does not pay for
    // allocations and caches that the connections and joins left cold.
    let warm_rate = args.search_from.map_or(1.0, |d| d / (rooms * per_room)).min(10.0);
    swarm.warm_up(warm_rate).await?;
    let mut steps = Vec::new();
    if let Some(start) = args.search_from {
        let mut rate = start / (rooms * per_room);
        let (mut best_ok, mut first_fail): (Option<f64>, Option<f64>) = (None, None);
        for _ in 0..args.max_steps {
            let report = swarm.step(rate, None).await?;
            let ok = report["ok"] == true;
            steps.push(report);
            if ok {
                best_ok = Some(rate);
                if first_fail.is_some() {
                    break;
                }
                rate *= args.factor;
            } else {
                first_fail = Some(rate);
                if best_ok.is_some() {
                    break;
                }
                rate /= args.factor;
            }
        }
        // One refinement between the last pass and the first failure.
        if let (Some(ok), Some(fail)) = (best_ok, first_fail) {
            if fail > ok {
                steps.push(swarm.step((ok * fail).sqrt(), None).await?);
            }
        }
    } else {
        let rates = args.rates.as_deref().unwrap_or("10");
        for rate in rates.split(',') {
            steps.push(swarm.step(rate.trim().parse()?, kill).await?);
        }
    }
    let best = steps
        .iter()
        .filter(|s| s["ok"] == true)
        .max_by(|a, b| {
            a["deliveries_per_second"]
                .as_f64()
                .partial_cmp(&b["deliveries_per_second"].as_f64())
                .expect("numbers")
        })
        .cloned();
    Ok(json!({
        "scenario": "fanout",
        "protocol": args.target.protocol,
        "rooms": args.rooms,
        "members_per_room": args.members_per_room,
        "payload_bytes": args.payload_bytes,
        "duration_secs": args.duration_secs,
        "p99_bound_ms": args.p99_bound_ms,
        "steps": steps,
        "best": best,
    }))
}
