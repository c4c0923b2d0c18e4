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
    pub joins: Counter,
    pub leaves: Counter,
    pub publishes: Counter,
    pub deliveries: Counter,
    pub drops_slow_consumer: Counter,
    pub rate_limited: Counter,
    pub delivery_latency: Histogram,
    pub rooms: Gauge,
    errors: Vec<(ErrorCode, Counter)>,
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
            joins: counter!("starling_joins_total", "node" => node.clone()),
            leaves: counter!("starling_leaves_total", "node" => node.clone()),
            publishes: counter!("starling_publishes_total", "node" => node.clone()),
            deliveries: counter!("starling_deliveries_total", "node" => node.clone()),
            drops_slow_consumer: counter!("starling_dropped_total", "node" => node.clone(), "reason" => "slow_consumer"),
            rate_limited: counter!("starling_rate_limited_total", "node" => node.clone()),
            delivery_latency: histogram!("starling_delivery_latency_seconds", "node" => node.clone()),
            rooms: gauge!("starling_rooms", "node" => node.clone()),
            errors,
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some((_, counter)) = self.errors.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
        }
    }

    pub fn closed(&self, node: &str, code: CloseCode) {
        counter!("starling_closes_total", "node" => node.to_string(), "code" => code.code().to_string())
            .increment(1);
    }

    pub fn observe_delivery(&self, latency: Duration) {
        self.delivery_latency.record(latency.as_secs_f64());
    }
}
