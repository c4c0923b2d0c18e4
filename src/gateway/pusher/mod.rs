//! The Pusher Channels protocol 7 (`docs/pusher.md`) as a second adapter
//! on the room service: sessions at `/app/{key}`, its frames of what the
//! core fans out, channel authorisation, and the apps of `[[apps]]`.
//!
//! An app's channel `c` is the room `pusher-{id}:c`, in a namespace only
//! the app's clients and its signed HTTP API reach (`service::Space`).

pub mod auth;
mod encode;
mod limits;
mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use encode::PusherEncoder;
pub use session::{run, PusherRequest};

use crate::config::AppConfig;
use crate::fanout::FrameEncoder;
use crate::protocol::{ConnId, RoomName};
use crate::service::Space;
use crate::webhooks::Webhooks;

/// The longest channel name Pusher accepts (an app may allow less).
pub const MAX_CHANNEL_BYTES: usize = crate::config::MAX_CHANNEL_NAME_BYTES;

/// The longest user id (presence `user_id`, sign-in `id`).
pub const MAX_USER_ID_BYTES: usize = 128;

/// One configured app.
#[derive(Debug)]
pub struct App {
    pub config: AppConfig,
    /// The namespace of the app's rooms, `pusher-{id}`.
    namespace: Arc<str>,
    /// The app's rooms, for the room service.
    pub space: Space,
    /// Open connections of the app on this node.
    connections: AtomicUsize,
}

impl App {
    /// The room of `channel`, if the name is a valid Pusher channel name.
    pub fn room(&self, channel: &str) -> Result<RoomName, ChannelError> {
        Channel::parse(channel)?;
        let max = self.config.max_channel_name_bytes;
        if channel.len() > max {
            return Err(ChannelError::TooLong { max });
        }
        RoomName::parse(&format!("{}:{channel}", self.namespace)).map_err(|_| ChannelError::BadName)
    }

    /// The namespace of the app's rooms.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Takes one of the app's connection slots, if it has one left; the
    /// session gives it back with [`App::release_connection`].
    fn try_connect_now(&self) -> bool {
        let max = self.config.max_connections.unwrap_or(usize::MAX);
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    fn release_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The apps of `[[apps]]`, by key and by id, the protocol's encoder, and
/// the apps' webhook senders.
pub struct PusherApps {
    by_key: HashMap<String, Arc<App>>,
    by_id: HashMap<String, Arc<App>>,
    pub encoder: Arc<dyn FrameEncoder>,
    /// Started by the node (`Webhooks::start`); sessions queue their
    /// connections' `client_event`s and `cache_miss`es on it.
    pub webhooks: Arc<Webhooks>,
}

impl PusherApps {
    pub fn new(node: &str, configs: &[AppConfig]) -> PusherApps {
        let apps: Vec<Arc<App>> = configs
            .iter()
            .map(|config| {
                let namespace: Arc<str> = Arc::from(config.namespace());
                let space = Space::App(Arc::clone(&namespace));
                Arc::new(App { config: config.clone(), namespace, space, connections: AtomicUsize::new(0) })
            })
            .collect();
        PusherApps {
            by_key: apps.iter().map(|app| (app.config.key.clone(), Arc::clone(app))).collect(),
            by_id: apps.iter().map(|app| (app.config.id.clone(), Arc::clone(app))).collect(),
            encoder: Arc::new(PusherEncoder),
            webhooks: Arc::new(Webhooks::new(node, configs)),
        }
    }

    pub fn by_key(&self, key: &str) -> Option<&Arc<App>> {
        self.by_key.get(key)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id)
    }
}

/// What a channel's name prefix makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    Private,
    /// `private-encrypted-`: private, its payloads end-to-end encrypted by
    /// the clients (the server passes them through).
    Encrypted,
    Presence,
}

/// A channel name, read for what the protocol does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub kind: ChannelKind,
    /// A cache channel (`cache-`, `private-cache-`, `presence-cache-`,
    /// `private-encrypted-cache-`): a new subscriber gets its last event.
    pub cache: bool,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel names are 1 to 164 characters of a-z, A-Z, 0-9 and -_=@,.;")]
    BadName,
    /// Longer than the app's `max_channel_name_bytes`.
    #[error("channel names of this app are at most {max} characters")]
    TooLong { max: usize },
}

