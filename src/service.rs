//! The protocol-neutral room service: join, leave, publish, presence, and
//! the join point that splits a room's stream at a join reply. Every wire
//! protocol's sessions and the HTTP API call it, so each room policy
//! (namespaces, sizes, who may publish, rooms per connection, room
//! capacity) is checked here, once.
//!
//! The service speaks no wire protocol and authenticates nobody: callers
//! pass requests their protocol already authorised (a token's rooms, a
//! Pusher signature), and map [`ServiceError`] to their own error codes.

mod connection;

use std::sync::Arc;
use std::time::Instant;

pub use connection::{ConnectionRooms, JoinOutcome};

use crate::config::{Config, NamespaceConfig, NamespacePolicies, PublishPolicy};
use crate::fanout::{Draft, Hub, Position};
use crate::forward::{PublishError, Router};
use crate::protocol::{ConnId, RoomName};
use crate::replicate::{ReplicateError, Replicator};
use crate::rooms::{Effect, MemberRecord, Rejection, RoomCommand, RoomSnapshot};
use crate::telemetry::Metrics;

/// Why the service refused or could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("unknown namespace `{0}`")]
    UnknownNamespace(String),
    #[error("presence is off in namespace `{0}`")]
    PresenceOff(String),
    #[error("only the server publishes in namespace `{0}`")]
    ServerPublishesOnly(String),
    #[error("data is over {max} bytes")]
    DataTooLarge { max: usize },
    #[error("meta is over {max} bytes")]
    MetaTooLarge { max: usize },
    #[error("at most {max} rooms per connection")]
    TooManyRooms { max: usize },
    #[error("room is full ({max_members} members)")]
    RoomFull { max_members: u32 },
    #[error("not a member of this room")]
    NotJoined,
    /// Retryable: the membership change or read could not be ordered now.
    #[error("{0}")]
    Unavailable(#[from] ReplicateError),
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// G9: an earlier publish of this connection to this room was refused
    /// (retryably) a moment ago; this later one is refused too, so that
    /// retrying them in order keeps their order.
    #[error("an earlier publish to this room was refused; retry it first, then this one")]
    HeldBack,
}

impl ServiceError {
    /// Whether the same request may succeed if sent again later.
    pub fn retryable(&self) -> bool {
        match self {
            ServiceError::Unavailable(_) | ServiceError::HeldBack => true,
            ServiceError::Publish(error) => error.retryable(),
            _ => false,
        }
    }
}

/// The rooms a caller may reach: Starling's (the configured namespaces,
/// for the Starling protocol and the server API) or one Pusher app's (its
/// `pusher-{id}` namespace, for its clients and its signed API). Neither
/// reaches the other's rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Space {
    Starling,
    /// A Pusher app, by its room namespace.
    App(Arc<str>),
}

/// Who publishes: a member connection, or the server (HTTP API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOrigin {
    Member,
    Server,
}

/// The room service of one node.
pub struct RoomService {
    node: Arc<str>,
    incarnation: u64,
    config: Arc<Config>,
    namespaces: Arc<NamespacePolicies>,
    hub: Arc<Hub>,
    replicator: Arc<Replicator>,
    router: Arc<Router>,
    metrics: Metrics,
}

/// What [`RoomService::new`] needs from the composition root.
pub struct ServiceParts {
    pub incarnation: u64,
    pub config: Arc<Config>,
    pub namespaces: Arc<NamespacePolicies>,
    pub hub: Arc<Hub>,
    pub replicator: Arc<Replicator>,
    pub router: Arc<Router>,
    pub metrics: Metrics,
}

impl RoomService {
    pub fn new(parts: ServiceParts) -> RoomService {
        RoomService {
            node: Arc::from(parts.config.node.name.as_str()),
            incarnation: parts.incarnation,
            config: parts.config,
            namespaces: parts.namespaces,
            hub: parts.hub,
            replicator: parts.replicator,
            router: parts.router,
            metrics: parts.metrics,
        }
    }

