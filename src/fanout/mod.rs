//! The protocol-neutral fan-out: room sequencing on the owner node, the
//! mirror of which local sessions are in which room, local delivery through
//! bounded outbound queues, and the registry of open sessions.
//!
//! Nothing here knows a wire protocol: messages are [`RoomMessage`]s, and
//! each session brings the [`FrameEncoder`] of its protocol. Nothing here
//! changes membership either: the hub mirrors what `replicate` applied.

mod history;
mod hub;
mod idem;
mod message;
mod outbound;
mod sessions;

pub use history::HistoryPolicy;
pub use hub::{
    DeliveryRefused, FrameSender, HistoryPage, Hub, LastMessage, NotReplicated, Recover, RemoteFanout,
    RoomState, SequenceError, Sequenced, TakeoverOutcome,
};
pub use message::{
    instant_from_unix_micros, unix_micros, Draft, FrameCache, FrameEncoder, MemberEvent, Position, Published,
    Publisher, RoomMessage,
};
pub use outbound::{BatchEnd, OutFrame, Outbound, PushError};
pub use sessions::{SessionEntry, Sessions};
