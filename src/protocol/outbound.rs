//! Encoding server frames. Every encoder returns the finished JSON text, so a
//! frame sent to many connections is encoded once and shared.

use serde::Serialize;
use serde_json::value::RawValue;

use super::codes::ErrorCode;
use super::ids::ConnId;

/// A room member as clients see it. `meta` is a JSON object.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Member<'a> {
    pub user: &'a str,
    pub conn: ConnId,
    pub node: &'a str,
    pub meta: &'a RawValue,
}

/// The sender of a `message`; absent for server-API publishes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MessageFrom<'a> {
    pub user: &'a str,
    pub conn: ConnId,
}

/// The first frame on every connection.
#[derive(Debug, Serialize)]
pub struct Welcome<'a> {
    pub conn: ConnId,
    pub node: &'a str,
    pub user: &'a str,
    pub heartbeat_ms: u64,
}

/// The `error` object of a failed reply.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code, message: message.into(), retry_after_ms: None }
    }

    pub fn retry_after(mut self, millis: u64) -> ErrorBody {
        self.retry_after_ms = Some(millis);
        self
    }
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(flatten)]
    body: T,
}

fn encode<T: Serialize>(kind: &str, body: T) -> String {
    // Serializing these plain structs into a String cannot fail: every field
    // is a string, a number or already-valid raw JSON.
    serde_json::to_string(&Tagged { kind, body }).expect("server frames always serialize")
}

pub fn encode_welcome(welcome: &Welcome<'_>) -> String {
    encode("welcome", welcome)
}

/// `{"type":"reply","id":N,"ok":true,"result":...}`
pub fn encode_ok_reply<T: Serialize>(id: u64, result: &T) -> String {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        id: u64,
        ok: bool,
        result: &'a T,
    }
    encode("reply", Ok { id, ok: true, result })
}

/// `{"type":"reply","id":N,"ok":false,"error":{...}}`; `id` is omitted when
/// the request had none (or it could not be read).
pub fn encode_error_reply(id: Option<u64>, error: &ErrorBody) -> String {
    #[derive(Serialize)]
    struct Failed<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        ok: bool,
        error: &'a ErrorBody,
    }
    encode("reply", Failed { id, ok: false, error })
}

/// A published message: encoded once, sent to every member.
pub fn encode_message(
    room: &str,
    epoch: u64,
    offset: u64,
    data: &RawValue,
    from: Option<MessageFrom<'_>>,
) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        room: &'a str,
        offset: u64,
        epoch: u64,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        from: Option<MessageFrom<'a>>,
    }
    encode("message", Message { room, offset, epoch, data, from })
}

#[derive(Serialize)]
struct MemberEvent<'a> {
    room: &'a str,
    member: Member<'a>,
}

pub fn encode_event_joined(room: &str, member: Member<'_>) -> String {
    encode("joined", MemberEvent { room, member })
}

pub fn encode_event_left(room: &str, member: Member<'_>) -> String {
    encode("left", MemberEvent { room, member })
}

pub fn encode_ping() -> &'static str {
    r#"{"type":"ping"}"#
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn frames_match_the_wire_contract() {
        let welcome = Welcome { conn: ConnId(1), node: "n1", user: "alice", heartbeat_ms: 25000 };
        assert_eq!(
            encode_welcome(&welcome),
            r#"{"type":"welcome","conn":"0000000000000001","node":"n1","user":"alice","heartbeat_ms":25000}"#
        );
        assert_eq!(
            encode_ok_reply(3, &serde_json::json!({"offset":4,"epoch":2})),
            r#"{"type":"reply","id":3,"ok":true,"result":{"epoch":2,"offset":4}}"#
        );
        let error = ErrorBody::new(ErrorCode::RateLimited, "slow down").retry_after(250);
        assert_eq!(
            encode_error_reply(Some(5), &error),
            r#"{"type":"reply","id":5,"ok":false,"error":{"code":"rate_limited","message":"slow down","retry_after_ms":250}}"#
        );
        assert_eq!(
            encode_error_reply(None, &ErrorBody::new(ErrorCode::BadRequest, "x")),
            r#"{"type":"reply","ok":false,"error":{"code":"bad_request","message":"x"}}"#
        );
        let from = MessageFrom { user: "bob", conn: ConnId(2) };
        assert_eq!(
            encode_message("chat:x", 7, 9, raw(r#"{"t":"hi"}"#), Some(from)),
            r#"{"type":"message","room":"chat:x","offset":9,"epoch":7,"data":{"t":"hi"},"from":{"user":"bob","conn":"0000000000000002"}}"#
        );
        assert_eq!(
            encode_message("chat:x", 7, 10, raw("1"), None),
            r#"{"type":"message","room":"chat:x","offset":10,"epoch":7,"data":1}"#
        );
        let member = Member { user: "bob", conn: ConnId(2), node: "n1", meta: raw("{}") };
        assert_eq!(
            encode_event_left("chat:x", member),
            r#"{"type":"left","room":"chat:x","member":{"user":"bob","conn":"0000000000000002","node":"n1","meta":{}}}"#
        );
    }
}
