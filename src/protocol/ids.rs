//! Identifiers that appear on the wire: connection ids and room names.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A connection id: the high 24 bits are a hash of the node incarnation that
/// accepted it (distinct incarnations collide with probability 2^-24), the
/// low 40 bits count its connections.
/// On the wire it is 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    pub fn new(incarnation_tag: u32, counter: u64) -> ConnId {
        ConnId((u64::from(incarnation_tag & 0xff_ffff) << 40) | (counter & 0xff_ffff_ffff))
    }

    /// The incarnation tag of connection ids minted by this process.
    /// Node names are unique in a cluster, so nodes booted in the same
    /// millisecond still get different tags (up to the 24-bit hash).
    pub fn tag_of(node: &str, incarnation: u64) -> u32 {
        let name_hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let mixed = (incarnation ^ name_hash).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> 40) as u32 & 0xff_ffff
    }

    /// The hash of the node incarnation that accepted the connection.
    pub fn incarnation_tag(self) -> u32 {
        (self.0 >> 40) as u32
    }

    pub fn parse(text: &str) -> Option<ConnId> {
        if text.len() != 16 {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(ConnId)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for ConnId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        ConnId::parse(&text).ok_or_else(|| serde::de::Error::custom("connection id must be 16 hex digits"))
    }
}

/// The longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_BYTES: usize = 200;
/// The longest namespace name accepted, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 32;

/// A validated room name `namespace:rest`. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a string is not a room name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {MAX_ROOM_NAME_BYTES} bytes")]
    TooLong,
    #[error("room name must be `namespace:name`")]
    NoNamespace,
    #[error("namespace must be 1 to {MAX_NAMESPACE_BYTES} characters of a-z, 0-9, `_` or `-`")]
    BadNamespace,
    #[error("room name must not contain whitespace or control characters")]
    BadCharacter,
}

impl RoomName {
    pub fn parse(text: &str) -> Result<RoomName, RoomNameError> {
        if text.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if text.len() > MAX_ROOM_NAME_BYTES {
            return Err(RoomNameError::TooLong);
        }
        let Some((namespace, rest)) = text.split_once(':') else {
            return Err(RoomNameError::NoNamespace);
        };
        if rest.is_empty() {
            return Err(RoomNameError::NoNamespace);
        }
        if !is_namespace_name(namespace) {
            return Err(RoomNameError::BadNamespace);
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RoomNameError::BadCharacter);
        }
        Ok(RoomName(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `:`.
    pub fn namespace(&self) -> &str {
        self.0.split_once(':').map_or("", |(namespace, _)| namespace)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for RoomName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RoomName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        RoomName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether `name` is a valid namespace name (used by config validation too).
pub fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAMESPACE_BYTES
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// A namespace name as configured.
pub type NamespaceName = Arc<str>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_need_a_valid_namespace_and_a_name() {
        assert_eq!(RoomName::parse("chat:lobby").unwrap().namespace(), "chat");
        assert_eq!(RoomName::parse("chat:a:b").unwrap().namespace(), "chat");
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(RoomName::parse("lobby"), Err(RoomNameError::NoNamespace));
        assert_eq!(RoomName::parse("chat:"), Err(RoomNameError::NoNamespace));
        assert_eq!(RoomName::parse(":x"), Err(RoomNameError::BadNamespace));
        assert_eq!(RoomName::parse("Chat:x"), Err(RoomNameError::BadNamespace));
        assert_eq!(RoomName::parse("chat:a b"), Err(RoomNameError::BadCharacter));
        assert_eq!(RoomName::parse("chat:a\u{0}"), Err(RoomNameError::BadCharacter));
        let long = format!("chat:{}", "x".repeat(MAX_ROOM_NAME_BYTES));
        assert_eq!(RoomName::parse(&long), Err(RoomNameError::TooLong));
    }

    #[test]
    fn conn_ids_round_trip_as_sixteen_hex_digits() {
        let id = ConnId::new(0xabcdef, 42);
        let text = id.to_string();
        assert_eq!(text, "abcdef000000002a");
        assert_eq!(ConnId::parse(&text), Some(id));
        assert_eq!(ConnId::parse("xyz"), None);
    }
}
