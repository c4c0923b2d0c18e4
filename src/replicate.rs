//! The one place room commands meet replication.
//!
//! Everything that changes room membership is a [`RoomCommand`] proposed
//! here. A command gets a log index, is applied to the [`RoomTable`], and
//! its effects are handed to an [`EffectsObserver`] (the fan-out hub)
//! under the same lock, so every node sees effects in log order. A single node orders
//! commands itself ([`Backend::Local`]); a cluster orders them through Raft
//! ([`Backend::Raft`]), where every node applies every command through
//! [`TableApplier`]. The gateway does not know which.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_cluster::codec;
use starling_cluster::raft::{Applier, ProposalValidator, ProposeError, RaftGroup};
use starling_cluster::transport::{BoxFuture, PeerIdentity};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::protocol::{ConnId, RoomName};
use crate::rooms::{
    Effect, LegacyTableSnapshot, PendingHook, RoomCommand, RoomCount, RoomSnapshot, RoomSummary, RoomTable,
    TableSnapshot,
};

/// Why a command was not applied or a read could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// Retryable: no quorum or no leader right now.
    #[error("room state is unavailable: {0}")]
    Unavailable(String),
}

/// Counts over the whole room table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    pub rooms: usize,
    pub members: usize,
    /// Connections in at least one room.
    pub connections: usize,
}

/// What sees applied effects: called in log order, under the table's lock,
/// so nothing else can apply in between (the fan-out hub mirrors the table
/// through it).
pub trait EffectsObserver: Send + Sync + 'static {
    /// The effects of one command, just applied.
    fn applied(&self, effects: &[Effect]);
    /// The whole table was replaced (a Raft snapshot was installed).
    fn rebuilt(&self, table: &RoomTable);
}

/// How long a node waits for its own state machine to catch up with an
/// index it knows is committed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(3);

struct TableState {
    last_index: u64,
    table: RoomTable,
}

/// The room table as applied on this node, shared by the apply path (local
/// or Raft) and by reads.
pub struct SharedTable {
    state: Mutex<TableState>,
    observer: Arc<dyn EffectsObserver>,
    /// The last applied log index, for waiting on "applied at least N".
    applied_tx: watch::Sender<u64>,
    /// Committed entries skipped because they did not decode or validate
    /// (`starling_raft_entries_rejected_total`).
    rejected_entries: AtomicU64,
}

