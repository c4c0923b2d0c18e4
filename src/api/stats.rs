//! `GET /api/stats`: this node's figures for the admin dashboard (and for
//! scripts): gauges read now, rates and latency percentiles over the last
//! few seconds, errors and drops over the last minute, recent cluster
//! events, and the cluster as this node sees it (down nodes included).
//!
//! Rates need an earlier reading. Readings of this node's counters are
//! taken when the endpoint is asked, at most one per `SAMPLE_EVERY`, and
//! kept for about a minute; nothing runs while nobody asks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

use super::ApiState;
use crate::telemetry::reading::{self, MetricSample};

/// Readings closer together than this are not kept.
const SAMPLE_EVERY: Duration = Duration::from_millis(900);
/// Rates and latency are measured over at most this long...
const RATE_WINDOW: Duration = Duration::from_secs(5);
/// ...and at least this long.
const RATE_MIN_WINDOW: Duration = Duration::from_millis(500);
/// Errors and drops are counted over this long.
const RECENT_WINDOW: Duration = Duration::from_secs(60);
/// Readings kept: a minute and a bit at one per `SAMPLE_EVERY`.
const KEPT_READINGS: usize = 72;

/// The latency histogram both delivery paths record into.
const LATENCY: &str = "starling_delivery_latency_seconds";

/// Counters that count something going wrong, with the label that splits
/// them (if any), as `/api/stats` lists them under `errors`.
const PROBLEMS: [(&str, &str, Option<&str>); 6] = [
    ("error", "starling_errors_total", Some("code")),
    ("dropped", "starling_dropped_total", Some("reason")),
    ("publish_failed", "starling_publish_failures_total", Some("reason")),
    ("connection_rejected", "starling_connections_rejected_total", Some("reason")),
    ("handshake_rejected", "starling_handshakes_rejected_total", None),
    ("rate_limited", "starling_rate_limited_total", None),
];

/// Recent readings of this node's counters, oldest first.
#[derive(Default)]
pub struct StatsHistory {
    readings: Mutex<VecDeque<Reading>>,
}

