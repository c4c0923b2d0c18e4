//! Logs, traces and metrics: the tracing subscriber with OTLP export, the
//! spans of a message's trace, the Prometheus recorder, and the name of
//! every metric the node exports.
//!
//! Everything that counts something goes through [`Metrics`], whose handles
//! are registered once so the hot path does no name lookups. This module
//! must not decide anything about rooms or connections; it only records.

mod logging;
mod metrics;
mod spans;

pub use self::logging::{export_plan, init, init_logging, ExportPlan, OtelEnv, Telemetry};
pub use self::metrics::{install_recorder, LinkScrape, Metrics, MetricsHandle, RaftScrape, Scrape};
pub use self::spans::{
    connection_span, current_traceparent, deliver_span, exporting, fanout_span, format_traceparent,
    forward_span, join_span, parse_traceparent, publish_span, remote_sequence_span, sequence_span,
    TRACE_TARGET,
};
