//! `MembershipConfig`: gossip and failure-detection settings.
//!
//! Owns the translation into chitchat's `ChitchatConfig`, where every field is
//! set explicitly, and the checks that reject settings chitchat would panic or
//! misbehave on. Must not open sockets or start tasks.

use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, ProtocolVersion};

use super::member::ClusterMember;
use super::MembershipError;

/// Interval-to-interval history the failure detector averages over (about a
/// minute and a half at the default gossip interval).
const SAMPLING_WINDOW_SIZE: usize = 1_000;

/// Heartbeat gaps longer than this many gossip intervals are not learned
/// from: they are pauses or the gap across a death, not the normal rhythm.
const MAX_INTERVAL_IN_GOSSIP_INTERVALS: u32 = 8;

/// Every Starling node runs chitchat 0.13 or later, which decodes V1
/// (compressed digests); a peer's SYN is answered in the version it used.
const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion::V1;

/// Settings for one node's gossip membership.
#[derive(Clone, Debug, PartialEq)]
pub struct MembershipConfig {
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
    /// This node as it advertises itself. A gossip port of 0 is replaced by the
    /// port actually bound, and an unspecified IP by the bound IP.
    pub me: ClusterMember,
    /// Where the gossip socket binds (UDP for the real transport); port 0 picks one.
    pub listen: SocketAddr,
    /// Gossip addresses (`ip:port` or `host:port`, re-resolved every minute) to
    /// contact first; listing this node itself is harmless.
    pub seeds: Vec<String>,
    /// How often a gossip round runs. Changes and deaths are noticed once per round.
    pub gossip_interval: Duration,
    /// A node is declared dead once the time since its last heartbeat exceeds
    /// `phi_threshold` times the mean interval between its heartbeats.
    pub phi_threshold: f64,
    /// How long a dead node's state is kept (and gossiped as dead) before it is forgotten.
    pub dead_node_grace_period: Duration,
    /// How long deleted keys are kept as tombstones before they are garbage collected.
    pub marked_for_deletion_grace_period: Duration,
}

impl MembershipConfig {
    /// Default gossip interval: fast enough for detection in about 2 s on a LAN.
    pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(250);
    /// Default phi threshold (see `phi_threshold`); tuned with the gossip interval.
    pub const DEFAULT_PHI_THRESHOLD: f64 = 12.0;
    /// Default retention of dead nodes' state.
    pub const DEFAULT_DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
    /// Default retention of deleted keys.
    pub const DEFAULT_MARKED_FOR_DELETION_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);

    /// Settings for a LAN: a killed node is reported removed about 2 s after it stops.
    pub fn new(
        cluster_id: impl Into<String>,
        me: ClusterMember,
        listen: SocketAddr,
        seeds: Vec<String>,
    ) -> Self {
        MembershipConfig {
            cluster_id: cluster_id.into(),
            me,
            listen,
            seeds,
            gossip_interval: Self::DEFAULT_GOSSIP_INTERVAL,
            phi_threshold: Self::DEFAULT_PHI_THRESHOLD,
            dead_node_grace_period: Self::DEFAULT_DEAD_NODE_GRACE_PERIOD,
            marked_for_deletion_grace_period: Self::DEFAULT_MARKED_FOR_DELETION_GRACE_PERIOD,
        }
    }

    pub(super) fn validate(&self) -> Result<(), MembershipError> {
        if self.cluster_id.is_empty() {
            return Err(MembershipError::InvalidConfig("cluster id must not be empty".to_string()));
        }
        if self.me.name.is_empty() {
            return Err(MembershipError::InvalidConfig("node name must not be empty".to_string()));
        }
        if self.gossip_interval.is_zero() {
            return Err(MembershipError::InvalidConfig("gossip interval must be positive".to_string()));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(MembershipError::InvalidConfig(format!(
                "phi threshold must be a positive number, got {}",
                self.phi_threshold
            )));
        }
        if self.dead_node_grace_period.is_zero() {
            return Err(MembershipError::InvalidConfig(
                "dead node grace period must be positive".to_string(),
            ));
        }
        Ok(())
    }

    /// The chitchat configuration for a node whose gossip socket is bound to `bound_addr`.
    pub(super) fn to_chitchat_config(
        &self,
        chitchat_id: ChitchatId,
        bound_addr: SocketAddr,
    ) -> ChitchatConfig {
        ChitchatConfig {
            chitchat_id,
            cluster_id: self.cluster_id.clone(),
            gossip_interval: self.gossip_interval,
            listen_addr: bound_addr,
            seed_nodes: self.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: self.phi_threshold,
                sampling_window_size: SAMPLING_WINDOW_SIZE,
                max_interval: self.gossip_interval * MAX_INTERVAL_IN_GOSSIP_INTERVALS,
                // The prior for the mean heartbeat interval until real samples
                // outweigh it: a heartbeat arrives at least once per round.
                initial_interval: self.gossip_interval,
                dead_node_grace_period: self.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: self.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: PROTOCOL_VERSION,
        }
    }
}