impl Channel {
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_CHANNEL_BYTES
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=@,.;".contains(&b));
        if !valid {
            return Err(ChannelError::BadName);
        }
        let kind = if name.starts_with("private-encrypted-") {
            ChannelKind::Encrypted
        } else if name.starts_with("private-") {
            ChannelKind::Private
        } else if name.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        };
        Ok(Channel { kind, cache: crate::config::is_cache_channel(name) })
    }

    /// Whether subscribing needs a signed `auth`.
    pub fn needs_auth(self) -> bool {
        self.kind != ChannelKind::Public
    }

    /// Whether clients may send `client-*` events on it (private and
    /// presence channels; not encrypted ones, whose payloads the server
    /// cannot check).
    pub fn allows_client_events(self) -> bool {
        matches!(self.kind, ChannelKind::Private | ChannelKind::Presence)
    }
}

/// The channel of an app's room: the name after the namespace.
pub fn channel_of(room: &RoomName) -> &str {
    room.as_str().split_once(':').map_or("", |(_, channel)| channel)
}

/// A connection's Pusher `socket_id`: `digits.digits`, as the SDKs check
/// it, from the connection id's incarnation tag and counter.
pub fn socket_id(conn: ConnId) -> String {
    format!("{}.{}", conn.incarnation_tag(), conn.0 & 0xff_ffff_ffff)
}

/// The connection of a `socket_id`, if it is one this cluster could mint.
pub fn parse_socket_id(text: &str) -> Option<ConnId> {
    let (tag, counter) = text.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 13 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(tag) || !digits(counter) {
        return None;
    }
    let (tag, counter) = (tag.parse::<u32>().ok()?, counter.parse::<u64>().ok()?);
    (tag <= 0xff_ffff && counter <= 0xff_ffff_ffff).then(|| ConnId::new(tag, counter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_prefixes_pick_the_kind_and_bad_names_are_refused() {
        let kind = |name: &str| Channel::parse(name).map(|c| c.kind);
        assert_eq!(kind("my-channel"), Ok(ChannelKind::Public));
        assert_eq!(kind("private-x"), Ok(ChannelKind::Private));
        assert_eq!(kind("private-encrypted-x"), Ok(ChannelKind::Encrypted));
        assert_eq!(kind("presence-room.1"), Ok(ChannelKind::Presence));
        assert_eq!(kind("a=b@c,d;e_f"), Ok(ChannelKind::Public));
        for bad in ["", "with space", "slash/", "#server-to-user-1", "é", &"x".repeat(165)] {
            assert_eq!(kind(bad), Err(ChannelError::BadName), "{bad:?}");
        }
        assert!(!Channel::parse("private-encrypted-x").unwrap().allows_client_events());
        assert!(Channel::parse("presence-x").unwrap().allows_client_events());
        let cache = |name: &str| Channel::parse(name).map(|c| (c.kind, c.cache));
        assert_eq!(cache("cache-x"), Ok((ChannelKind::Public, true)));
        assert_eq!(cache("private-cache-x"), Ok((ChannelKind::Private, true)));
        assert_eq!(cache("presence-cache-x"), Ok((ChannelKind::Presence, true)));
        assert_eq!(cache("private-encrypted-cache-x"), Ok((ChannelKind::Encrypted, true)));
        assert_eq!(cache("cachex"), Ok((ChannelKind::Public, false)));
        assert_eq!(cache("private-x-cache-y"), Ok((ChannelKind::Private, false)));
    }

    #[test]
    fn socket_ids_are_digits_dot_digits_and_round_trip() {
        let conn = ConnId::new(0xabcdef, 42);
        let text = socket_id(conn);
        assert_eq!(text, "11259375.42");
        assert_eq!(parse_socket_id(&text), Some(conn));
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "16777216.1", "1.1099511627776", "-1.2"] {
            assert_eq!(parse_socket_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn an_apps_channels_are_rooms_of_its_own_namespace() {
        let config = AppConfig { max_connections: Some(1), ..AppConfig::with_defaults("app-1", "k", "s") };
        let apps = PusherApps::new("node-1", &[config]);
        let app = apps.by_key("k").unwrap();
        let room = app.room("presence-x").unwrap();
        assert_eq!(room.as_str(), "pusher-app-1:presence-x");
        assert_eq!(channel_of(&room), "presence-x");
        assert_eq!(app.room(&"x".repeat(MAX_CHANNEL_BYTES)).unwrap().as_str().len(), 7 + 5 + 1 + 164);
        let short = AppConfig { max_channel_name_bytes: 10, ..AppConfig::with_defaults("app-2", "k2", "s") };
        let short = PusherApps::new("node-1", &[short]);
        let short = short.by_key("k2").unwrap();
        assert!(short.room("x123456789").is_ok());
        assert_eq!(short.room("x1234567890"), Err(ChannelError::TooLong { max: 10 }));
        assert!(app.try_connect_now(), "one slot");
        assert!(!app.try_connect_now(), "max_connections = 1");
        app.release_connection();
        assert!(app.try_connect_now(), "a closed connection frees its slot");
    }
}