impl SharedTable {
    pub fn new(observer: Arc<dyn EffectsObserver>) -> Arc<SharedTable> {
        let state = TableState { last_index: 0, table: RoomTable::new() };
        Arc::new(SharedTable {
            state: Mutex::new(state),
            observer,
            applied_tx: watch::Sender::new(0),
            rejected_entries: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `command` at the next index (a single node's own log).
    fn apply_next(&self, command: RoomCommand) -> Vec<Effect> {
        let mut state = self.lock();
        let index = state.last_index + 1;
        state.last_index = index;
        let effects = state.table.apply(index, command);
        // Under the same lock, so the observer sees effects in log order.
        self.observer.applied(&effects);
        drop(state);
        self.applied_tx.send_replace(index);
        effects
    }

    /// Applies a Raft entry's batch; the applied index becomes `index`.
    fn apply_batch(&self, index: u64, commands: Vec<RoomCommand>) -> Vec<Vec<Effect>> {
        let mut state = self.lock();
        let mut all = Vec::with_capacity(commands.len());
        for (position, command) in commands.into_iter().enumerate().take(MAX_BATCH) {
            let effects = state.table.apply(table_index(index, position), command);
            self.observer.applied(&effects);
            all.push(effects);
        }
        state.last_index = index;
        drop(state);
        self.applied_tx.send_replace(index);
        all
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    /// Committed entries skipped so far (undecodable or invalid).
    pub fn rejected_entries(&self) -> u64 {
        self.rejected_entries.load(Ordering::Relaxed)
    }

    /// Waits until this node has applied `index` (bounded).
    pub async fn wait_applied(&self, index: u64) -> Result<(), ReplicateError> {
        let mut applied = self.applied_tx.subscribe();
        let reached = tokio::time::timeout(CATCH_UP_TIMEOUT, applied.wait_for(|&i| i >= index)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ReplicateError::Unavailable("this node is behind the log".into())),
        }
    }
}

/// What the proposers of one batch get back through Raft: the log index of
/// the batch and each command's effects, in order.
#[derive(Serialize, Deserialize)]
struct AppliedBatch {
    index: u64,
    effects: Vec<Vec<Effect>>,
}

/// Commands per Raft entry at most.
const MAX_BATCH: usize = 1024;
/// Batches proposed and not yet committed, at most.
const BATCHES_IN_FLIGHT: usize = 8;

/// The table index of command `position` of the batch at log `index`: room
/// epochs come from it, so every command needs its own.
fn table_index(index: u64, position: usize) -> u64 {
    debug_assert!(position < MAX_BATCH);
    index.saturating_mul(MAX_BATCH as u64).saturating_add(position as u64)
}

/// Decodes a batch and checks every command; the one rule both proposing
/// and applying use.
fn decode_batch(bytes: &[u8]) -> Result<Vec<RoomCommand>, String> {
    let commands = codec::decode::<Vec<RoomCommand>>(bytes).map_err(|e| e.to_string())?;
    if commands.is_empty() || commands.len() > MAX_BATCH {
        return Err(format!("a batch holds 1 to {MAX_BATCH} commands, not {}", commands.len()));
    }
    for command in &commands {
        command.check().map_err(str::to_string)?;
    }
    Ok(commands)
}

/// Checks batches before they are proposed: well formed, and, when another
/// node forwarded it, only about that node's own members: its joins carry
/// its name and incarnation, its leaves name its own connections, and it
/// evicts only its own earlier incarnations. The leader's own evictions of
/// departed nodes are proposed locally.
pub struct CommandValidator;

impl ProposalValidator for CommandValidator {
    fn validate(&self, proposer: Option<&PeerIdentity>, command: &[u8]) -> Result<(), String> {
        let commands = decode_batch(command)?;
        let Some(peer) = proposer else {
            return Ok(());
        };
        let own_tag = ConnId::tag_of(&peer.name, peer.incarnation);
        for command in &commands {
            let allowed = match command {
                RoomCommand::Join { member, .. } => {
                    *member.node == *peer.name && member.incarnation == peer.incarnation
                }
                RoomCommand::Leave { conn, .. } | RoomCommand::ConnGone { conn } => {
                    conn.incarnation_tag() == own_tag
                }
                RoomCommand::EvictNode { node, incarnation } => {
                    **node == *peer.name && *incarnation < peer.incarnation
                }
                // A webhook sender that lost the leadership after it
                // delivered still reports it (refusing would only make
                // the next leader send the events twice).
                RoomCommand::HooksDelivered { .. } => true,
            };
            if !allowed {
                return Err(format!("node {} may not propose {command:?}", peer.name));
            }
        }
        Ok(())
    }
}

/// The room table behind a Raft state machine.
pub struct TableApplier(pub Arc<SharedTable>);

impl Applier for TableApplier {
    fn apply(&mut self, index: u64, batch: &[u8]) -> Vec<u8> {
        let commands = decode_batch(batch).unwrap_or_else(|reason| {
            // Every node fails the same way on the same bytes, so the
            // tables stay equal; the entry is skipped, never applied in part.
            error!(index, %reason, "committed room command batch rejected and skipped");
            self.0.rejected_entries.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        let effects = self.0.apply_batch(index, commands);
        codec::encode(&AppliedBatch { index, effects }).unwrap_or_default()
    }

    fn skipped(&mut self, index: u64) {
        let mut state = self.0.lock();
        state.last_index = state.last_index.max(index);
        drop(state);
        self.0.applied_tx.send_replace(index);
    }

    fn snapshot(&self) -> Vec<u8> {
        let state = self.0.lock();
        codec::encode(&(state.last_index, state.table.to_snapshot())).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (index, table) = codec::decode::<(u64, TableSnapshot)>(snapshot)
            .or_else(|error| {
                // A snapshot written before the webhook outbox existed.
                codec::decode::<(u64, LegacyTableSnapshot)>(snapshot)
                    .map(|(index, legacy)| (index, legacy.into()))
                    .map_err(|_| error)
            })
            .map_err(|e| e.to_string())?;
        let mut state = self.0.lock();
        state.table = RoomTable::from_snapshot(table);
        state.last_index = index;
        self.0.observer.rebuilt(&state.table);
        drop(state);
        self.0.applied_tx.send_replace(index);
        Ok(())
    }
}

pub struct Replicator {
    shared: Arc<SharedTable>,
    backend: Backend,
}

enum Backend {
    /// A single node: the log is this process's apply order.
    Local,
    /// A cluster member: commands go through the Raft group, batched.
    Raft { group: Arc<RaftGroup>, proposals_tx: mpsc::UnboundedSender<Proposal> },
}

/// Where batches are proposed: the Raft group (a fake in tests).
pub trait BatchProposer: Send + Sync + 'static {
    /// Proposes one encoded batch; answers the applied batch's response.
    fn propose(&self, batch: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ProposeError>>;
}

/// Proposes batches through a Raft group.
struct GroupProposer(Arc<RaftGroup>);

impl BatchProposer for GroupProposer {
    fn propose(&self, batch: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ProposeError>> {
        let group = Arc::clone(&self.0);
        Box::pin(async move { group.propose(batch).await })
    }
}

/// One command waiting to be batched, and where its effects go.
struct Proposal {
    command: RoomCommand,
    reply_tx: oneshot::Sender<Result<Vec<Effect>, ReplicateError>>,
}

/// Gathers the proposals queued at this node into batches: one Raft entry
/// (and one forward to the leader) carries up to `MAX_BATCH` commands, and
/// up to `BATCHES_IN_FLIGHT` batches are under way at once. No timer: a
/// batch is whatever queued while the previous ones were in flight.
async fn run_batcher(
    proposer: Arc<dyn BatchProposer>,
    shared: Arc<SharedTable>,
    mut proposals_rx: mpsc::UnboundedReceiver<Proposal>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = proposals_rx.recv().await {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match proposals_rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (proposer, shared) = (Arc::clone(&proposer), Arc::clone(&shared));
        tokio::spawn(async move {
            let (commands, waiters): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply_tx)).unzip();
            let result = propose_batch(proposer.as_ref(), &shared, &commands).await;
            drop(permit);
            match result {
                Ok(effects) => {
                    for (waiter, effects) in waiters.into_iter().zip(effects) {
                        let _ = waiter.send(Ok(effects));
                    }
                }
                Err(error) => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

async fn propose_batch(
    proposer: &dyn BatchProposer,
    shared: &SharedTable,
    commands: &[RoomCommand],
) -> Result<Vec<Vec<Effect>>, ReplicateError> {
    let bytes = codec::encode(&commands).map_err(|e| ReplicateError::Unavailable(e.to_string()))?;
    let response = proposer.propose(bytes).await.map_err(|error| {
        if let ProposeError::Invalid(reason) = &error {
            // This node's own commands failing validation is a bug here.
            warn!(%reason, "a proposed batch was refused");
        }
        ReplicateError::Unavailable(error.to_string())
    })?;
    let applied: AppliedBatch =
        codec::decode(&response).map_err(|e| ReplicateError::Unavailable(e.to_string()))?;
    // The leader applied it; make it visible here before answering, so a
    // read on this node sees the caller's own write.
    shared.wait_applied(applied.index).await?;
    Ok(applied.effects)
}

impl Replicator {
    pub fn local(shared: Arc<SharedTable>) -> Replicator {
        Replicator { shared, backend: Backend::Local }
    }

    /// Must be called inside a tokio runtime (it starts the batcher task).
    pub fn raft(shared: Arc<SharedTable>, group: Arc<RaftGroup>) -> Replicator {
        let (proposals_tx, proposals_rx) = mpsc::unbounded_channel();
        let proposer = Arc::new(GroupProposer(Arc::clone(&group)));
        tokio::spawn(run_batcher(proposer, Arc::clone(&shared), proposals_rx));
        Replicator { shared, backend: Backend::Raft { group, proposals_tx } }
    }

    pub fn shared(&self) -> &Arc<SharedTable> {
        &self.shared
    }

    /// Proposes `command` and waits until it is applied on this node;
    /// returns its effects.
    pub async fn propose(&self, command: RoomCommand) -> Result<Vec<Effect>, ReplicateError> {
        let proposals_tx = match &self.backend {
            Backend::Local => return Ok(self.shared.apply_next(command)),
            Backend::Raft { proposals_tx, .. } => proposals_tx,
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        proposals_tx
            .send(Proposal { command, reply_tx })
            .map_err(|_| ReplicateError::Unavailable("node is stopping".into()))?;
        reply_rx.await.unwrap_or_else(|_| Err(ReplicateError::Unavailable("node is stopping".into())))
    }

    /// A room as of a linearizable read: in a cluster, everything committed
    /// before the read started is applied here first.
    pub async fn presence(&self, room: &RoomName) -> Result<Option<RoomSnapshot>, ReplicateError> {
        if let Backend::Raft { group, .. } = &self.backend {
            let index = group.read_index().await.map_err(|e| ReplicateError::Unavailable(e.to_string()))?;
            self.shared.wait_applied(index).await?;
        }
        Ok(self.snapshot(room))
    }

    /// The rooms of `namespace` with their member counts, as of a
    /// linearizable read (see [`Replicator::presence`]).
    pub async fn room_counts(&self, namespace: &str) -> Result<Vec<RoomCount>, ReplicateError> {
        if let Backend::Raft { group, .. } = &self.backend {
            let index = group.read_index().await.map_err(|e| ReplicateError::Unavailable(e.to_string()))?;
            self.shared.wait_applied(index).await?;
        }
        Ok(self.shared.lock().table.room_counts(namespace))
    }

    /// Rooms whose names start with `prefix` as applied on this node now
    /// (no quorum needed, so an operator sees them during a partition):
    /// the first `limit` by name, and how many match in all.
    pub fn rooms_with_prefix(&self, prefix: &str, limit: usize) -> (Vec<RoomSummary>, usize) {
        self.shared.lock().table.rooms_with_prefix(prefix, limit)
    }

    /// A room as applied on this node now (includes every command this
    /// node has had a reply for).
    pub fn snapshot(&self, room: &RoomName) -> Option<RoomSnapshot> {
        self.shared.lock().table.snapshot(room)
    }

    /// Calls `f` with the room as applied here while no further command can
    /// apply, so that what `f` queues for a connection lands exactly between
    /// the effects already mirrored and later ones.
    pub fn with_snapshot<R>(&self, room: &RoomName, f: impl FnOnce(Option<RoomSnapshot>) -> R) -> R {
        let state = self.shared.lock();
        f(state.table.snapshot(room))
    }

    /// Every (node, incarnation) that hosts members, as applied here.
    pub fn node_incarnations(&self) -> std::collections::BTreeSet<(Arc<str>, u64)> {
        self.shared.lock().table.node_incarnations()
    }

    pub fn stats(&self) -> TableStats {
        let state = self.shared.lock();
        TableStats {
            rooms: state.table.room_count(),
            members: state.table.member_count(),
            connections: state.table.connection_count(),
        }
    }

    /// Up to `max` webhook events of the app namespace `app` with ids above
    /// `after`, as applied here.
    pub fn pending_hooks(&self, app: &str, after: u64, max: usize) -> Vec<PendingHook> {
        self.shared.lock().table.outbox().pending(app, after, max)
    }

    /// How many webhook events `app` has waiting, and how many any app
    /// dropped because its outbox was full.
    pub fn hook_counts(&self, app: &str) -> (usize, u64) {
        let state = self.shared.lock();
        (state.table.outbox().len(app), state.table.outbox().dropped())
    }

    /// A receiver of the applied index, to wait for new commands.
    pub fn applied_changes(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    /// Whether this node is the one that sends the cluster's webhooks: a
    /// single node always; in a cluster, the Raft leader as it knows it.
    pub fn is_leader(&self) -> bool {
        match &self.backend {
            Backend::Local => true,
            Backend::Raft { group, .. } => group.is_leader(),
        }
    }

    /// Confirms with a quorum that this node is still the leader (a
    /// deposed leader that has not heard of its successor yet fails).
    pub async fn confirm_leader(&self) -> Result<(), ReplicateError> {
        let Backend::Raft { group, .. } = &self.backend else {
            return Ok(());
        };
        let not_leader = || ReplicateError::Unavailable("this node is not the leader".into());
        if !group.is_leader() {
            return Err(not_leader());
        }
        group.read_index().await.map_err(|e| ReplicateError::Unavailable(e.to_string()))?;
        if group.is_leader() {
            Ok(())
        } else {
            Err(not_leader())
        }
    }

    /// Whether this node can change room state now: a single node always;
    /// a cluster member when its group has a leader.
    pub fn is_ready(&self) -> bool {
        match &self.backend {
            Backend::Local => true,
            Backend::Raft { group, .. } => group.metrics().borrow().current_leader.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::MemberRecord;
    use proptest::prelude::*;

    /// Records what the table hands out, in order.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Effect>>);

    impl EffectsObserver for Recorder {
        fn applied(&self, effects: &[Effect]) {
            self.0.lock().unwrap().extend_from_slice(effects);
        }
        fn rebuilt(&self, _table: &RoomTable) {}
    }

    fn applier() -> TableApplier {
        TableApplier(SharedTable::new(Arc::new(Recorder::default())))
    }

    fn join(user: &str, node: &str, incarnation: u64, meta: &str) -> RoomCommand {
        RoomCommand::Join {
            room: RoomName::parse("chat:a").unwrap(),
            member: MemberRecord {
                user: user.into(),
                conn: ConnId::new(ConnId::tag_of(node, incarnation), 1),
                node: node.into(),
                incarnation,
                meta: meta.into(),
            },
            max_members: None,
        }
    }

    fn peer(name: &str, incarnation: u64) -> PeerIdentity {
        PeerIdentity { name: name.into(), incarnation }
    }

    #[test]
    fn the_webhook_outbox_travels_in_snapshots_and_a_pre_outbox_snapshot_still_loads() {
        let mut applier = applier();
        let mut command = join("a", "node-1", 7, "{}");
        if let RoomCommand::Join { room, .. } = &mut command {
            *room = RoomName::parse("pusher-app:presence-x").unwrap();
        }
        applier.apply(1, &codec::encode(&vec![command]).unwrap());
        let outbox = |applier: &TableApplier| applier.0.lock().table.outbox().pending("pusher-app", 0, 10);
        assert_eq!(outbox(&applier).len(), 2, "channel_occupied and member_added");
        let mut restored = self::applier();
        restored.restore(&applier.snapshot()).unwrap();
        assert_eq!(outbox(&restored), outbox(&applier));
        let delivered = RoomCommand::HooksDelivered { app: "pusher-app".into(), up_to: 2 };
        restored.apply(2, &codec::encode(&vec![delivered]).unwrap());
        assert!(outbox(&restored).is_empty());

        // A snapshot of peer protocol 6: (index, rooms) with no outbox.
        let legacy = codec::encode(&(5u64, Vec::<u8>::new())).unwrap();
        let mut old = self::applier();
        old.restore(&legacy).unwrap();
        assert_eq!(old.0.applied_index(), 5);
        assert!(old.restore(b"\x05garbage").is_err());
    }

    #[test]
    fn a_committed_garbage_entry_is_skipped_counted_and_the_log_goes_on() {
        let mut applier = applier();
        // An 11-byte entry: one Join whose room name claims 2^62 bytes
        // (it aborted every node, and again on every restart, before the
        // decode was bounded).
        let mut bomb = vec![0x01, 0x00, 0xfd];
        bomb.extend_from_slice(&(1u64 << 62).to_le_bytes());
        assert_eq!(bomb.len(), 11);
        applier.apply(1, &bomb);
        assert_eq!(applier.0.rejected_entries(), 1);
        assert_eq!(applier.0.applied_index(), 1);
        // An entry with one invalid command is skipped whole.
        let mixed =
            codec::encode(&vec![join("a", "node-1", 7, "{}"), join("b", "node-1", 7, "not json")]).unwrap();
        applier.apply(2, &mixed);
        assert_eq!(applier.0.rejected_entries(), 2);
        assert_eq!(applier.0.lock().table.member_count(), 0);
        // A good entry after them applies.
        applier.apply(3, &codec::encode(&vec![join("a", "node-1", 7, "{}")]).unwrap());
        assert_eq!(applier.0.lock().table.member_count(), 1);
        assert_eq!(applier.0.applied_index(), 3);
    }

    #[test]
    fn forwarded_proposals_may_only_concern_the_proposers_own_members() {
        let validate = |from: Option<&PeerIdentity>, commands: Vec<RoomCommand>| {
            CommandValidator.validate(from, &codec::encode(&commands).unwrap())
        };
        let node_2 = peer("node-2", 5);
        assert!(validate(Some(&node_2), vec![join("u", "node-2", 5, "{}")]).is_ok());
        assert!(validate(Some(&node_2), vec![join("u", "node-1", 5, "{}")]).is_err());
        assert!(validate(Some(&node_2), vec![join("u", "node-2", 6, "{}")]).is_err());
        let own_conn = ConnId::new(ConnId::tag_of("node-2", 5), 9);
        let other_conn = ConnId::new(ConnId::tag_of("node-1", 5), 9);
        assert!(validate(Some(&node_2), vec![RoomCommand::ConnGone { conn: own_conn }]).is_ok());
        assert!(validate(Some(&node_2), vec![RoomCommand::ConnGone { conn: other_conn }]).is_err());
        let evict = |node: &str, incarnation| RoomCommand::EvictNode { node: node.into(), incarnation };
        assert!(validate(Some(&node_2), vec![evict("node-2", 4)]).is_ok());
        assert!(validate(Some(&node_2), vec![evict("node-2", 5)]).is_err());
        assert!(validate(Some(&node_2), vec![evict("node-1", 1)]).is_err());
        // The leader's own evictions of departed nodes.
        assert!(validate(None, vec![evict("node-1", 1)]).is_ok());
        // Malformed batches, from anyone.
        assert!(validate(None, vec![]).is_err());
        assert!(validate(None, vec![join("", "node-1", 1, "{}")]).is_err());
        assert!(validate(None, vec![join("u", "node-1", 1, "[1]")]).is_err());
        assert!(CommandValidator.validate(None, b"\x0bgarbage!!!").is_err());
    }

    /// A Raft stand-in: applies each proposed batch to its own table (as
    /// the leader's state machine would), records batch sizes, and can be
    /// held back to see what queues meanwhile.
    struct FakeRaft {
        applier: Mutex<TableApplier>,
        next_index: AtomicU64,
        batch_sizes: Mutex<Vec<usize>>,
        gate: tokio::sync::Semaphore,
        in_flight: AtomicU64,
        most_in_flight: AtomicU64,
        fail: bool,
    }

    impl FakeRaft {
        fn new(shared: Arc<SharedTable>, open: bool, fail: bool) -> Arc<FakeRaft> {
            Arc::new(FakeRaft {
                applier: Mutex::new(TableApplier(shared)),
                next_index: AtomicU64::new(1),
                batch_sizes: Mutex::default(),
                gate: tokio::sync::Semaphore::new(if open { 1 << 20 } else { 0 }),
                in_flight: AtomicU64::new(0),
                most_in_flight: AtomicU64::new(0),
                fail,
            })
        }
    }

    impl BatchProposer for Arc<FakeRaft> {
        fn propose(&self, batch: Vec<u8>) -> BoxFuture<Result<Vec<u8>, ProposeError>> {
            let raft = Arc::clone(self);
            Box::pin(async move {
                let now = raft.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                raft.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let _permit = raft.gate.acquire().await.unwrap();
                raft.in_flight.fetch_sub(1, Ordering::SeqCst);
                raft.batch_sizes.lock().unwrap().push(decode_batch(&batch).unwrap().len());
                if raft.fail {
                    return Err(ProposeError::Unavailable("no leader".into()));
                }
                let index = raft.next_index.fetch_add(1, Ordering::SeqCst);
                Ok(raft.applier.lock().unwrap().apply(index, &batch))
            })
        }
    }

    fn join_conn(counter: u64) -> RoomCommand {
        let mut command = join("u", "node-1", 7, "{}");
        if let RoomCommand::Join { member, .. } = &mut command {
            member.conn = ConnId::new(ConnId::tag_of("node-1", 7), counter);
        }
        command
    }

    /// Starts a batcher over `raft`; returns its proposal queue.
    fn batcher(raft: &Arc<FakeRaft>, shared: &Arc<SharedTable>) -> mpsc::UnboundedSender<Proposal> {
        let (proposals_tx, proposals_rx) = mpsc::unbounded_channel();
        tokio::spawn(run_batcher(Arc::new(Arc::clone(raft)), Arc::clone(shared), proposals_rx));
        proposals_tx
    }

    fn propose(
        queue: &mpsc::UnboundedSender<Proposal>,
        command: RoomCommand,
    ) -> oneshot::Receiver<Result<Vec<Effect>, ReplicateError>> {
        let (reply_tx, reply_rx) = oneshot::channel();
        queue.send(Proposal { command, reply_tx }).unwrap();
        reply_rx
    }

    #[tokio::test(flavor = "current_thread")]
    async fn commands_queued_together_travel_in_one_entry_and_each_proposer_gets_its_own_effects() {
        let shared = SharedTable::new(Arc::new(Recorder::default()));
        let raft = FakeRaft::new(Arc::clone(&shared), true, false);
        let queue = batcher(&raft, &shared);
        let replies: Vec<_> = (1..=50).map(|i| propose(&queue, join_conn(i))).collect();
        for (i, reply) in replies.into_iter().enumerate() {
            let effects = reply.await.unwrap().unwrap();
            let joined = effects.iter().find_map(|e| match e {
                Effect::Joined { member, .. } => Some(member.conn),
                _ => None,
            });
            assert_eq!(joined, Some(ConnId::new(ConnId::tag_of("node-1", 7), i as u64 + 1)));
        }
        assert_eq!(*raft.batch_sizes.lock().unwrap(), vec![50]);
        // The caller's own write is visible here once it has its reply.
        assert_eq!(shared.lock().table.member_count(), 50);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_entry_holds_at_most_max_batch_commands_and_at_most_eight_entries_are_in_flight() {
        let shared = SharedTable::new(Arc::new(Recorder::default()));
        let raft = FakeRaft::new(Arc::clone(&shared), false, false);
        let queue = batcher(&raft, &shared);
        let count = MAX_BATCH * 9 + 3;
        let replies: Vec<_> = (1..=count as u64).map(|i| propose(&queue, join_conn(i))).collect();
        // Let the batcher take what it can while Raft holds everything.
        while raft.in_flight.load(Ordering::SeqCst) < BATCHES_IN_FLIGHT as u64 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(raft.most_in_flight.load(Ordering::SeqCst), BATCHES_IN_FLIGHT as u64);
        raft.gate.add_permits(1 << 20);
        for reply in replies {
            assert!(reply.await.unwrap().is_ok());
        }
        let sizes = raft.batch_sizes.lock().unwrap().clone();
        assert!(sizes.iter().all(|&n| n <= MAX_BATCH), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), count);
        assert_eq!(sizes.len(), 10, "{sizes:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_entry_fails_every_command_in_it_as_retryable() {
        let shared = SharedTable::new(Arc::new(Recorder::default()));
        let raft = FakeRaft::new(Arc::clone(&shared), true, true);
        let queue = batcher(&raft, &shared);
        let replies: Vec<_> = (1..=3).map(|i| propose(&queue, join_conn(i))).collect();
        for reply in replies {
            assert!(matches!(reply.await.unwrap(), Err(ReplicateError::Unavailable(_))));
        }
        assert_eq!(shared.lock().table.member_count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The Raft entry decoder: random and mutated bytes never panic; an
        /// entry either applies whole or is skipped and counted.
        #[test]
        fn raft_entries_of_any_bytes_apply_or_are_skipped(
            random in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut applier = applier();
            applier.apply(1, &random);
            let mut mutated = codec::encode(&vec![join("a", "node-1", 7, "{\"k\":1}")]).unwrap();
            for (index, byte) in &flips {
                let at = index.index(mutated.len());
                mutated[at] = *byte;
            }
            applier.apply(2, &mutated);
            let members = applier.0.lock().table.member_count() as u64;
            prop_assert!(members + applier.0.rejected_entries() >= 1);
            prop_assert_eq!(applier.0.applied_index(), 2);
        }
    }
}
