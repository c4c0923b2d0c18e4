//! Logs, traces and metrics: the tracing subscriber with OTLP export, the
//! spans of a message's trace, the Prometheus recorder, the name of every
//! metric the node exports, reading them back for the admin dashboard, and
//! the bounded list of recent cluster events it shows.
//!
//! Everything that counts something goes through [`Metrics`], whose handles
//! are registered once so the hot path does no name lookups. This module
//! must not decide anything about rooms or connections; it only records.

mod events;
mod logging;
mod metrics;
pub mod reading;
mod spans;

pub use self::events::{RecentEvent, RecentEvents};
pub use self::logging::{export_plan, init, init_logging, ExportPlan, OtelEnv, Telemetry};
pub use self::metrics::{install_recorder, LinkScrape, Metrics, MetricsHandle, RaftScrape, Scrape};
pub use self::spans::{
    connection_span, current_traceparent, deliver_span, exporting, fanout_span, format_traceparent,
    forward_span, join_span, parse_traceparent, publish_span, remote_sequence_span, sequence_span,
    TRACE_TARGET,
};
