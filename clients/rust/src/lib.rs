//! Rust client for Starling (wire contract v1 and v1.1, `docs/protocol.md`).
//!
//! Two ways to talk to a node:
//!
//! - [`Session`]: a logical connection that survives lost links. It
//!   reconnects with exponential backoff and full jitter, rotating through a
//!   list of URLs, decides from the close code whether and when to come back
//!   (the table in [`policy`]), re-joins every room with `since` (the last
//!   position delivered) so the server replays what was missed, queues
//!   publishes while a room is not joined, and retries publishes refused
//!   with `unavailable` in call order with their `idem` key (G9). This is
//!   what applications use; see `README.md`.
//! - [`Client`]: exactly one connection, no reconnect. Tests use it to see
//!   what one socket gets.
//!
//! ```no_run
//! # async fn demo() -> Result<(), starling_client::SessionError> {
//! use starling_client::{Session, SessionEvent, SessionOptions};
//! let urls = ["ws://127.0.0.1:7601/ws", "ws://127.0.0.1:7602/ws"];
//! let (session, mut events) = Session::start(SessionOptions::new(urls).token("JWT"));
//! session.join("chat:lobby", None).await?;
//! session.publish("chat:lobby", serde_json::json!({"text": "hi"})).await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         SessionEvent::Message(m) => println!("{} {}", m.offset, m.data),
//!         SessionEvent::Resubscribed { room, recovered: false, .. } => {
//!             eprintln!("{room}: messages may be missing")
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`wire`]: the frames of the wire contract as types; no I/O.
//! - [`connection`]: [`Client`], one socket, and opening a socket.
//! - [`policy`]: the close-code table and the backoff; pure, no clock.
//! - [`outbox`]: the publishes of a session not yet answered, in call order.
//! - `room`: what a session remembers of each joined room (position,
//!   messages held while a join is in flight); pure.
//! - [`session`]: the [`Session`] handle, its options, events and errors.
//! - `driver`: the task that owns a session's socket and state (its
//!   commands, joins, publishes and timers in one file each).

#![forbid(unsafe_code)]

pub mod connection;
mod driver;
pub mod outbox;
pub mod policy;
mod room;
pub mod session;
pub mod wire;

pub use connection::{Client, ClientError, ConnectOptions, Event, Events};
pub use policy::{Action, CloseCause, Policy};
pub use session::{Session, SessionError, SessionEvent, SessionEvents, SessionOptions};
pub use wire::{From, JoinOptions, JoinResult, Member, Message, PublishResult, StreamPosition, Welcome};
