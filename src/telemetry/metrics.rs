//! Metric names and pre-registered handles.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::protocol::{CloseCode, ErrorCode};

/// Renders the Prometheus text for `/metrics`.
pub type MetricsHandle = PrometheusHandle;

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Installs the process-wide Prometheus recorder once and returns its handle.
/// Several nodes in one process (tests) share it.
pub fn install_recorder() -> MetricsHandle {
    static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder =
                PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS).expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding
            // program; then ours still renders what it recorded (nothing).
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Every metric the node updates, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub connections: Gauge,
    pub connections_opened: Counter,
    pub handshakes_rejected: Counter,
    /// TCP connections closed before any HTTP response because
    /// `limits.max_pending_handshakes` was reached.
    pub rejected_pending_handshakes: Counter,
    /// The same for `limits.pending_handshakes_per_ip`.
    pub rejected_pending_handshakes_per_ip: Counter,
    pub joins: Counter,
    pub leaves: Counter,
    pub publishes: Counter,
    pub deliveries: Counter,
    pub drops_slow_consumer: Counter,
    pub rate_limited: Counter,
    /// Publish-to-deliver latency of messages published on this node.
    pub delivery_latency_local: Histogram,
    /// The same for messages that crossed nodes (publisher's node or owner
    /// elsewhere); across machines it includes their clock skew.
    pub delivery_latency_cross: Histogram,
    pub rooms: Gauge,
    /// Bytes of room history held on this node.
    pub history_bytes: Gauge,
    /// Messages dropped from history: the room's `history_size` was reached,
    /// `history_ttl_ms` passed, `limits.history_bytes` was reached.
    pub history_trimmed_size: Counter,
    pub history_trimmed_ttl: Counter,
    pub history_trimmed_bytes: Counter,
    /// Recent cluster events this node saw (shared by every clone).
    pub events: std::sync::Arc<super::RecentEvents>,
    errors: Vec<(ErrorCode, Counter)>,
    node: String,
}

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        let node = node.to_string();
        let errors = ErrorCode::ALL
            .iter()
            .map(|&code| {
                let c = counter!("starling_errors_total", "node" => node.clone(), "code" => code.as_str());
                (code, c)
            })
            .collect();
        Metrics {
            connections: gauge!("starling_connections", "node" => node.clone()),
            connections_opened: counter!("starling_connections_opened_total", "node" => node.clone()),
            handshakes_rejected: counter!("starling_handshakes_rejected_total", "node" => node.clone()),
            rejected_pending_handshakes: counter!(
                "starling_connections_rejected_total", "node" => node.clone(), "reason" => "pending_handshakes"
            ),
            rejected_pending_handshakes_per_ip: counter!(
                "starling_connections_rejected_total", "node" => node.clone(), "reason" => "pending_handshakes_per_ip"
            ),
            joins: counter!("starling_joins_total", "node" => node.clone()),
            leaves: counter!("starling_leaves_total", "node" => node.clone()),
            publishes: counter!("starling_publishes_total", "node" => node.clone()),
            deliveries: counter!("starling_deliveries_total", "node" => node.clone()),
            drops_slow_consumer: counter!("starling_dropped_total", "node" => node.clone(), "reason" => "slow_consumer"),
            rate_limited: counter!("starling_rate_limited_total", "node" => node.clone()),
            delivery_latency_local: histogram!(
                "starling_delivery_latency_seconds", "node" => node.clone(), "path" => "local"
            ),
            delivery_latency_cross: histogram!(
                "starling_delivery_latency_seconds", "node" => node.clone(), "path" => "cross_node"
            ),
            rooms: gauge!("starling_rooms", "node" => node.clone()),
            history_bytes: gauge!("starling_history_bytes", "node" => node.clone()),
            history_trimmed_size: counter!(
                "starling_history_trimmed_total", "node" => node.clone(), "reason" => "size"
            ),
            history_trimmed_ttl: counter!(
                "starling_history_trimmed_total", "node" => node.clone(), "reason" => "ttl"
            ),
            history_trimmed_bytes: counter!(
                "starling_history_trimmed_total", "node" => node.clone(), "reason" => "bytes"
            ),
            events: Default::default(),
            errors,
            node,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some((_, counter)) = self.errors.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
    }

    /// A publish that could not be sequenced, by reason (`no_members`,
    /// `owner_moved`, `owner_unreachable`, `timed_out`, ...).
    pub fn publish_failed(&self, node: &str, reason: &'static str) {
        counter!("starling_publish_failures_total", "node" => node.to_string(), "reason" => reason)
            .increment(1);
    }

    pub fn closed(&self, node: &str, code: CloseCode) {
        counter!("starling_closes_total", "node" => node.to_string(), "code" => code.code().to_string())
            .increment(1);
    }

    pub fn observe_delivery(&self, latency: Duration, cross_node: bool) {
        let histogram = if cross_node { &self.delivery_latency_cross } else { &self.delivery_latency_local };
        histogram.record(latency.as_secs_f64());
    }

    /// Sets the gauges read at scrape time (cheaper than tracking them on
    /// the hot path).
    pub fn record_scrape(&self, scrape: &Scrape) {
        let node = &self.node;
        gauge!("starling_outbound_queue_frames", "node" => node.clone()).set(scrape.queued_frames as f64);
        gauge!("starling_outbound_queue_bytes", "node" => node.clone()).set(scrape.queued_bytes as f64);
        if let Some(raft) = &scrape.raft {
            gauge!("starling_raft_term", "node" => node.clone()).set(raft.term as f64);
            gauge!("starling_raft_is_leader", "node" => node.clone()).set(if raft.is_leader {
                1.0
            } else {
                0.0
            });
            gauge!("starling_raft_last_log_index", "node" => node.clone()).set(raft.last_log_index as f64);
            gauge!("starling_raft_applied_index", "node" => node.clone()).set(raft.applied_index as f64);
            gauge!("starling_raft_apply_lag_entries", "node" => node.clone())
                .set(raft.last_log_index.saturating_sub(raft.applied_index) as f64);
            for (peer, lag) in &raft.follower_lag {
                gauge!("starling_raft_follower_lag_entries", "node" => node.clone(), "peer" => peer.clone())
                    .set(*lag as f64);
            }
        }
        if let Some(live) = scrape.gossip_live_nodes {
            gauge!("starling_gossip_live_nodes", "node" => node.clone()).set(live as f64);
        }
        for link in &scrape.links {
            let labels = [("node", node.clone()), ("peer", link.peer.clone())];
            gauge!("starling_peer_link_up", &labels).set(if link.connected { 1.0 } else { 0.0 });
            gauge!("starling_peer_queue_frames", &labels).set(link.queued as f64);
            counter!("starling_peer_frames_sent_total", &labels).absolute(link.sent);
        }
        for (reason, count) in &scrape.peer_rejected {
            counter!("starling_peer_rejected_total", "node" => node.clone(), "reason" => *reason)
                .absolute(*count);
        }
        counter!("starling_raft_entries_rejected_total", "node" => node.clone())
            .absolute(scrape.raft_entries_rejected);
        if let Some((queue_full, link_lost)) = scrape.peer_drops {
            counter!("starling_dropped_total", "node" => node.clone(), "reason" => "peer_queue_full")
                .absolute(queue_full);
            counter!("starling_dropped_total", "node" => node.clone(), "reason" => "peer_link_lost")
                .absolute(link_lost);
        }
    }
}

/// What the node reads of itself when `/metrics` is scraped.
#[derive(Debug, Default)]
pub struct Scrape {
    pub queued_frames: usize,
    pub queued_bytes: usize,
    pub raft: Option<RaftScrape>,
    pub gossip_live_nodes: Option<usize>,
    pub links: Vec<LinkScrape>,
    /// Frames to peers dropped: (queue full, link lost).
    pub peer_drops: Option<(u64, u64)>,
    /// Peer input refused, by reason (`tls`, `handshake`, `unauthorized`,
    /// `gossip_unauthenticated`, `gossip_malformed`).
    pub peer_rejected: Vec<(&'static str, u64)>,
    /// Committed Raft entries skipped (undecodable or invalid).
    pub raft_entries_rejected: u64,
}

#[derive(Debug, Default)]
pub struct RaftScrape {
    pub term: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// On the leader: entries each follower is behind, by node name.
    pub follower_lag: Vec<(String, u64)>,
}

#[derive(Debug)]
pub struct LinkScrape {
    /// The peer's node name (its address when the name is unknown).
    pub peer: String,
    pub connected: bool,
    pub queued: usize,
    pub sent: u64,
}
