//! Pusher protocol 7 frames: of what the core fans out (events, presence
//! per user) and of the session's own replies.

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{channel_of, Channel, ChannelKind};
use crate::fanout::{FrameEncoder, MemberEvent, RoomMessage};
use crate::protocol::RoomName;
use crate::rooms::MemberRecord;

/// Encodes an app's room messages as channel events and, on presence
/// channels, a user's first join and last leave as `member_added` and
/// `member_removed`. Never echoes a message to its publisher.
pub struct PusherEncoder;

impl FrameEncoder for PusherEncoder {
    fn message(&self, message: &RoomMessage) -> Option<Utf8Bytes> {
        let event = message.event.as_deref()?;
        // Data is JSON text (checked where it entered); anything else is
        // sent as a JSON string rather than breaking the frame.
        let text = String::from_utf8_lossy(&message.data);
        let quoted;
        let data: &RawValue = match serde_json::from_str(&text) {
            Ok(data) => data,
            Err(_) => {
                quoted = serde_json::to_string(&text).ok()?;
                serde_json::from_str(&quoted).ok()?
            }
        };
        let channel = channel_of(&message.room);
        // A client event on a presence channel names its sender's user.
        let user_id = message
            .publisher
            .as_ref()
            .filter(|_| event.starts_with("client-") && is_presence(channel))
            .map(|p| &*p.user);
        Some(Utf8Bytes::from(channel_event(event, channel, data, user_id)))
    }

    fn member_event(&self, room: &RoomName, member: &MemberRecord, event: MemberEvent) -> Option<Utf8Bytes> {
        let channel = channel_of(room);
        if !is_presence(channel) {
            return None;
        }
        let text = match event {
            MemberEvent::Joined { first_of_user: true } => {
                let data = MemberData { user_id: &member.user, user_info: user_info(&member.meta) };
                internal("pusher_internal:member_added", channel, &data)
            }
            MemberEvent::Left { last_of_user: true } => {
                let data = MemberData { user_id: &member.user, user_info: None };
                internal("pusher_internal:member_removed", channel, &data)
            }
            _ => return None,
        };
        Some(Utf8Bytes::from(text))
    }

    fn echoes_to_publisher(&self) -> bool {
        false
    }
}

fn is_presence(channel: &str) -> bool {
    Channel::parse(channel).is_ok_and(|c| c.kind == ChannelKind::Presence)
}

/// A presence member's `user_info`, from the meta its subscription stored
/// (`{"user_id":..,"user_info":..}`).
pub fn user_info(meta: &str) -> Option<Box<RawValue>> {
    #[derive(serde::Deserialize)]
    struct Meta {
        user_info: Option<Box<RawValue>>,
    }
    serde_json::from_str::<Meta>(meta).ok().and_then(|m| m.user_info)
}

#[derive(Serialize)]
struct MemberData<'a> {
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_info: Option<Box<RawValue>>,
}

/// `{"event","channel","data"}` with `data` as given (a JSON string for
/// events from the HTTP API, any JSON for client events).
pub fn channel_event(event: &str, channel: &str, data: &RawValue, user_id: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
    }
    to_json(&Frame { event, channel, data, user_id })
}

/// A `pusher_internal:*` frame of a channel; `data` is sent as a JSON
/// string of its JSON, as the protocol has it.
pub fn internal(event: &str, channel: &str, data: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
        data: String,
    }
    to_json(&Frame { event, channel, data: to_json(data) })
}

/// A connection-level frame (`pusher:*`) with `data` as a JSON string.
pub fn connection_event_with_string_data(event: &str, data: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        data: String,
    }
    to_json(&Frame { event, data: to_json(data) })
}

/// A connection-level frame (`pusher:*`) with `data` as a JSON value.
pub fn connection_event(event: &str, data: &impl Serialize) -> String {
    #[derive(Serialize)]
    struct Frame<'a, T: Serialize> {
        event: &'a str,
        data: &'a T,
    }
    to_json(&Frame { event, data })
}

