//! Room membership and presence as a pure state machine.
//!
//! [`RoomTable::apply`] takes one [`RoomCommand`] at a log index and returns
//! the [`Effect`]s it caused, in order. Every node applies the same commands
//! in the same order (through `replicate`), so every node holds the same
//! table. This module owns the rules of membership: who is in a room, which
//! node owns a room (and so sequences its messages), and a room's epoch. It
//! must not touch sockets, clocks, tasks or configuration files: everything
//! it needs arrives inside the command.

mod outbox;
mod table;

pub use outbox::{HookKind, HookOutbox, PendingHook, MAX_PENDING_PER_APP};
pub use table::{
    Effect, LeaveReason, LegacyTableSnapshot, MemberRecord, Rejection, RoomCommand, RoomCount, RoomSnapshot,
    RoomSummary, RoomTable, TableSnapshot,
};
