//! Error codes carried in `reply` frames and WebSocket close codes.

use serde::Serialize;

/// The `error.code` of a failed `reply`. Clients branch on these strings, so a
/// variant is never renamed; new ones are only added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON, had an unknown `type`, or missed a field.
    BadRequest,
    /// The request needs credentials the connection does not have.
    Unauthorized,
    /// The token or the namespace policy does not allow this request.
    Forbidden,
    /// The request needs membership of a room the connection has not joined.
    NotJoined,
    /// A payload or `meta` is over the configured size.
    TooLarge,
    /// The connection is over its request rate; `retry_after_ms` says when to retry.
    RateLimited,
    /// Retryable: the room state cannot be changed or read right now (no
    /// quorum or leader, room owner unreachable or moving).
    Unavailable,
    /// A server fault; the request may or may not have taken effect.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// WebSocket close codes the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: normal closure (client asked, or disconnected through the API).
    Normal,
    /// 1008: policy violation; the token expired.
    TokenExpired,
    /// 1009: a frame or message over `limits.max_message_bytes`.
    TooLarge,
    /// 1011: an internal server error.
    Internal,
    /// 1012: the node is restarting or draining; reconnect elsewhere.
    Restarting,
    /// 1013: the node is overloaded; retry later.
    Overloaded,
    /// 4001: no frame from the client within the heartbeat timeout.
    HeartbeatTimeout,
    /// 4008: the client did not read fast enough and its queue overflowed.
    SlowConsumer,
    /// 4029: rate limited too many times in a row.
    RateLimited,
    /// 1000 (Pusher: 4009): the app's server closed every connection of
    /// the user (`terminate_connections`); the client must not reconnect.
    Terminated,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::TokenExpired => 1008,
            CloseCode::TooLarge => 1009,
            CloseCode::Internal => 1011,
            CloseCode::Restarting => 1012,
            CloseCode::Overloaded => 1013,
            CloseCode::HeartbeatTimeout => 4001,
            CloseCode::SlowConsumer => 4008,
            CloseCode::RateLimited => 4029,
            CloseCode::Terminated => 1000,
        }
    }

    /// The short reason sent in the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal closure",
            CloseCode::TokenExpired => "token expired",
            CloseCode::TooLarge => "message too large",
            CloseCode::Internal => "internal error",
            CloseCode::Restarting => "node restarting",
            CloseCode::Overloaded => "node overloaded",
            CloseCode::HeartbeatTimeout => "heartbeat timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::RateLimited => "rate limited",
            CloseCode::Terminated => "terminated by the server",
        }
    }
}
