//! Starling's wire contract v1 frames of what the core fans out, and the
//! member and reply views of core types.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::fanout::{FrameEncoder, MemberEvent, Position, RoomMessage};
use crate::protocol::{self, MessageFrom, RoomName};
use crate::rooms::MemberRecord;

/// Encodes room messages and member events as Starling frames.
pub struct StarlingEncoder;

impl FrameEncoder for StarlingEncoder {
    fn message(&self, message: &RoomMessage) -> Option<Utf8Bytes> {
        let from = message.publisher.as_ref().map(|p| MessageFrom { user: &p.user, conn: p.conn });
        let text = match json_data(&message.data) {
            Some(data) => encode_message(message, data, from),
            None => {
                // Starling publishes carry JSON (checked where they enter);
                // anything else is shown as a JSON string rather than
                // breaking the frame.
                let text = String::from_utf8_lossy(&message.data);
                let quoted = serde_json::to_string(&text).ok()?;
                let data: &RawValue = serde_json::from_str(&quoted).ok()?;
                encode_message(message, data, from)
            }
        };
        Some(Utf8Bytes::from(text))
    }

    fn member_event(&self, room: &RoomName, member: &MemberRecord, event: MemberEvent) -> Option<Utf8Bytes> {
        let text = match event {
            MemberEvent::Joined { .. } => protocol::encode_event_joined(room.as_str(), wire_member(member)),
            MemberEvent::Left { .. } => protocol::encode_event_left(room.as_str(), wire_member(member)),
        };
        Some(Utf8Bytes::from(text))
    }
}

fn json_data(data: &[u8]) -> Option<&RawValue> {
    serde_json::from_slice(data).ok()
}

fn encode_message(message: &RoomMessage, data: &RawValue, from: Option<MessageFrom<'_>>) -> String {
    let position = message.position;
    protocol::encode_message(message.room.as_str(), position.epoch, position.offset, data, from)
}

/// The wire view of a member record.
pub fn wire_member(member: &MemberRecord) -> protocol::Member<'_> {
    protocol::Member {
        user: &member.user,
        conn: member.conn,
        node: &member.node,
        meta: meta_json(&member.meta),
    }
}

/// The wire view of a member list.
pub fn wire_member_list(members: &[Arc<MemberRecord>]) -> Vec<protocol::Member<'_>> {
    members.iter().map(|m| wire_member(m)).collect()
}

/// `meta` text is validated JSON object text when the member joins.
fn meta_json(meta: &str) -> &RawValue {
    serde_json::from_str(meta).unwrap_or_else(|_| {
        debug_assert!(false, "member meta is not JSON: {meta}");
        serde_json::from_str("{}").expect("literal is JSON")
    })
}

pub fn encode_join_reply(
    id: u64,
    room: &RoomName,
    position: Position,
    members: Option<&[Arc<MemberRecord>]>,
    recovered: Option<bool>,
) -> String {
    #[derive(Serialize)]
    struct JoinResult<'a> {
        room: &'a RoomName,
        epoch: u64,
        offset: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<protocol::Member<'a>>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    }
    let result = JoinResult {
        room,
        epoch: position.epoch,
        offset: position.offset,
        members: members.map(wire_member_list),
        recovered,
    };
    protocol::encode_ok_reply(id, &result)
}

pub fn encode_publish_reply(id: u64, position: Position) -> String {
    #[derive(Serialize)]
    struct PublishResult {
        offset: u64,
        epoch: u64,
    }
    protocol::encode_ok_reply(id, &PublishResult { offset: position.offset, epoch: position.epoch })
}

pub fn encode_presence_reply(id: u64, members: &[Arc<MemberRecord>]) -> String {
    #[derive(Serialize)]
    struct PresenceResult<'a> {
        members: Vec<protocol::Member<'a>>,
    }
    protocol::encode_ok_reply(id, &PresenceResult { members: wire_member_list(members) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::Publisher;
    use crate::protocol::ConnId;

    fn message(data: &[u8]) -> RoomMessage {
        RoomMessage {
            room: RoomName::parse("chat:x").unwrap(),
            position: Position { epoch: 7, offset: 9 },
            publisher: Some(Publisher { user: "bob".into(), conn: ConnId(2), idem: None }),
            event: None,
            data: bytes::Bytes::copy_from_slice(data),
            published_us: 0,
        }
    }

    #[test]
    fn a_room_message_is_the_v1_message_frame() {
        let frame = StarlingEncoder.message(&message(br#"{"t":"hi"}"#)).unwrap();
        assert_eq!(
            frame.as_str(),
            r#"{"type":"message","room":"chat:x","offset":9,"epoch":7,"data":{"t":"hi"},"from":{"user":"bob","conn":"0000000000000002"}}"#
        );
    }

    #[test]
    fn data_that_is_not_json_becomes_a_json_string_not_a_broken_frame() {
        let frame = StarlingEncoder.message(&message(b"plain \"text\"")).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(parsed["data"], "plain \"text\"");
    }
}