    pub fn replicator(&self) -> &Arc<Replicator> {
        &self.replicator
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The namespace policy of `room`, in Starling's space.
    pub fn namespace(&self, room: &RoomName) -> Result<&NamespaceConfig, ServiceError> {
        self.namespace_in(&Space::Starling, room)
    }

    /// The namespace policy of `room` if `space` reaches it; a room of
    /// another space is as unknown as one of no namespace at all.
    pub fn namespace_in(&self, space: &Space, room: &RoomName) -> Result<&NamespaceConfig, ServiceError> {
        let namespace = room.namespace();
        let reachable = match space {
            Space::Starling => !self.namespaces.is_app(namespace),
            Space::App(app) => **app == *namespace,
        };
        self.namespaces
            .get(namespace)
            .filter(|_| reachable)
            .ok_or_else(|| ServiceError::UnknownNamespace(namespace.to_string()))
    }

    /// Checks a join before it is proposed: the namespace exists, the meta
    /// fits, and the connection has room for one more room (`rooms_held`
    /// counts its rooms, `already_in` says whether `room` is one of them).
    fn check_join(
        &self,
        space: &Space,
        room: &RoomName,
        meta: &str,
        rooms_held: usize,
        already_in: bool,
    ) -> Result<Option<u32>, ServiceError> {
        let namespace = self.namespace_in(space, room)?;
        let limits = &self.config.limits;
        if !already_in && rooms_held >= limits.max_rooms_per_connection {
            return Err(ServiceError::TooManyRooms { max: limits.max_rooms_per_connection });
        }
        if meta.len() > limits.max_meta_bytes {
            return Err(ServiceError::MetaTooLarge { max: limits.max_meta_bytes });
        }
        Ok(namespace.max_members)
    }

    /// Proposes a join of `conn` (of `user`) with `meta` (JSON object text)
    /// and waits until it is applied here; returns the room's epoch.
    async fn propose_join(
        &self,
        room: &RoomName,
        conn: ConnId,
        user: &Arc<str>,
        meta: String,
        max_members: Option<u32>,
    ) -> Result<u64, ServiceError> {
        let member = MemberRecord {
            user: Arc::clone(user),
            conn,
            node: Arc::clone(&self.node),
            incarnation: self.incarnation,
            meta: meta.into(),
        };
        let command = RoomCommand::Join { room: room.clone(), member, max_members };
        let effects = self.replicator.propose(command).await?;
        joined_epoch(&effects)
    }

    /// Calls `f` with the room's members as applied here and its position,
    /// while no membership change can apply and no message of the room can
    /// be sequenced or delivered here: whatever `f` queues for a connection
    /// lands after every event and message up to `position`, and before
    /// every later one. `epoch` is the position's epoch where the room is
    /// not mirrored (yet).
    pub fn join_point<R>(
        &self,
        room: &RoomName,
        epoch: u64,
        f: impl FnOnce(Option<RoomSnapshot>, Position) -> R,
    ) -> R {
        // Lock order: the table's apply lock, then the room's sequencing lock.
        self.replicator.with_snapshot(room, |snapshot| {
            self.hub.with_position(room, |position| {
                f(snapshot, position.unwrap_or(Position { epoch, offset: 0 }))
            })
        })
    }

    /// Publishes `draft` to `room`, if `origin` may publish there and the
    /// data fits.
    pub async fn publish(
        &self,
        room: &RoomName,
        draft: Draft,
        origin: PublishOrigin,
        received_at: Instant,
    ) -> Result<Position, ServiceError> {
        self.publish_in(&Space::Starling, room, draft, origin, received_at).await
    }

    /// [`RoomService::publish`] to a room of `space`.
    pub async fn publish_in(
        &self,
        space: &Space,
        room: &RoomName,
        draft: Draft,
        origin: PublishOrigin,
        received_at: Instant,
    ) -> Result<Position, ServiceError> {
        self.check_publish_in(space, room, draft.data.len(), origin)?;
        self.route(room, draft, received_at).await
    }

    /// Sequences or forwards an already checked publish, counting failures
    /// by reason (`starling_publish_failures_total`).
    async fn route(
        &self,
        room: &RoomName,
        draft: Draft,
        received_at: Instant,
    ) -> Result<Position, ServiceError> {
        self.router.publish(room, draft, received_at).await.map_err(|error| {
            self.metrics.publish_failed(&self.node, error.reason());
            ServiceError::Publish(error)
        })
    }

    /// The checks of [`RoomService::publish`], for callers that must refuse
    /// before doing anything else.
    pub fn check_publish(
        &self,
        room: &RoomName,
        data_len: usize,
        origin: PublishOrigin,
    ) -> Result<(), ServiceError> {
        self.check_publish_in(&Space::Starling, room, data_len, origin)
    }

    /// [`RoomService::check_publish`] in `space`.
    pub fn check_publish_in(
        &self,
        space: &Space,
        room: &RoomName,
        data_len: usize,
        origin: PublishOrigin,
    ) -> Result<(), ServiceError> {
        let namespace = self.namespace_in(space, room)?;
        if origin == PublishOrigin::Member && namespace.publish == PublishPolicy::Server {
            return Err(ServiceError::ServerPublishesOnly(room.namespace().to_string()));
        }
        if data_len > namespace.max_data_bytes {
            return Err(ServiceError::DataTooLarge { max: namespace.max_data_bytes });
        }
        Ok(())
    }

    /// The members of `room` as of a linearizable read (everything
    /// committed before the read started), if the namespace lists members.
    pub async fn presence(&self, room: &RoomName) -> Result<Vec<Arc<MemberRecord>>, ServiceError> {
        self.presence_in(&Space::Starling, room).await
    }

    /// [`RoomService::presence`] of a room of `space`.
    pub async fn presence_in(
        &self,
        space: &Space,
        room: &RoomName,
    ) -> Result<Vec<Arc<MemberRecord>>, ServiceError> {
        if !self.namespace_in(space, room)?.presence {
            return Err(ServiceError::PresenceOff(room.namespace().to_string()));
        }
        let snapshot = self.replicator.presence(room).await?;
        Ok(snapshot.map(|s| s.members).unwrap_or_default())
    }

    /// Closes every connection acting as `user` in the Pusher app `space`
    /// on every node (`terminate_connections`); see
    /// [`crate::forward::Router::close_user`].
    pub async fn close_user_in(&self, space: &Space, user: &str) -> (usize, Vec<String>) {
        let Space::App(namespace) = space else { return (0, Vec::new()) };
        self.router.close_user(namespace, user).await
    }

    /// Whether `room`'s namespace lists its members.
    pub fn check_presence(&self, room: &RoomName) -> Result<(), ServiceError> {
        if !self.namespace(room)?.presence {
            return Err(ServiceError::PresenceOff(room.namespace().to_string()));
        }
        Ok(())
    }
}

/// The epoch a join's effects put the member in, or why it was refused.
fn joined_epoch(effects: &[Effect]) -> Result<u64, ServiceError> {
    for effect in effects {
        match effect {
            Effect::Joined { epoch, .. } | Effect::AlreadyJoined { epoch, .. } => return Ok(*epoch),
            Effect::Rejected { rejection: Rejection::RoomFull { max_members }, .. } => {
                return Err(ServiceError::RoomFull { max_members: *max_members })
            }
            _ => {}
        }
    }
    Err(ServiceError::Unavailable(ReplicateError::Unavailable("join was not applied".into())))
}
