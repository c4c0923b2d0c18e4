//! A sequenced room message as the core knows it, protocol-neutral, and the
//! trait each client protocol implements to turn it into its own frames.
//!
//! Nodes send each other [`RoomMessage`]s, never one protocol's text; each
//! node encodes a message once per client protocol that has members there
//! ([`FrameCache`]), never once per member.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{ConnId, RoomName};
use crate::rooms::MemberRecord;

/// Where a room's message stream stands: the next message gets `offset + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// The connection that published a message (absent for server publishes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publisher {
    pub user: Arc<str>,
    pub conn: ConnId,
    /// The publish's `idem` key, if it named itself (see `fanout::idem`).
    pub idem: Option<Arc<str>>,
}

/// What a publisher hands the core: everything of a message but its place
/// in the room's sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    pub publisher: Option<Publisher>,
    /// The event name, for protocols that name events (Pusher); `None` for
    /// Starling's protocol.
    pub event: Option<Arc<str>>,
    /// The payload, as the publisher's protocol carries it (JSON text for
    /// Starling's protocol).
    pub data: Bytes,
}

/// A message with its place in the room's sequence, as every node of the
/// cluster receives it from the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    pub room: RoomName,
    pub position: Position,
    pub publisher: Option<Publisher>,
    pub event: Option<Arc<str>>,
    pub data: Bytes,
    /// When the publisher's node accepted it: wall clock, microseconds
    /// since the Unix epoch.
    pub published_us: u64,
}

impl RoomMessage {
    pub fn new(room: RoomName, position: Position, draft: Draft, published_us: u64) -> RoomMessage {
        RoomMessage {
            room,
            position,
            publisher: draft.publisher,
            event: draft.event,
            data: draft.data,
            published_us,
        }
    }
}

/// When a message was accepted from its publisher, and whether it crossed
/// nodes on its way here, for the publish-to-deliver latency histograms.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub at: Instant,
    pub cross_node: bool,
}

/// `at` on the wall clock, in microseconds since the Unix epoch.
pub fn unix_micros(at: Instant) -> u64 {
    let wall = SystemTime::now().checked_sub(at.elapsed()).unwrap_or(UNIX_EPOCH);
    wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// A wall-clock time from another node on this node's monotonic clock. A
/// time ahead of this node's clock (skew) counts as now.
pub fn instant_from_unix_micros(micros: u64) -> Instant {
    let now_us = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    let age = Duration::from_micros(now_us.saturating_sub(micros));
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// A presence change shown to a room's other members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEvent {
    /// `first_of_user`: no other connection of the member's user is in the
    /// room (protocols with presence per user show only these).
    Joined { first_of_user: bool },
    /// `last_of_user`: no other connection of the member's user is left.
    Left { last_of_user: bool },
}

/// One client protocol's encoding of what the core fans out. An encoder
/// is shared by every session of its protocol; the fan-out tells encoders
/// apart by pointer.
pub trait FrameEncoder: Send + Sync + 'static {
    /// The frame of a room message; `None`: this protocol does not show it.
    fn message(&self, message: &RoomMessage) -> Option<Utf8Bytes>;
    /// The frame of a member joining or leaving `room`.
    fn member_event(&self, room: &RoomName, member: &MemberRecord, event: MemberEvent) -> Option<Utf8Bytes>;
    /// Whether a message is delivered to the connection that published it
    /// (Starling's protocol: yes; Pusher's: never).
    fn echoes_to_publisher(&self) -> bool {
        true
    }
}

/// Frames already encoded for one fan-out, one per encoder met so far.
/// A fan-out meets one or two protocols: the first frame is kept inline (no
/// allocation per message in the common one-protocol room), any other in a
/// short list scanned linearly.
pub struct FrameCache<'a> {
    encode: &'a dyn Fn(&dyn FrameEncoder) -> Option<Utf8Bytes>,
    first: Option<(*const (), Option<Utf8Bytes>)>,
    others: Vec<(*const (), Option<Utf8Bytes>)>,
}

impl<'a> FrameCache<'a> {
    pub fn new(encode: &'a dyn Fn(&dyn FrameEncoder) -> Option<Utf8Bytes>) -> FrameCache<'a> {
        FrameCache { encode, first: None, others: Vec::new() }
    }

    /// The frame for `encoder`'s protocol, encoded on first use.
    pub fn frame_for(&mut self, encoder: &Arc<dyn FrameEncoder>) -> Option<Utf8Bytes> {
        let key = Arc::as_ptr(encoder) as *const ();
        let known = self.first.iter().chain(&self.others).find(|(k, _)| *k == key);
        if let Some((_, frame)) = known {
            return frame.clone();
        }
        let frame = (self.encode)(encoder.as_ref());
        match self.first {
            None => self.first = Some((key, frame.clone())),
            Some(_) => self.others.push((key, frame.clone())),
        }
        frame
    }
}
