//! Pusher webhooks (`docs/pusher.md`): each event is POSTed by exactly one
//! node of the cluster.
//!
//! Membership events (`channel_occupied`, `channel_vacated`,
//! `member_added`, `member_removed`) come from the replicated outbox
//! (`rooms::HookOutbox`), which every node holds alike. Only the Raft
//! leader sends them; after a batch it proposes `HooksDelivered`, and every
//! node forgets those events. A new leader sends what its predecessor had
//! not acknowledged, so a failover drops nothing; an event is sent twice
//! only when the leader dies between the receiver's 2xx and the commit of
//! its acknowledgement.
//!
//! Events of one connection (`client_event`, `cache_miss`) are sent by the
//! node the connection is on: it is the only node that sees them arrive.
//!
//! This module owns sending; it must not decide membership (the outbox is
//! filled by the state machine) or read sockets.

mod deliver;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge, Counter, Gauge};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, warn};

pub use deliver::{Outcome, WireEvent};

use crate::config::AppConfig;
use crate::replicate::Replicator;
use crate::rooms::{HookKind, PendingHook, RoomCommand};

/// The most events in one request.
const MAX_BATCH_EVENTS: usize = 100;

/// Events of one node's connections waiting to be sent, per app; past it
/// new ones are dropped and counted as failed.
const LOCAL_QUEUE_EVENTS: usize = 10_000;

/// An app with no receivers still has its outbox emptied, in entries of
/// this many events (so that it costs the log almost nothing).
const UNWATCHED_ACK_EVENTS: usize = 1024;

/// How often a sender looks again when nothing woke it.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// The counters of one app's webhooks.
#[derive(Clone)]
pub struct HookMetrics {
    /// Requests answered 2xx.
    sent: Counter,
    /// Requests given up at the deadline.
    failed: Counter,
    /// Attempts after the first of a request.
    retried: Counter,
    events_sent: Counter,
    events_failed: Counter,
    /// Events waiting in the replicated outbox (on the sender).
    pending: Gauge,
}

impl HookMetrics {
    fn new(node: &str, app: &str) -> HookMetrics {
        let labels = [("node", node.to_string()), ("app", app.to_string())];
        HookMetrics {
            sent: counter!("starling_webhooks_sent_total", &labels),
            failed: counter!("starling_webhooks_failed_total", &labels),
            retried: counter!("starling_webhooks_retried_total", &labels),
            events_sent: counter!("starling_webhook_events_sent_total", &labels),
            events_failed: counter!("starling_webhook_events_failed_total", &labels),
            pending: gauge!("starling_webhook_events_pending", &labels),
        }
    }
}

struct AppHooks {
    config: AppConfig,
    namespace: Arc<str>,
    metrics: HookMetrics,
    /// Events of this node's connections; `None` when the app has no
    /// receivers (nothing is queued).
    local_tx: Option<mpsc::Sender<WireEvent>>,
}

/// Every app's webhook senders on this node.
pub struct Webhooks {
    apps: HashMap<Arc<str>, Arc<AppHooks>>,
    /// The receiving halves of `local_tx`, taken by [`Webhooks::start`].
    local_rx: std::sync::Mutex<Vec<(Arc<str>, mpsc::Receiver<WireEvent>)>>,
}

impl Webhooks {
    pub fn new(node: &str, apps: &[AppConfig]) -> Webhooks {
        let mut by_namespace = HashMap::new();
        let mut receivers = Vec::new();
        for config in apps {
            let namespace: Arc<str> = Arc::from(config.namespace());
            let local_tx = (!config.webhooks.is_empty()).then(|| {
                let (tx, rx) = mpsc::channel(LOCAL_QUEUE_EVENTS);
                receivers.push((Arc::clone(&namespace), rx));
                tx
            });
            let hooks = AppHooks {
                config: config.clone(),
                namespace: Arc::clone(&namespace),
                metrics: HookMetrics::new(node, &config.id),
                local_tx,
            };
            by_namespace.insert(namespace, Arc::new(hooks));
        }
        Webhooks { apps: by_namespace, local_rx: std::sync::Mutex::new(receivers) }
    }

    /// A `client_event` sent by a connection of this node.
    pub fn client_event(
        &self,
        namespace: &str,
        channel: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        self.queue_local(
            namespace,
            WireEvent {
                name: "client_event",
                channel: channel.to_string(),
                user_id: user_id.map(str::to_string),
                event: Some(event.to_string()),
                data: Some(data.to_string()),
                socket_id: Some(socket_id.to_string()),
            },
        );
    }

    /// A subscriber of a `cache-` channel found no cached event.
    pub fn cache_miss(&self, namespace: &str, channel: &str) {
        let event = WireEvent {
            name: "cache_miss",
            channel: channel.to_string(),
            user_id: None,
            event: None,
            data: None,
            socket_id: None,
        };
        self.queue_local(namespace, event);
    }

    fn queue_local(&self, namespace: &str, event: WireEvent) {
        let Some(app) = self.apps.get(namespace) else {
            return;
        };
        let Some(local_tx) = &app.local_tx else {
            return;
        };
        if !app.config.webhooks.iter().any(|hook| hook.events.iter().any(|e| e == event.name)) {
            return;
        }
        if local_tx.try_send(event).is_err() {
            app.metrics.events_failed.increment(1);
        }
    }

