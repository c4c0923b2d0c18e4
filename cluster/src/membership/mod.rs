//! Gossip membership: which nodes are alive, and what each says about itself.
//!
//! Owns the chitchat instance of this node: starts it, publishes this node's
//! role and connection count, and turns chitchat's live-node set into typed
//! [`ClusterMember`]s and a [`ClusterChange`] stream. Nothing outside this
//! module sees chitchat's keys or types, except the gossip [`Transport`]
//! (re-exported with its UDP and in-memory implementations, next to the
//! sealed UDP one Starling runs with a gossip key). It must not
//! decide what a death means (evicting presence is Raft's job) nor know about
//! rooms.
//!
//! # Layout
//!
//! - `member`: `ClusterMember` and its gossip keys.
//! - `changes`: `ClusterChange`, the diff rule and the change stream.
//! - `config`: `MembershipConfig` and its translation to chitchat's config.
//! - `socket`: hands an already bound socket to chitchat.
//! - `sealed`: the gossip key and the transport sealing every datagram with it.

mod changes;
mod config;
mod member;
mod sealed;
mod socket;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{spawn_chitchat, ChitchatHandle, ChitchatId, NodeState};
use tokio::sync::watch;
use tracing::{info, warn};

pub use self::changes::{ClusterChange, ClusterChangeStream};
pub use self::config::MembershipConfig;
pub use self::member::ClusterMember;
pub use self::sealed::{GossipKey, GossipKeyError, GossipStats, SealedUdpTransport};
use self::socket::OpenedSocket;
pub use chitchat::transport::{ChannelTransport, Transport, UdpTransport};

/// How long `start` waits for the first gossip round to list this node as live.
const FIRST_ROUND_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors starting gossip membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("invalid membership config: {0}")]
    InvalidConfig(String),
    #[error("cannot open gossip socket on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start gossip")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("gossip did not complete its first round within {0:?}")]
    FirstRoundTimeout(Duration),
}

/// This node's gossip membership. Gossip runs until `shutdown` (or drop).
pub struct Membership {
    /// Keeps chitchat's server task running and gives access to its state.
    chitchat_handle: ChitchatHandle,
    /// Chitchat's live nodes (this node included), refreshed after each gossip
    /// round; read by `live_members` and cloned for each subscriber.
    live_nodes_rx: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    /// The address peers gossip with, after resolving port 0.
    gossip_addr: SocketAddr,
}

impl Membership {
    /// Binds the gossip socket, starts gossiping with the seeds, and returns once
    /// this node is in its own live set (after the first gossip round).
    pub async fn start(
        config: MembershipConfig,
        transport: &dyn Transport,
    ) -> Result<Membership, MembershipError> {
        config.validate()?;
        let socket = transport
            .open(config.listen)
            .await
            .map_err(|error| MembershipError::Bind { addr: config.listen, source: error.into() })?;
        let bound_addr = socket
            .local_addr()
            .map_err(|error| MembershipError::Bind { addr: config.listen, source: error.into() })?;
        let me = ClusterMember {
            gossip_addr: advertised_gossip_addr(config.me.gossip_addr, bound_addr)?,
            ..config.me.clone()
        };
        let chitchat_id = me.chitchat_id();
        let chitchat_config = config.to_chitchat_config(chitchat_id.clone(), bound_addr);
        let chitchat_handle = spawn_chitchat(chitchat_config, me.key_values(), &OpenedSocket::new(socket))
            .await
            .map_err(|error| MembershipError::Start(error.into()))?;
        let mut live_nodes_rx = chitchat_handle.with_chitchat(|chitchat| chitchat.live_nodes_watcher()).await;
        let first_round = live_nodes_rx.wait_for(|live_nodes| live_nodes.contains_key(&chitchat_id));
        if !matches!(tokio::time::timeout(FIRST_ROUND_TIMEOUT, first_round).await, Ok(Ok(_))) {
            stop_chitchat(chitchat_handle, &me.name).await;
            return Err(MembershipError::FirstRoundTimeout(FIRST_ROUND_TIMEOUT));
        }
        info!(
            cluster_id = %config.cluster_id,
            node = %me.name,
            incarnation = me.incarnation,
            gossip_addr = %me.gossip_addr,
            bound_addr = %bound_addr,
            seeds = ?config.seeds,
            "gossip membership started"
        );
        Ok(Membership { chitchat_handle, live_nodes_rx, gossip_addr: me.gossip_addr })
    }

