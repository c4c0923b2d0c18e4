//! Logs and metrics: the tracing subscriber, the Prometheus recorder, and
//! the name of every metric the node exports.
//!
//! Everything that counts something goes through [`Metrics`], whose handles
//! are registered once so the hot path does no name lookups. This module
//! must not decide anything about rooms or connections; it only records.

mod logging;
mod metrics;

pub use self::logging::init_logging;
pub use self::metrics::{install_recorder, Metrics, MetricsHandle};
