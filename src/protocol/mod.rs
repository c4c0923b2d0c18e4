//! Client wire contract v1: the JSON frames a client sends and receives, the
//! error codes and the close codes.
//!
//! This module owns the exact shape of every frame (see `docs/protocol.md`,
//! which is normative). It does no I/O and knows nothing about sockets, rooms
//! state or tokio: it turns text into typed requests and typed events into
//! text, and nothing else.

mod codes;
mod ids;
mod inbound;
mod outbound;

pub use codes::{CloseCode, ErrorCode};
pub use ids::{is_namespace_name, ConnId, NamespaceName, RoomName, RoomNameError};
pub use inbound::{parse_request, Envelope, Request, RequestError, Since};
pub use outbound::{
    encode_error_reply, encode_event_joined, encode_event_left, encode_message, encode_ok_reply, encode_ping,
    encode_welcome, ErrorBody, Member, MessageFrom, Welcome,
};
