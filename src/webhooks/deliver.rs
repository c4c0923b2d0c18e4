//! One webhook request: the signed body, and retries with backoff until a
//! 2xx, the app's deadline, or the caller says to stop.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;
use tracing::{debug, warn};

use super::HookMetrics;
use crate::config::{AppConfig, WebhookConfig};

/// One event in Pusher's webhook format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WireEvent {
    pub name: &'static str,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// `client_event` only: the event's name, data and sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_id: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    time_ms: u128,
    events: &'a [&'a WireEvent],
}

/// How one batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every receiver answered 2xx (or wanted none of the events).
    Sent,
    /// At least one receiver did not answer 2xx before the deadline.
    Failed,
    /// The caller asked to stop (this node is no longer the sender).
    Stopped,
}

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(30);

/// The HTTP client of every app's webhooks.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    // reqwest takes the process's rustls provider.
    crate::tls::install_default_provider();
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build()
}

/// Sends `events` to every receiver of `app` that wants some of them, each
/// retried until it answers 2xx or the app's deadline passes; stops early
/// when `keep_going` turns false.
pub async fn deliver(
    http: &reqwest::Client,
    app: &AppConfig,
    events: &[WireEvent],
    metrics: &HookMetrics,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let deadline = Instant::now() + Duration::from_millis(app.webhook_deadline_ms);
    let sends =
        app.webhooks.iter().map(|hook| send_one(http, app, hook, events, deadline, metrics, keep_going));
    let outcomes = futures_util::future::join_all(sends).await;
    if outcomes.contains(&Outcome::Stopped) {
        Outcome::Stopped
    } else if outcomes.contains(&Outcome::Failed) {
        Outcome::Failed
    } else {
        Outcome::Sent
    }
}

async fn send_one(
    http: &reqwest::Client,
    app: &AppConfig,
    hook: &WebhookConfig,
    events: &[WireEvent],
    deadline: Instant,
    metrics: &HookMetrics,
    keep_going: &(dyn Fn() -> bool + Sync),
) -> Outcome {
    let wanted: Vec<&WireEvent> = events.iter().filter(|e| hook.events.iter().any(|w| w == e.name)).collect();
    if wanted.is_empty() {
        return Outcome::Sent;
    }
    let mut delays = ExponentialBuilder::new()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(LONGEST_RETRY)
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        if !keep_going() {
            return Outcome::Stopped;
        }
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let body = serde_json::to_string(&Body { time_ms, events: &wanted }).unwrap_or_default();
        let signature = crate::auth::hmac_sha256_hex(&app.secret, &body);
        let answer = http
            .post(&hook.url)
            .header("Content-Type", "application/json")
            .header("X-Pusher-Key", &app.key)
            .header("X-Pusher-Signature", signature)
            .body(body)
            .send()
            .await;
        let failure = match answer {
            Ok(response) if response.status().is_success() => {
                metrics.sent.increment(1);
                metrics.events_sent.increment(wanted.len() as u64);
                return Outcome::Sent;
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        let delay = delays.next().unwrap_or(LONGEST_RETRY);
        if Instant::now() + delay >= deadline {
            warn!(app = %app.id, url = %hook.url, %failure, events = wanted.len(), "webhook given up at its deadline");
            metrics.failed.increment(1);
            metrics.events_failed.increment(wanted.len() as u64);
            return Outcome::Failed;
        }
        debug!(app = %app.id, url = %hook.url, %failure, ?delay, "webhook will be retried");
        metrics.retried.increment(1);
        tokio::time::sleep(delay).await;
    }
}
