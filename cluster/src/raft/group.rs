//! One node's membership of the Raft group: starting Raft on durable
//! storage, serving peers, and proposing commands from any node (followers
//! forward to the leader).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, RaftMetrics, SnapshotPolicy};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::network::{NetworkFactory, PeerAnswer, PeerMessage, ProposeRefusal};
use super::{node_id, Applier, Command, LogStore, NodeId, PeerNode, Raft, StateMachine, StorageError};
use crate::codec;
use crate::transport::{BoxFuture, PeerHandler, PeerIdentity, PeerTransport, SharedHandler};

/// The application's check of a command before it is proposed. Runs on the
/// leader (and on the proposing node), never at apply time: applying stays
/// total and deterministic whatever was committed.
pub trait ProposalValidator: Send + Sync + 'static {
    /// `proposer` is `None` for this node's own commands, else the peer that
    /// forwarded it (its name bound to its certificate).
    fn validate(&self, proposer: Option<&PeerIdentity>, command: &[u8]) -> Result<(), String>;
}

/// Accepts every command (tests, and applications with nothing to check).
pub struct AcceptAll;

impl ProposalValidator for AcceptAll {
    fn validate(&self, _: Option<&PeerIdentity>, _: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Why [`RaftGroup::remove_member`] removed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveMemberError {
    #[error("this node is not the leader")]
    NotLeader,
    #[error("not a member of the raft group")]
    NotMember,
    #[error("the leader and the last voter cannot be removed")]
    LastVoterOrLeader,
    /// No quorum for the change in time, or Raft refused it; nothing or
    /// the whole change may have taken effect.
    #[error("{0}")]
    Failed(String),
}

/// How a node takes part in the group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub node: String,
    pub peer_addr: String,
    /// The redb file holding this node's log, vote and snapshot.
    pub db_path: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Entries after which a snapshot is taken and the log purged.
    pub snapshot_every: u64,
    /// How long a proposal may take, forwarding included.
    pub propose_timeout: Duration,
}

impl GroupConfig {
    pub fn new(node: &str, peer_addr: &str, db_path: PathBuf) -> GroupConfig {
        GroupConfig {
            node: node.into(),
            peer_addr: peer_addr.into(),
            db_path,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(400),
            election_timeout_max: Duration::from_millis(800),
            snapshot_every: 10_000,
            propose_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a proposal did not commit. `Unavailable` is retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no quorum or no leader: {0}")]
    Unavailable(String),
    #[error("raft failed: {0}")]
    Fatal(String),
    /// The command failed validation; retrying it cannot help.
    #[error("command refused: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("raft config: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
}

pub struct RaftGroup {
    raft: Raft,
    me: NodeId,
    transport: Arc<dyn PeerTransport>,
    propose_timeout: Duration,
    validator: Arc<dyn ProposalValidator>,
    /// Peer messages refused because of who sent them (see `authorize`).
    refused_unauthorized: AtomicU64,
}

impl RaftGroup {
    pub async fn start(
        config: GroupConfig,
        applier: Box<dyn Applier>,
        validator: Arc<dyn ProposalValidator>,
        transport: Arc<dyn PeerTransport>,
    ) -> Result<Arc<RaftGroup>, GroupError> {
        let raft_config = Config {
            cluster_name: "starling".into(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 1_000,
            ..Config::default()
        }
        .validate()
        .map_err(|e| GroupError::Config(e.to_string()))?;
        let log = LogStore::open(&config.db_path)?;
        let state_machine = StateMachine::open(log.database(), applier)?;
        let network = NetworkFactory { transport: Arc::clone(&transport) };
        let me = node_id(&config.node);
        let raft = Raft::new(me, Arc::new(raft_config), network, log, state_machine)
            .await
            .map_err(|e| GroupError::Raft(e.to_string()))?;
        Ok(Arc::new(RaftGroup {
            raft,
            me,
            transport,
            propose_timeout: config.propose_timeout,
            validator,
            refused_unauthorized: AtomicU64::new(0),
        }))
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn metrics(&self) -> watch::Receiver<RaftMetrics<NodeId, PeerNode>> {
        self.raft.metrics()
    }

    /// Forms the group with `members` as voters. Only one node may do it,
    /// once; on a node that already has a log it is refused harmlessly.
    pub async fn initialize(&self, members: BTreeMap<NodeId, PeerNode>) -> Result<(), GroupError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(error)) => {
                debug!(%error, "initialize refused: already initialized");
                Ok(())
            }
            Err(error) => Err(GroupError::Raft(error.to_string())),
        }
    }

    /// Proposes `command` and waits until it is committed and applied here or
    /// on the leader; returns the applier's response.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        self.validator.validate(None, &command).map_err(ProposeError::Invalid)?;
        let attempt = async {
            let mut command = command;
            // A leader change while forwarding is retried a few times.
            for _ in 0..5 {
                match self.propose_once(command).await {
                    Ok(response) => return Ok(response),
                    Err((ProposeRefusal::NotLeader { .. }, returned)) => {
                        command = returned;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err((ProposeRefusal::Failed(reason), _)) => {
                        return Err(ProposeError::Unavailable(reason))
                    }
                    Err((ProposeRefusal::Invalid(reason), _)) => return Err(ProposeError::Invalid(reason)),
                }
            }
            Err(ProposeError::Unavailable("leader keeps changing".into()))
        };
        tokio::time::timeout(self.propose_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("proposal timed out".into())))
    }