/// `pusher:error` with Pusher's code (`None`: no code).
pub fn error(code: Option<u16>, message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        code: Option<u16>,
        message: &'a str,
    }
    connection_event("pusher:error", &Error { code, message })
}

/// `pusher:cache_miss` on a cache channel with no cached event.
pub fn cache_miss(channel: &str) -> String {
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
    }
    to_json(&Frame { event: "pusher:cache_miss", channel })
}

/// `pusher:subscription_error` on `channel`, as pusher-js and Laravel
/// Echo read it (`status` 401 for a refused authorisation).
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        error: &'a str,
        status: u16,
    }
    #[derive(Serialize)]
    struct Frame<'a> {
        event: &'a str,
        channel: &'a str,
        data: Data<'a>,
    }
    let data = Data { kind, error: message, status };
    to_json(&Frame { event: "pusher:subscription_error", channel, data })
}

fn to_json(value: &impl Serialize) -> String {
    // Serializing these types (strings, numbers, raw JSON) cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fanout::{Position, Publisher};
    use crate::protocol::ConnId;

    fn message(channel: &str, event: &str, data: &str, publisher: Option<&str>) -> RoomMessage {
        RoomMessage {
            room: RoomName::parse(&format!("pusher-app-1:{channel}")).unwrap(),
            position: Position { epoch: 1, offset: 1 },
            publisher: publisher.map(|user| Publisher { user: user.into(), conn: ConnId(7), idem: None }),
            event: Some(event.into()),
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
            published_us: 0,
        }
    }

    #[test]
    fn events_keep_their_data_and_client_events_on_presence_channels_name_the_user() {
        let frame =
            PusherEncoder.message(&message("my-channel", "my-event", r#""{\"a\":1}""#, None)).unwrap();
        assert_eq!(frame.as_str(), r#"{"event":"my-event","channel":"my-channel","data":"{\"a\":1}"}"#);
        let frame =
            PusherEncoder.message(&message("presence-x", "client-typing", r#"{"t":1}"#, Some("u1"))).unwrap();
        assert_eq!(
            frame.as_str(),
            r#"{"event":"client-typing","channel":"presence-x","data":{"t":1},"user_id":"u1"}"#
        );
        let frame =
            PusherEncoder.message(&message("private-x", "client-typing", r#"{"t":1}"#, Some("u1"))).unwrap();
        assert!(!frame.as_str().contains("user_id"));
    }

    #[test]
    fn presence_events_are_per_user_and_only_on_presence_channels() {
        let room = RoomName::parse("pusher-app-1:presence-x").unwrap();
        let member = MemberRecord {
            user: Arc::from("42"),
            conn: ConnId(1),
            node: Arc::from("n1"),
            incarnation: 1,
            meta: Arc::from(r#"{"user_id":"42","user_info":{"name":"Ada"}}"#),
        };
        let added = PusherEncoder.member_event(&room, &member, MemberEvent::Joined { first_of_user: true });
        assert_eq!(
            added.unwrap().as_str(),
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"42\",\"user_info\":{\"name\":\"Ada\"}}"}"#
        );
        assert!(PusherEncoder
            .member_event(&room, &member, MemberEvent::Joined { first_of_user: false })
            .is_none());
        let removed = PusherEncoder.member_event(&room, &member, MemberEvent::Left { last_of_user: true });
        assert_eq!(
            removed.unwrap().as_str(),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-x","data":"{\"user_id\":\"42\"}"}"#
        );
        assert!(PusherEncoder
            .member_event(&room, &member, MemberEvent::Left { last_of_user: false })
            .is_none());
        let public = RoomName::parse("pusher-app-1:public").unwrap();
        assert!(PusherEncoder
            .member_event(&public, &member, MemberEvent::Joined { first_of_user: true })
            .is_none());
    }
}