    /// The address peers gossip with (the one to list in their seeds).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// The live members, this node included, one per name (the highest
    /// incarnation), sorted by name. Reflects the last completed gossip round.
    pub fn live_members(&self) -> Vec<ClusterMember> {
        member::members_by_name(&self.live_nodes_rx.borrow()).into_values().collect()
    }

    /// Every live incarnation, several per name while a node restarts (or
    /// while another process claims its name): liveness of one incarnation
    /// must be read here, not from [`Membership::live_members`].
    pub fn live_incarnations(&self) -> Vec<ClusterMember> {
        self.live_nodes_rx.borrow().values().filter_map(ClusterMember::from_node_state).collect()
    }

    /// A stream that first yields an `Add` for every live member (this node
    /// included), then every change; see [`ClusterChangeStream`].
    pub fn subscribe(&self) -> ClusterChangeStream {
        ClusterChangeStream::new(self.live_nodes_rx.clone())
    }

    /// Publishes this node's role; peers (and this node's own view) see it
    /// after the next gossip round.
    pub async fn set_role(&self, role: &str) {
        self.chitchat_handle
            .with_chitchat(|chitchat| member::set_role(chitchat.self_node_state(), role))
            .await;
    }

    /// Publishes this node's connection count; peers (and this node's own view)
    /// see it after the next gossip round.
    pub async fn set_connections(&self, connections: u64) {
        self.chitchat_handle
            .with_chitchat(|chitchat| member::set_connections(chitchat.self_node_state(), connections))
            .await;
    }

    /// Stops gossiping and waits for chitchat's task to end. Peers report this
    /// node removed once their failure detectors notice the silence; open
    /// change streams end.
    pub async fn shutdown(self) {
        let name = self.chitchat_handle.chitchat_id().node_id.to_string();
        stop_chitchat(self.chitchat_handle, &name).await;
        info!(node = %name, "gossip membership stopped");
    }
}

async fn stop_chitchat(chitchat_handle: ChitchatHandle, name: &str) {
    if let Err(error) = chitchat_handle.shutdown().await {
        warn!(node = %name, error = %error, "gossip task ended with an error");
    }
}

/// The gossip address to advertise: the configured one, with port 0 and an
/// unspecified IP replaced by what the socket is actually bound to.
fn advertised_gossip_addr(configured: SocketAddr, bound: SocketAddr) -> Result<SocketAddr, MembershipError> {
    let ip = if configured.ip().is_unspecified() { bound.ip() } else { configured.ip() };
    let port = if configured.port() == 0 { bound.port() } else { configured.port() };
    if ip.is_unspecified() {
        return Err(MembershipError::InvalidConfig(format!(
            "gossip address {configured} has no usable IP to advertise (socket bound to {bound})"
        )));
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_and_change_streams_can_move_between_tasks() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Membership>();
        assert_send_sync::<ClusterChangeStream>();
    }

    #[test]
    fn port_zero_and_unspecified_ip_are_replaced_by_the_bound_address() {
        let bound: SocketAddr = "10.0.0.5:40123".parse().unwrap();
        let advertised = |configured: &str| advertised_gossip_addr(configured.parse().unwrap(), bound).ok();
        assert_eq!(advertised("127.0.0.1:0"), Some("127.0.0.1:40123".parse().unwrap()));
        assert_eq!(advertised("0.0.0.0:7901"), Some("10.0.0.5:7901".parse().unwrap()));
        assert_eq!(advertised("192.168.1.2:7901"), Some("192.168.1.2:7901".parse().unwrap()));
    }

    #[test]
    fn unspecified_advertised_and_bound_ip_is_rejected() {
        let result = advertised_gossip_addr("0.0.0.0:0".parse().unwrap(), "0.0.0.0:7901".parse().unwrap());
        assert!(matches!(result, Err(MembershipError::InvalidConfig(_))));
    }
}