#[derive(Debug, Clone)]
struct Reading {
    at: Instant,
    deliveries: f64,
    publishes: f64,
    latency: Vec<(f64, f64)>,
    /// `(kind, name)` -> total, for every counter of `PROBLEMS`.
    problems: BTreeMap<(&'static str, String), f64>,
}

impl Reading {
    fn from_samples(at: Instant, samples: &[MetricSample]) -> Reading {
        let mut problems = BTreeMap::new();
        for (kind, metric, label) in PROBLEMS {
            match label {
                Some(label) => {
                    for (name, total) in reading::by_label(samples, metric, label) {
                        problems.insert((kind, name), total);
                    }
                }
                None => {
                    problems.insert((kind, String::new()), reading::sum(samples, metric, &[]));
                }
            }
        }
        Reading {
            at,
            deliveries: reading::sum(samples, "starling_deliveries_total", &[]),
            publishes: reading::sum(samples, "starling_publishes_total", &[]),
            latency: reading::histogram_buckets(samples, LATENCY),
            problems,
        }
    }
}

impl StatsHistory {
    /// Keeps `now` (unless the last kept reading is too recent) and returns
    /// the readings to compare it with: for rates, and a minute ago.
    fn record(&self, now: &Reading) -> (Option<Reading>, Option<Reading>) {
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let rate_base = readings
            .iter()
            .find(|r| {
                let age = now.at.duration_since(r.at);
                (RATE_MIN_WINDOW..=RATE_WINDOW).contains(&age)
            })
            .or_else(|| readings.iter().rev().find(|r| now.at.duration_since(r.at) > RATE_WINDOW))
            .cloned();
        let minute_base = readings.iter().find(|r| now.at.duration_since(r.at) <= RECENT_WINDOW).cloned();
        if readings.back().is_none_or(|last| now.at.duration_since(last.at) >= SAMPLE_EVERY) {
            if readings.len() == KEPT_READINGS {
                readings.pop_front();
            }
            readings.push_back(now.clone());
        }
        (rate_base, minute_base)
    }
}

#[derive(Serialize)]
struct Rates {
    window_s: f64,
    deliveries_per_s: f64,
    publishes_per_s: f64,
}

#[derive(Serialize)]
struct Latency {
    window_s: f64,
    deliveries: u64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
}

#[derive(Serialize)]
struct Problem {
    kind: &'static str,
    name: String,
    total: u64,
    /// Since the oldest reading within the last minute (0 without one).
    last_minute: u64,
}

/// `GET /api/stats`.
pub fn stats(state: &ApiState) -> Response {
    let gateway = &state.gateway;
    let node = &*gateway.node;
    let samples = reading::node_samples(&state.metrics.render(), node);
    let now = Reading::from_samples(Instant::now(), &samples);
    let (rate_base, minute_base) = state.admin.stats.record(&now);

    let rates = rate_base.as_ref().map(|base| {
        let window = now.at.duration_since(base.at).as_secs_f64();
        Rates {
            window_s: round(window, 2),
            deliveries_per_s: round((now.deliveries - base.deliveries).max(0.0) / window, 2),
            publishes_per_s: round((now.publishes - base.publishes).max(0.0) / window, 2),
        }
    });
    let latency = rate_base.as_ref().map(|base| {
        let delta = reading::bucket_delta(&now.latency, &base.latency);
        let ms = |q| reading::quantile(&delta, q).map(|seconds| round(seconds * 1000.0, 3));
        Latency {
            window_s: round(now.at.duration_since(base.at).as_secs_f64(), 2),
            deliveries: delta.last().map_or(0, |(_, count)| *count as u64),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
        }
    });
    let errors: Vec<Problem> = now
        .problems
        .iter()
        .filter(|(_, total)| **total > 0.0)
        .map(|((kind, name), total)| {
            let before = minute_base.as_ref().and_then(|b| b.problems.get(&(*kind, name.clone())));
            Problem {
                kind,
                name: name.clone(),
                total: *total as u64,
                last_minute: minute_base
                    .as_ref()
                    .map_or(0, |_| (total - before.unwrap_or(&0.0)).max(0.0) as u64),
            }
        })
        .collect();
    let (queued_frames, queued_bytes) = gateway.sessions.queued();
    let hub = gateway.service.hub();
    let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let body = serde_json::json!({
        "node": node,
        "version": env!("CARGO_PKG_VERSION"),
        "time_ms": time_ms,
        "draining": gateway.is_draining(),
        "connections": gateway.connection_count(),
        "rooms": hub.room_count(),
        "subscriptions": hub.subscription_count(),
        "history_bytes": hub.history_bytes(),
        "queued_frames": queued_frames,
        "queued_bytes": queued_bytes,
        "totals": {"deliveries": now.deliveries as u64, "publishes": now.publishes as u64},
        "rates": rates,
        "latency": latency,
        "errors": errors,
        "events": gateway.metrics.events.newest_first(),
        "cluster": cluster(state),
    });
    warp::reply::json(&body).into_response()
}

/// The cluster as this node sees it: live nodes from gossip, and nodes of
/// the Raft group gossip no longer sees, as `down`.
fn cluster(state: &ApiState) -> serde_json::Value {
    let Some((group, membership)) = &state.cluster else {
        return super::handlers::single_node_view(state);
    };
    let view = crate::cluster::view_with_down(group, membership);
    let metrics = group.metrics().borrow().clone();
    let mut body = serde_json::json!(view);
    body["raft"] = serde_json::json!({
        "last_log_index": metrics.last_log_index.unwrap_or(0),
        "applied_index": metrics.last_applied.map_or(0, |l| l.index),
    });
    body
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, deliveries: f64) -> Reading {
        Reading { at, deliveries, publishes: 0.0, latency: Vec::new(), problems: BTreeMap::new() }
    }

    #[test]
    fn rates_compare_with_a_reading_a_few_seconds_old_and_readings_are_spaced() {
        let history = StatsHistory::default();
        let start = Instant::now();
        let (rate, minute) = history.record(&reading(start, 0.0));
        assert!(rate.is_none() && minute.is_none(), "nothing to compare the first reading with");
        // Too soon after the first: compared with nothing, and not kept.
        let (rate, _) = history.record(&reading(start + Duration::from_millis(300), 1.0));
        assert!(rate.is_none());
        assert_eq!(history.readings.lock().unwrap().len(), 1);
        for second in 1..=10u64 {
            history.record(&reading(start + Duration::from_secs(second), second as f64 * 10.0));
        }
        let (rate, minute) = history.record(&reading(start + Duration::from_millis(10_500), 105.0));
        // The oldest reading at most 5 s old: the one at 6 s.
        assert_eq!(rate.unwrap().deliveries, 60.0);
        assert_eq!(minute.unwrap().deliveries, 0.0);
        // Long after: the newest reading older than the window.
        let (rate, minute) = history.record(&reading(start + Duration::from_secs(100), 500.0));
        assert_eq!(rate.unwrap().deliveries, 100.0);
        assert!(minute.is_none());
    }
}
