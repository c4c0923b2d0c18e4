//! The Starling wire protocol (contract v1, `docs/protocol.md`) as one
//! adapter on the room service: its sessions at `/ws`, its frames of what
//! the core fans out, and its error replies.

mod encode;
mod errors;
mod session;

pub use encode::{wire_member, wire_member_list, StarlingEncoder};
pub use errors::{error_body, publish_error_body, ErrorContext};
pub use session::run;

#[cfg(test)]
mod tests;