    async fn propose_once(&self, command: Vec<u8>) -> Result<Vec<u8>, (ProposeRefusal, Vec<u8>)> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(leader) if leader == self.me => {
                self.write_locally(command.clone()).await.map_err(|refusal| (refusal, command))
            }
            Some(leader) => {
                let node =
                    self.raft.metrics().borrow().membership_config.membership().get_node(&leader).cloned();
                let Some(node) = node else {
                    return Err((ProposeRefusal::NotLeader { leader: None }, command));
                };
                let message = PeerMessage::Propose(command.clone());
                let body = codec::encode(&message)
                    .map_err(|e| (ProposeRefusal::Failed(e.to_string()), Vec::new()))?;
                let answer = self.transport.request(&node.peer_addr, body, None, self.propose_timeout).await;
                match answer.map(|bytes| codec::decode::<PeerAnswer>(&bytes)) {
                    Ok(Ok(PeerAnswer::Propose(Ok(response)))) => Ok(response),
                    Ok(Ok(PeerAnswer::Propose(Err(refusal)))) => Err((refusal, command)),
                    Ok(_) => Err((ProposeRefusal::Failed("bad answer to a proposal".into()), command)),
                    Err(error) => {
                        debug!(%error, "forwarding a proposal failed");
                        Err((ProposeRefusal::NotLeader { leader: Some(node) }, command))
                    }
                }
            }
            None => Err((ProposeRefusal::NotLeader { leader: None }, command)),
        }
    }

    /// The log index a linearizable read must see applied: confirmed by the
    /// leader with a quorum (asked over the network from a follower).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let attempt = async {
            for _ in 0..5 {
                let leader = self.raft.metrics().borrow().current_leader;
                let result = match leader {
                    Some(leader) if leader == self.me => self.read_index_locally().await,
                    Some(leader) => self.read_index_from(leader).await,
                    None => Err(ProposeRefusal::NotLeader { leader: None }),
                };
                match result {
                    Ok(index) => return Ok(index),
                    Err(ProposeRefusal::NotLeader { .. }) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(ProposeRefusal::Failed(reason) | ProposeRefusal::Invalid(reason)) => {
                        return Err(ProposeError::Unavailable(reason))
                    }
                }
            }
            Err(ProposeError::Unavailable("no stable leader".into()))
        };
        tokio::time::timeout(self.propose_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(ProposeError::Unavailable("read index timed out".into())))
    }

    async fn read_index_locally(&self) -> Result<u64, ProposeRefusal> {
        match self.raft.get_read_log_id().await {
            Ok((read, _applied)) => Ok(read.map_or(0, |id| id.index)),
            Err(RaftError::APIError(error)) => {
                debug!(%error, "not the leader for a read index");
                Err(ProposeRefusal::NotLeader { leader: None })
            }
            Err(error) => Err(ProposeRefusal::Failed(error.to_string())),
        }
    }

    async fn read_index_from(&self, leader: NodeId) -> Result<u64, ProposeRefusal> {
        let node = self.raft.metrics().borrow().membership_config.membership().get_node(&leader).cloned();
        let node = node.ok_or(ProposeRefusal::NotLeader { leader: None })?;
        let body =
            codec::encode(&PeerMessage::ReadIndex).map_err(|e| ProposeRefusal::Failed(e.to_string()))?;
        let answer = self.transport.request(&node.peer_addr, body, None, self.propose_timeout).await;
        match answer.map(|bytes| codec::decode::<PeerAnswer>(&bytes)) {
            Ok(Ok(PeerAnswer::ReadIndex(result))) => result,
            Ok(_) => Err(ProposeRefusal::Failed("bad answer to a read index".into())),
            Err(_) => Err(ProposeRefusal::NotLeader { leader: Some(node) }),
        }
    }

    /// Removes the node named `name` from the group for good, voter or
    /// learner (this node must lead), retrying while another membership
    /// change is under way, for at most `deadline`. Returns whether it was
    /// a voter. Deciding that the node is dead is the caller's business.
    pub async fn remove_member(&self, name: &str, deadline: Duration) -> Result<bool, RemoveMemberError> {
        let id = node_id(name);
        let (voter, voters_left) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            if metrics.current_leader != Some(self.me) {
                return Err(RemoveMemberError::NotLeader);
            }
            let membership = metrics.membership_config.membership();
            if membership.get_node(&id).is_none_or(|node| node.name != name) {
                return Err(RemoveMemberError::NotMember);
            }
            let voter = membership.voter_ids().any(|v| v == id);
            (voter, membership.voter_ids().filter(|v| *v != id).count())
        };
        if id == self.me || voters_left == 0 {
            return Err(RemoveMemberError::LastVoterOrLeader);
        }
        let change = if voter {
            ChangeMembers::RemoveVoters([id].into())
        } else {
            ChangeMembers::RemoveNodes([id].into())
        };
        let attempt = async {
            loop {
                // `retain: false`: a removed voter does not stay a learner.
                match self.raft.change_membership(change.clone(), false).await {
                    Ok(_) => return Ok(voter),
                    Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                        ChangeMembershipError::InProgress(_),
                    ))) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                        return Err(RemoveMemberError::NotLeader)
                    }
                    Err(error) => return Err(RemoveMemberError::Failed(error.to_string())),
                }
            }
        };
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(RemoveMemberError::Failed("the membership change timed out".into())))
    }

    /// The current leader's name, if known.
    pub fn leader_name(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics.membership_config.membership().get_node(&leader).map(|n| n.name.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.me)
    }

    /// Peer messages refused so far because of who sent them.
    pub fn refused_unauthorized(&self) -> u64 {
        self.refused_unauthorized.load(Ordering::Relaxed)
    }

    /// Counts a peer message the application refused because of its sender.
    pub fn record_refusal(&self) {
        self.refused_unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `peer` is a voter or learner of the group as this node knows it.
    pub fn is_member(&self, peer: &PeerIdentity) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let recorded = metrics.membership_config.membership().get_node(&node_id(&peer.name)).cloned();
        recorded.is_some_and(|node| node.name == peer.name)
    }

    /// Whether this node has no membership yet (it was never part of a group).
    fn is_unjoined(&self) -> bool {
        self.raft.metrics().borrow().membership_config.membership().nodes().next().is_none()
    }

    /// Whether `from` may send `message`. Raft RPCs speak only for their
    /// sender (the candidate's or leader's id is the sender's own). Votes
    /// come from members, or reach a node that has no group yet. Appends
    /// and snapshots come from members, reach a node with no group yet, or
    /// come from a leader of a term at least this node's (a node added while
    /// this node was away, now leading). Proposals and read indexes come from
    /// members only.
    fn authorize(&self, from: &PeerIdentity, message: &PeerMessage) -> bool {
        let speaks_for_itself =
            |vote: &openraft::Vote<NodeId>| vote.leader_id().voted_for() == Some(node_id(&from.name));
        let known = || self.is_member(from) || self.is_unjoined();
        let current_leader = |vote: &openraft::Vote<NodeId>| {
            known() || vote.leader_id().get_term() >= self.raft.metrics().borrow().current_term
        };
        match message {
            PeerMessage::Vote(rpc) => speaks_for_itself(&rpc.vote) && known(),
            PeerMessage::Append(rpc) => speaks_for_itself(&rpc.vote) && current_leader(&rpc.vote),
            PeerMessage::Snapshot(rpc) => speaks_for_itself(&rpc.vote) && current_leader(&rpc.vote),
            PeerMessage::Propose(_) | PeerMessage::ReadIndex => self.is_member(from),
            // The application authorises its own messages.
            PeerMessage::App(_) => true,
        }
    }

    async fn write_forwarded(
        &self,
        from: &PeerIdentity,
        command: Vec<u8>,
    ) -> Result<Vec<u8>, ProposeRefusal> {
        if let Err(reason) = self.validator.validate(Some(from), &command) {
            self.record_refusal();
            warn!(peer = %from.name, %reason, "refusing a forwarded proposal");
            return Err(ProposeRefusal::Invalid(reason));
        }
        self.write_locally(command).await
    }

    async fn write_locally(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeRefusal> {
        match self.raft.client_write(Command(command)).await {
            Ok(response) => Ok(response.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(ProposeRefusal::NotLeader { leader: forward.leader_node })
            }
            Err(error) => Err(ProposeRefusal::Failed(error.to_string())),
        }
    }

    /// The handler to serve peers with: Raft traffic and forwarded
    /// proposals are handled here, application messages go to `app`.
    pub fn handler(self: &Arc<Self>, app: SharedHandler) -> SharedHandler {
        Arc::new(GroupHandler { group: Arc::clone(self), app })
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

struct GroupHandler {
    group: Arc<RaftGroup>,
    app: SharedHandler,
}

impl PeerHandler for GroupHandler {
    fn request(
        &self,
        from: &PeerIdentity,
        body: Vec<u8>,
        trace: Option<String>,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let (group, app, from) = (Arc::clone(&self.group), Arc::clone(&self.app), from.clone());
        Box::pin(async move {
            let message: PeerMessage = codec::decode(&body).map_err(|e| e.to_string())?;
            if !group.authorize(&from, &message) {
                group.refused_unauthorized.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %from.name, "refusing a raft message from a peer not allowed to send it");
                return Err("not authorized".into());
            }
            let raft = &group.raft;
            let answer = match message {
                PeerMessage::Vote(rpc) => PeerAnswer::Vote(raft.vote(rpc).await),
                PeerMessage::Append(rpc) => PeerAnswer::Append(raft.append_entries(rpc).await),
                PeerMessage::Snapshot(rpc) => PeerAnswer::Snapshot(raft.install_snapshot(rpc).await),
                PeerMessage::Propose(command) => {
                    PeerAnswer::Propose(group.write_forwarded(&from, command).await)
                }
                PeerMessage::ReadIndex => PeerAnswer::ReadIndex(group.read_index_locally().await),
                PeerMessage::App(body) => PeerAnswer::App(app.request(&from, body, trace).await?),
            };
            codec::encode(&answer).map_err(|e| e.to_string())
        })
    }

    fn one_way(&self, from: &PeerIdentity, body: Vec<u8>, trace: Option<String>) {
        match codec::decode::<PeerMessage>(&body) {
            Ok(PeerMessage::App(body)) => self.app.one_way(from, body, trace),
            Ok(_) => debug!(peer = %from.name, "ignoring a one-way raft message"),
            Err(error) => debug!(peer = %from.name, %error, "undecodable one-way message"),
        }
    }
}
