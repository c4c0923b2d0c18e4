//! The composition root: builds every part of a node from its config,
//! starts its listeners, and owns the shutdown tree.
//!
//! Two trackers make shutdown orderly: `connections` holds every client
//! session, `background` the accept loop, the API server and housekeeping.
//! Draining answers new upgrades with 503, closes sessions with 1012 spread over `shutdown.drain_ms`,
//! waits for them, then stops the rest, all within `shutdown.deadline_ms`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::auth::JwtVerifier;
use crate::cluster::InjectedFaults;
use crate::cluster::{Announce, Autopilot, ClusterRuntime};
use crate::config::{Config, NamespacePolicies};
use crate::fanout::{Hub, Sessions};
use crate::forward::Router;
use crate::gateway::{self, Gateway, GatewayParts};
use crate::protocol::CloseCode;
use crate::replicate::{Replicator, SharedTable, TableStats};
use crate::service::{RoomService, ServiceParts};
use crate::telemetry::{self, Metrics};
use starling_cluster::membership::Membership;
use starling_cluster::raft::RaftGroup;

/// A running node.
pub struct Node {
    gateway: Arc<Gateway>,
    client_addr: SocketAddr,
    api_addr: SocketAddr,
    /// Whether both listeners speak TLS (`[listen.tls]`).
    tls: bool,
    /// The end of shutdown: stops the accept loop (which answers 503 while
    /// draining), the API, and whatever sessions are still running.
    stop_all: CancellationToken,
    connections: TaskTracker,
    background: TaskTracker,
    /// In a cluster: Raft, gossip and peer links (taken at shutdown).
    cluster: tokio::sync::Mutex<Option<ClusterRuntime>>,
    peer_addr: Option<SocketAddr>,
    /// What `/api/cluster` reads.
    cluster_view: Option<(Arc<RaftGroup>, Arc<Membership>)>,
}

/// Counts a test or an operator can check, e.g. that everything returns to
/// zero after clients leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Open client sessions.
    pub sessions: usize,
    /// Session tasks still running (including ones in their handshake).
    pub connection_tasks: usize,
    /// Rooms mirrored by the fan-out hub (every room of the cluster).
    pub hub_rooms: usize,
    /// Local (room, connection) subscriptions in the hub.
    pub subscriptions: usize,
    /// The replicated room table.
    pub table: TableStats,
}

