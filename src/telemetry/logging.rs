//! The tracing subscriber: log lines (pretty or JSON, filtered per module)
//! and, when configured, span export over OTLP/HTTP.

use std::collections::BTreeMap;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::spans;
use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// Flushes and stops span export when dropped (or on [`Telemetry::shutdown`]).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Where spans go, for the start-up log line.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends what is buffered and stops the exporter. Blocks (call it off
    /// the async runtime or at exit).
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            spans::set_exporting(false);
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            spans::set_exporting(false);
            let _ = provider.shutdown();
        }
    }
}

/// What the process environment says about tracing (the `OTEL_*` variables).
#[derive(Debug, Default, Clone)]
pub struct OtelEnv {
    vars: BTreeMap<String, String>,
}

impl OtelEnv {
    pub fn from_process() -> OtelEnv {
        OtelEnv::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> OtelEnv {
        OtelEnv {
            vars: vars.into_iter().filter(|(k, v)| k.starts_with("OTEL_") && !v.trim().is_empty()).collect(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(|v| v.trim())
    }
}

/// The resolved export settings: `None` when nothing asks for export.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPlan {
    /// The full URL spans are posted to (`…/v1/traces`), or `None` to let
    /// the exporter read `OTEL_EXPORTER_OTLP_*ENDPOINT` itself.
    pub endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sampling_ratio: Option<f64>,
    pub attributes: Vec<(String, String)>,
}

/// Decides whether and where to export: config keys win; unset keys fall
/// back to the standard environment variables, as other OpenTelemetry
/// services do. `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
/// turns export off whatever else is set.
pub fn export_plan(config: &TelemetryConfig, env: &OtelEnv) -> Option<ExportPlan> {
    if env.get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env.get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    let endpoint = match &config.otlp_endpoint {
        Some(base) => Some(format!("{}/v1/traces", base.trim_end_matches('/'))),
        None if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
            || env.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
        {
            None
        }
        None => return None,
    };
    Some(ExportPlan {
        endpoint,
        service_name: config.service_name.clone(),
        sampling_ratio: config.sampling_ratio,
        attributes: config.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    })
}

/// Installs the global subscriber: log lines to stderr filtered by
/// `log.level` (or `RUST_LOG`), and spans exported over OTLP/HTTP when
/// [`export_plan`] says so. Every exported span's resource carries
/// `service.name` and `service.instance.id` = `node`. Calling it twice
/// keeps the first subscriber.
pub fn init(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    node: &str,
    env: &OtelEnv,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(quiet_openraft(&log.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal (and not with NO_COLOR): a log file or a
    // journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match log.format {
        LogFormat::Json => {
            fmt.json().flatten_event(true).with_current_span(true).with_span_list(true).boxed()
        }
        LogFormat::Pretty => fmt.compact().boxed(),
    };
    let provider = match export_plan(telemetry, env) {
        Some(plan) => Some(tracer_provider(&plan, node)?),
        None => None,
    };
    // The trace spans only (`starling::trace`): openraft's and the HTTP
    // stack's would bury the message traces, and a span entered on every
    // poll (like the log-context `session` span) would cost on every
    // delivery. No idle/busy tracking: it reads the clock on every enter.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("starling"))
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target(spans::TRACE_TARGET, Level::INFO))
    });
    let installed =
        tracing_subscriber::registry().with(fmt.with_filter(filter)).with(otel).try_init().is_ok();
    if installed && provider.is_some() {
        spans::set_exporting(true);
        for var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            if let Some(protocol) = env.get(var).filter(|p| *p != "http/protobuf") {
                tracing::warn!(%var, %protocol, "only http/protobuf is built in; exporting with http/protobuf");
            }
        }
    }
    Ok(Telemetry { provider: provider.filter(|_| installed) })
}

/// `level` with openraft at `warn` unless it says otherwise: at `info`
/// openraft logs its internal state (`RaftState {…}`) on every change,
/// which buries the node's own lines. `RUST_LOG` is taken as written.
pub fn quiet_openraft(level: &str) -> String {
    if level.contains("openraft") {
        return level.to_string();
    }
    format!("{level},openraft=warn")
}

/// Log lines only, no span export (tests and embedding programs).
pub fn init_logging(log: &LogConfig) {
    let _ = init(log, &TelemetryConfig::default(), "", &OtelEnv::default());
}

fn tracer_provider(plan: &ExportPlan, node: &str) -> anyhow::Result<SdkTracerProvider> {
    // The exporter's HTTP client takes the process's rustls provider.
    crate::tls::install_default_provider();
    let mut exporter =
        opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = &plan.endpoint {
        exporter = exporter.with_endpoint(endpoint.clone());
    }
    let exporter = exporter.build().context("building the OTLP span exporter")?;
    // The builder reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
    let mut resource = Resource::builder()
        .with_attributes(plan.attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(name) = &plan.service_name {
        resource = resource.with_service_name(name.clone());
    } else if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name("starling");
    }
    let mut builder =
        SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build());
    if let Some(ratio) = plan.sampling_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
    }
    Ok(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> OtelEnv {
        OtelEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn openraft_logs_at_warn_unless_the_level_names_it() {
        assert_eq!(quiet_openraft("info"), "info,openraft=warn");
        assert_eq!(
            quiet_openraft("debug,starling::gateway=trace"),
            "debug,starling::gateway=trace,openraft=warn"
        );
        assert_eq!(quiet_openraft("info,openraft=debug"), "info,openraft=debug");
        assert!(EnvFilter::try_new(quiet_openraft("info")).is_ok());
    }

    #[test]
    fn export_is_off_unless_config_or_the_standard_variables_ask_for_it() {
        let config = TelemetryConfig::default();
        assert_eq!(export_plan(&config, &env(&[])), None);
        assert_eq!(export_plan(&config, &env(&[("OTEL_SERVICE_NAME", "x")])), None);
        // The standard variable alone turns export on; the exporter reads it.
        let plan = export_plan(&config, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])).unwrap();
        assert_eq!(plan.endpoint, None);
        assert!(export_plan(
            &config,
            &env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")])
        )
        .is_some());
        // An empty value is unset, as the spec says.
        assert_eq!(export_plan(&config, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), None);
    }

    #[test]
    fn config_wins_and_the_kill_switches_win_over_everything() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://collector:4318/".into()),
            sampling_ratio: Some(0.25),
            ..TelemetryConfig::default()
        };
        let plan =
            export_plan(&config, &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318")])).unwrap();
        assert_eq!(plan.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(plan.sampling_ratio, Some(0.25));
        assert_eq!(export_plan(&config, &env(&[("OTEL_SDK_DISABLED", "TRUE")])), None);
        assert_eq!(export_plan(&config, &env(&[("OTEL_TRACES_EXPORTER", "none")])), None);
    }
}