    /// Starts every app's senders on `tracker`; they stop with `stop`.
    pub fn start(&self, replicator: Arc<Replicator>, stop: CancellationToken, tracker: &TaskTracker) {
        if self.apps.is_empty() {
            return;
        }
        let http = match deliver::client() {
            Ok(http) => http,
            Err(error) => {
                error!(%error, "webhooks disabled: the HTTP client could not be built");
                return;
            }
        };
        for app in self.apps.values() {
            let sender = OutboxSender {
                app: Arc::clone(app),
                replicator: Arc::clone(&replicator),
                http: http.clone(),
                stop: stop.clone(),
            };
            tracker.spawn(sender.run());
        }
        let receivers = std::mem::take(&mut *self.local_rx.lock().unwrap_or_else(|p| p.into_inner()));
        for (namespace, local_rx) in receivers {
            let Some(app) = self.apps.get(&namespace) else {
                continue;
            };
            tracker.spawn(send_local(Arc::clone(app), local_rx, http.clone(), stop.clone()));
        }
    }
}

/// Sends one app's replicated events while this node leads.
struct OutboxSender {
    app: Arc<AppHooks>,
    replicator: Arc<Replicator>,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl OutboxSender {
    async fn run(self) {
        let mut applied = self.replicator.applied_changes();
        // The highest id this node delivered while leading; events after
        // the outbox's head up to it wait only for their acknowledgement.
        let mut cursor = 0;
        loop {
            if !self.replicator.is_leader() {
                cursor = 0;
            } else if self.step(&mut cursor).await {
                continue;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = applied.changed() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
        }
    }

    /// Sends (or, for an app nobody listens to, acknowledges) the next
    /// batch; returns whether there may be more right away.
    async fn step(&self, cursor: &mut u64) -> bool {
        let namespace = &self.app.namespace;
        let (waiting, _) = self.replicator.hook_counts(namespace);
        self.app.metrics.pending.set(waiting as f64);
        if self.app.config.webhooks.is_empty() {
            if waiting < UNWATCHED_ACK_EVENTS {
                return false;
            }
            let batch = self.replicator.pending_hooks(namespace, *cursor, UNWATCHED_ACK_EVENTS);
            return match batch.last() {
                Some(last) => self.acknowledge(cursor, last.id).await,
                None => false,
            };
        }
        let batch = self.replicator.pending_hooks(namespace, *cursor, MAX_BATCH_EVENTS);
        let Some(last) = batch.last().map(|hook| hook.id) else {
            // Delivered, but the acknowledgement did not commit: propose it
            // again, or the next leader would send those events twice.
            let head = self.replicator.pending_hooks(namespace, 0, 1);
            if head.first().is_some_and(|hook| hook.id <= *cursor) {
                self.acknowledge(cursor, *cursor).await;
            }
            return false;
        };
        if let Err(error) = self.replicator.confirm_leader().await {
            warn!(app = %self.app.config.id, %error, "webhooks wait: leadership not confirmed");
            return false;
        }
        let events: Vec<WireEvent> = batch.iter().map(wire_event).collect();
        let replicator = &self.replicator;
        let stop = &self.stop;
        let keep_going = || replicator.is_leader() && !stop.is_cancelled();
        let outcome =
            deliver::deliver(&self.http, &self.app.config, &events, &self.app.metrics, &keep_going).await;
        match outcome {
            Outcome::Sent | Outcome::Failed => self.acknowledge(cursor, last).await,
            Outcome::Stopped => false,
        }
    }

    /// Proposes that the app's events up to `up_to` are done with.
    async fn acknowledge(&self, cursor: &mut u64, up_to: u64) -> bool {
        *cursor = up_to;
        let command = RoomCommand::HooksDelivered { app: Arc::clone(&self.app.namespace), up_to };
        match self.replicator.propose(command).await {
            Ok(_) => true,
            Err(error) => {
                // The next acknowledgement covers these too; if this node
                // loses the leadership first, its successor sends them again.
                warn!(app = %self.app.config.id, %error, up_to, "webhook acknowledgement not committed");
                false
            }
        }
    }
}

/// Sends one app's events of this node's connections, in batches.
async fn send_local(
    app: Arc<AppHooks>,
    mut local_rx: mpsc::Receiver<WireEvent>,
    http: reqwest::Client,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH_EVENTS);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = local_rx.recv_many(&mut batch, MAX_BATCH_EVENTS) => received,
        };
        if received == 0 {
            return;
        }
        let keep_going = || !stop.is_cancelled();
        deliver::deliver(&http, &app.config, &batch, &app.metrics, &keep_going).await;
        batch.clear();
    }
}

fn wire_event(hook: &PendingHook) -> WireEvent {
    let (name, user_id) = match &hook.kind {
        HookKind::ChannelOccupied => ("channel_occupied", None),
        HookKind::ChannelVacated => ("channel_vacated", None),
        HookKind::MemberAdded { user } => ("member_added", Some(user.to_string())),
        HookKind::MemberRemoved { user } => ("member_removed", Some(user.to_string())),
    };
    WireEvent {
        name,
        // The room `pusher-{id}:{channel}`'s channel.
        channel: hook.room.as_str().split_once(':').map_or("", |(_, channel)| channel).to_string(),
        user_id,
        event: None,
        data: None,
        socket_id: None,
    }
}
