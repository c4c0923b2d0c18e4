//! The frames of wire contract v1 (and v1.1) that clients read, as typed
//! values: `welcome`, members, messages, join and publish results, stream
//! positions. No I/O; shared by [`crate::Client`] and [`crate::Session`].

use serde::Deserialize;
use serde_json::Value;

/// The server's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Welcome {
    pub conn: String,
    pub node: String,
    pub user: String,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    pub user: String,
    pub conn: String,
    pub node: String,
    pub meta: Value,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct From {
    pub user: String,
    pub conn: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    pub room: String,
    pub offset: u64,
    pub epoch: u64,
    pub data: Value,
    pub from: Option<From>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct JoinResult {
    pub room: String,
    pub epoch: u64,
    pub offset: u64,
    pub members: Option<Vec<Member>>,
    /// Present when the join asked for `since` (wire contract v1.1): whether
    /// every message after that position was delivered before this reply.
    #[serde(default)]
    pub recovered: Option<bool>,
}

/// A place in a room's stream: the last message seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct StreamPosition {
    pub epoch: u64,
    pub offset: u64,
}

/// What a join asks for besides membership.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinOptions {
    pub meta: Option<Value>,
    /// Replay every message after this position before the reply.
    pub since: Option<StreamPosition>,
    /// Replay the last this many messages before the reply.
    pub rewind: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PublishResult {
    pub offset: u64,
    pub epoch: u64,
}