impl Node {
    /// Binds the listeners and starts serving. The config must carry a token
    /// key and an API key (dev mode generates them before calling this).
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        Node::start_injected(config, InjectedFaults::default()).await
    }

    /// Like [`Node::start`], with this node's peer links and gossip going
    /// through `faults`, so a test can cut and heal them (feature `faults`).
    #[cfg(feature = "faults")]
    pub async fn start_with_faults(
        config: Config,
        faults: Option<Arc<starling_cluster::faults::LinkFaults>>,
    ) -> anyhow::Result<Node> {
        Node::start_injected(config, InjectedFaults { links: faults }).await
    }

    async fn start_injected(config: Config, faults: InjectedFaults) -> anyhow::Result<Node> {
        config.validate()?;
        let Some(api_key) = config.auth.api_key.clone() else {
            bail!("auth.api_key is not set");
        };
        let tls = match &config.listen.tls {
            Some(tls) => Some(TlsAcceptor::from(tls.server_config()?)),
            None => None,
        };
        let client_listener = TcpListener::bind(config.listen.client)
            .await
            .with_context(|| format!("binding listen.client {}", config.listen.client))?;
        let api_listener = TcpListener::bind(config.listen.api)
            .await
            .with_context(|| format!("binding listen.api {}", config.listen.api))?;
        let client_addr = client_listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        let mut config = config;
        if config.api.demo {
            // The demo page is served from the API listener; its origin
            // (known only now when the port was 0) must be allowed.
            let port = api_addr.port();
            let scheme = if tls.is_some() { "https" } else { "http" };
            config.auth.allowed_origins.push(format!("{scheme}://{api_addr}"));
            config.auth.allowed_origins.push(format!("{scheme}://localhost:{port}"));
        }
        let verifier = JwtVerifier::new(&config.auth).context("building the token verifier")?;
        let config = Arc::new(config);
        let incarnation = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let metrics_handle = telemetry::install_recorder();
        let metrics = Metrics::new(&config.node.name);
        let namespaces = Arc::new(NamespacePolicies::new(&config.namespaces, &config.apps));
        let sessions = Arc::new(Sessions::default());
        let hub = Arc::new(Hub::new(
            Arc::from(config.node.name.as_str()),
            incarnation,
            Arc::clone(&sessions),
            Arc::clone(&namespaces),
            metrics.clone(),
            config.limits.history_bytes,
        ));
        let shared = SharedTable::new(Arc::clone(&hub) as Arc<dyn crate::replicate::EffectsObserver>);
        let stop_all = CancellationToken::new();
        let background = TaskTracker::new();
        let (replicator, router, cluster) = if config.is_cluster() {
            let announce = Announce { client: client_addr, api: api_addr };
            let runtime =
                ClusterRuntime::start(&config, incarnation, &hub, &shared, announce, faults).await?;
            let replicator = Arc::new(Replicator::raft(Arc::clone(&shared), Arc::clone(&runtime.group)));
            let router = Arc::new(Router::cluster(Arc::clone(&hub), Arc::clone(&runtime.links)));
            (replicator, router, Some(runtime))
        } else {
            (Arc::new(Replicator::local(shared)), Arc::new(Router::local(Arc::clone(&hub))), None)
        };
        let service = Arc::new(RoomService::new(ServiceParts {
            incarnation,
            config: Arc::clone(&config),
            namespaces,
            hub,
            replicator: Arc::clone(&replicator),
            router,
            metrics: metrics.clone(),
        }));
        let gateway = Arc::new(Gateway::new(GatewayParts {
            config: Arc::clone(&config),
            incarnation,
            verifier,
            sessions,
            service,
            metrics,
        }));
        gateway.pusher.webhooks.start(Arc::clone(&replicator), stop_all.clone(), &background);
        if let Some(runtime) = &cluster {
            let sessions = Arc::clone(&gateway.sessions);
            let autopilot = Autopilot {
                name: config.node.name.clone(),
                incarnation,
                bootstrap_expect: config.cluster.bootstrap_expect as usize,
                voters: config.cluster.voters as usize,
                replace_dead_voter_after: Duration::from_millis(config.cluster.replace_dead_voter_after_ms),
                group: Arc::clone(&runtime.group),
                membership: Arc::clone(&runtime.membership),
                links: Arc::clone(&runtime.links),
                replicator,
                connections: Arc::new(move || sessions.len()),
                events: Arc::clone(&gateway.metrics.events),
            };
            background.spawn(autopilot.run(stop_all.clone()));
        }

        let links = cluster.as_ref().map(|c| Arc::clone(&c.links));
        let node = Node {
            gateway: Arc::clone(&gateway),
            client_addr,
            api_addr,
            tls: tls.is_some(),
            stop_all,
            connections: TaskTracker::new(),
            background,
            cluster_view: cluster.as_ref().map(|c| (Arc::clone(&c.group), Arc::clone(&c.membership))),
            peer_addr: cluster.as_ref().map(|c| c.peer_addr()),
            cluster: tokio::sync::Mutex::new(cluster),
        };
        let accept = gateway::serve(
            client_listener,
            Arc::clone(&gateway),
            tls.clone(),
            node.stop_all.clone(),
            node.connections.clone(),
        );
        // The accept loop keeps answering (503) until the very end; it lives
        // on `background` so that waiting for `connections` waits for sessions.
        node.background.spawn(accept);
        let demo_secret = config.auth.jwt_hs256_secret.clone().filter(|_| config.api.demo);
        let state = Arc::new(ApiState {
            gateway: Arc::clone(&gateway),
            metrics: metrics_handle.clone(),
            api_key,
            demo_secret,
            client_addr,
            tls: node.tls,
            cluster: node.cluster_view.clone(),
            links,
            admin: Default::default(),
        });
        node.background.spawn(api::serve(api_listener, state, tls, node.stop_all.clone()));
        let stop_upkeep = node.stop_all.clone();
        node.background.spawn(async move {
            // Histograms keep raw samples until upkeep folds them into buckets.
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop_upkeep.cancelled() => return,
                    _ = every.tick() => metrics_handle.run_upkeep(),
                }
            }
        });
        info!(
            node = %config.node.name,
            client = %client_addr,
            api = %api_addr,
            client_url = %node.client_url(),
            api_url = %node.api_url(),
            "node started"
        );
        Ok(node)
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Where clients connect: `ws://ADDR/ws`, or `wss://` with TLS.
    pub fn client_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.client_addr)
    }

    /// The API's base URL: `http://ADDR`, or `https://` with TLS.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.api_addr)
    }

    /// The peer address actually bound (cluster mode only).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The gossip address actually bound (cluster mode only).
    pub fn gossip_addr(&self) -> Option<SocketAddr> {
        self.cluster_view.as_ref().map(|(_, membership)| membership.gossip_addr())
    }

    /// The current Raft leader's name (cluster mode only).
    pub fn leader(&self) -> Option<String> {
        self.cluster_view.as_ref().and_then(|(group, _)| group.leader_name())
    }

    /// The names of the Raft voters, as this node knows them (cluster mode).
    pub fn voters(&self) -> Option<Vec<String>> {
        let (group, _) = self.cluster_view.as_ref()?;
        let metrics = group.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let mut names: Vec<String> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id))
            .map(|n| n.name.clone())
            .collect();
        names.sort();
        Some(names)
    }

    /// The names of every Raft member, voters and learners (cluster mode).
    pub fn raft_members(&self) -> Vec<String> {
        let Some((group, _)) = self.cluster_view.as_ref() else {
            return Vec::new();
        };
        let metrics = group.metrics().borrow().clone();
        let mut names: Vec<String> =
            metrics.membership_config.membership().nodes().map(|(_, n)| n.name.clone()).collect();
        names.sort();
        names
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    pub fn stats(&self) -> NodeStats {
        let service = &self.gateway.service;
        NodeStats {
            sessions: self.gateway.sessions.len(),
            connection_tasks: self.connections.len(),
            hub_rooms: service.hub().room_count(),
            subscriptions: service.hub().subscription_count(),
            table: service.replicator().stats(),
        }
    }

    /// Stops at once, as a crash would: Raft and gossip first (so nothing
    /// this node's sessions do afterwards reaches the cluster), then every
    /// task, with no drain and no close frames. For failure tests.
    pub async fn kill(self) {
        if let Some(cluster) = self.cluster.lock().await.take() {
            cluster.shutdown().await;
        }
        self.stop_all.cancel();
        self.connections.close();
        self.background.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            self.connections.wait().await;
            self.background.wait().await;
        })
        .await;
    }

    /// Drains and stops: refuses new upgrades, closes clients with 1012
    /// spread over the drain window, waits for them within the deadline,
    /// then stops everything else.
    pub async fn shutdown(self) {
        let config = &self.gateway.config.shutdown;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(config.deadline_ms);
        let drain = Duration::from_millis(config.drain_ms);
        self.gateway.start_draining();
        let sessions = self.gateway.sessions.all();
        let count = sessions.len().max(1) as u32;
        info!(sessions = sessions.len(), drain_ms = config.drain_ms, "draining");
        for (i, session) in sessions.iter().enumerate() {
            // Spreading closes keeps every client from reconnecting elsewhere
            // in the same instant.
            tokio::time::sleep_until(started + drain * i as u32 / count).await;
            session.outbound.close(CloseCode::Restarting);
        }
        drop(sessions);
        // Sessions admitted while the list above was taken close themselves
        // (they see the draining flag); this pass catches any in between.
        for session in self.gateway.sessions.all() {
            session.outbound.close(CloseCode::Restarting);
        }
        self.connections.close();
        if tokio::time::timeout_at(deadline, self.connections.wait()).await.is_err() {
            warn!(left = self.connections.len(), "drain deadline passed; dropping the rest");
        }
        // The sessions' last disconnects are committed; a leader now hands
        // leadership over before Raft stops.
        if let Some(cluster) = self.cluster.lock().await.as_ref() {
            cluster.leave_group().await;
        }
        self.stop_all.cancel();
        self.background.close();
        let grace = deadline.max(Instant::now() + Duration::from_secs(1));
        if tokio::time::timeout_at(grace, async {
            self.connections.wait().await;
            self.background.wait().await;
        })
        .await
        .is_err()
        {
            warn!("tasks still running after the shutdown deadline");
        }
        if let Some(cluster) = self.cluster.lock().await.take() {
            cluster.shutdown().await;
        }
        info!(elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
    }
}
