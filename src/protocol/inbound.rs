//! Parsing client frames into typed requests.
//!
//! A frame is parsed once into a flat struct with every field optional, so
//! that the request `id` is known even when the rest of the frame is wrong and
//! the error reply can carry it. Unknown fields are ignored (forward
//! compatibility); unknown `type`s are a `bad_request`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ids::RoomName;

/// One parsed client frame.
#[derive(Debug)]
pub struct Envelope {
    /// Echoed in the `reply`; without it the server sends no success reply.
    pub id: Option<u64>,
    pub request: Request,
}

#[derive(Debug)]
pub enum Request {
    Join {
        room: RoomName,
        /// A JSON object, as sent (validated to be an object).
        meta: Option<Box<RawValue>>,
        /// Replay every message after this position before the reply (v1.1).
        since: Option<Since>,
        /// Replay the last this many messages before the reply (v1.1).
        rewind: Option<u32>,
    },
    Leave {
        room: RoomName,
    },
    Publish {
        room: RoomName,
        /// Any JSON value except `null`, kept as the exact bytes the client sent.
        data: Box<RawValue>,
        /// A W3C `traceparent` the client wants the publish to join.
        traceparent: Option<String>,
        /// v1.1: a client-chosen key naming this publish on its connection;
        /// a retry carries the same key (G9).
        idem: Option<String>,
    },
    Presence {
        room: RoomName,
    },
    Pong,
}

/// A position in a room's stream a joining client has seen up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: u64,
    pub offset: u64,
}

/// A frame that could not be turned into a request. `id` is set when the
/// frame was JSON with a usable `id`, so the error reply can be matched.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestError {
    pub id: Option<u64>,
    pub message: String,
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<u64>,
    room: Option<String>,
    meta: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    traceparent: Option<String>,
    since: Option<Box<RawValue>>,
    rewind: Option<Box<RawValue>>,
    idem: Option<Box<RawValue>>,
}

/// The longest `idem` key, in bytes.
pub const MAX_IDEM_BYTES: usize = 64;

/// Parses one text frame.
pub fn parse_request(text: &str) -> Result<Envelope, RequestError> {
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            return Err(RequestError { id: salvage_id(text), message: describe_json_error(&error) })
        }
    };
    let id = raw.id;
    let fail = |message: String| RequestError { id, message };
    let kind = raw.kind.as_deref().ok_or_else(|| fail("missing field `type`".into()))?;
    let room = || -> Result<RoomName, RequestError> {
        let text = raw.room.as_deref().ok_or_else(|| fail("missing field `room`".into()))?;
        RoomName::parse(text).map_err(|error| fail(error.to_string()))
    };
    let request = match kind {
        "join" => {
            let meta = match raw.meta {
                None => None,
                Some(meta) if meta.get() == "null" => None,
                Some(meta) if meta.get().starts_with('{') => Some(meta),
                Some(_) => return Err(fail("`meta` must be a JSON object".into())),
            };
            let since = match raw.since.as_deref().map(RawValue::get) {
                None | Some("null") => None,
                Some(text) => Some(serde_json::from_str::<Since>(text).map_err(|_| {
                    fail("`since` must be {\"epoch\":N,\"offset\":N} with non-negative integers".into())
                })?),
            };
            let rewind = match raw.rewind.as_deref().map(RawValue::get) {
                None | Some("null") => None,
                Some(text) => Some(
                    serde_json::from_str::<u32>(text)
                        .map_err(|_| fail("`rewind` must be a non-negative integer".into()))?,
                ),
            };
            Request::Join { room: room()?, meta, since, rewind }
        }
        "leave" => Request::Leave { room: room()? },
        "publish" => {
            let data = match raw.data {
                Some(data) if data.get() != "null" => data,
                _ => return Err(fail("missing field `data`".into())),
            };
            let idem = match raw.idem.as_deref().map(RawValue::get) {
                None | Some("null") => None,
                Some(text) => match serde_json::from_str::<String>(text) {
                    Ok(key) if !key.is_empty() && key.len() <= MAX_IDEM_BYTES => Some(key),
                    _ => return Err(fail(format!("`idem` must be a string of 1 to {MAX_IDEM_BYTES} bytes"))),
                },
            };
            Request::Publish { room: room()?, data, traceparent: raw.traceparent, idem }
        }
        "presence" => Request::Presence { room: room()? },
        "pong" => Request::Pong,
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(fail(format!("unknown type `{shown}`")));
        }
    };
    Ok(Envelope { id, request })
}

/// Finds a numeric `id` in a frame whose other fields did not parse.
fn salvage_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: u64,
    }
    serde_json::from_str::<OnlyId>(text).ok().map(|only| only.id)
}

fn describe_json_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => "frame is not valid JSON".into(),
        Category::Data => {
            // serde's message names the field and the expected type; strip
            // the position suffix, which is noise to a client.
            let full = error.to_string();
            let message = full.split(" at line ").next().unwrap_or(&full);
            format!("invalid frame: {message}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> RequestError {
        parse_request(text).expect_err(text)
    }

    #[test]
    fn parses_every_request_type() {
        let join = parse_request(r#"{"type":"join","id":1,"room":"chat:lobby","meta":{"a":1}}"#).unwrap();
        assert_eq!(join.id, Some(1));
        match join.request {
            Request::Join { room, meta, since, rewind } => {
                assert_eq!(room.as_str(), "chat:lobby");
                assert_eq!(meta.unwrap().get(), r#"{"a":1}"#);
                assert_eq!((since, rewind), (None, None));
            }
            other => panic!("{other:?}"),
        }
        let publish = parse_request(r#"{"type":"publish","room":"chat:x","data":{"k":[1,2]}}"#).unwrap();
        assert_eq!(publish.id, None);
        match publish.request {
            Request::Publish { data, .. } => assert_eq!(data.get(), r#"{"k":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_request(r#"{"type":"leave","room":"chat:x"}"#).unwrap().request,
            Request::Leave { .. }
        ));
        assert!(matches!(
            parse_request(r#"{"type":"presence","room":"chat:x"}"#).unwrap().request,
            Request::Presence { .. }
        ));
        assert!(matches!(parse_request(r#"{"type":"pong"}"#).unwrap().request, Request::Pong));
    }

    #[test]
    fn a_join_may_ask_for_recovery_since_a_position_or_a_rewind() {
        let join = parse_request(
            r#"{"type":"join","id":1,"room":"chat:x","since":{"epoch":7,"offset":41},"rewind":5}"#,
        )
        .unwrap();
        assert!(matches!(
            join.request,
            Request::Join { since: Some(Since { epoch: 7, offset: 41 }), rewind: Some(5), .. }
        ));
        for bad in [
            r#"{"type":"join","id":4,"room":"chat:x","since":{"epoch":7}}"#,
            r#"{"type":"join","id":4,"room":"chat:x","since":{"epoch":-1,"offset":0}}"#,
            r#"{"type":"join","id":4,"room":"chat:x","since":"7:41"}"#,
        ] {
            let error = parse_err(bad);
            assert_eq!(error.id, Some(4));
            assert!(error.message.starts_with("`since` must be"), "{}", error.message);
        }
        let error = parse_err(r#"{"type":"join","id":5,"room":"chat:x","rewind":1.5}"#);
        assert_eq!(
            error,
            RequestError { id: Some(5), message: "`rewind` must be a non-negative integer".into() }
        );
    }

    #[test]
    fn a_publish_may_name_itself_with_an_idem_key() {
        let publish = parse_request(r#"{"type":"publish","room":"chat:x","data":1,"idem":"p-7"}"#).unwrap();
        assert!(matches!(publish.request, Request::Publish { idem: Some(ref k), .. } if k == "p-7"));
        let too_long = format!("\"{}\"", "k".repeat(65));
        for bad in ["\"\"", "7", too_long.as_str()] {
            let text = format!(r#"{{"type":"publish","id":2,"room":"chat:x","data":1,"idem":{bad}}}"#);
            assert_eq!(parse_err(&text).message, "`idem` must be a string of 1 to 64 bytes", "{bad}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse_request(r#"{"type":"pong","future":true}"#).is_ok());
    }

    #[test]
    fn errors_keep_the_id_when_it_can_be_read() {
        assert_eq!(
            parse_err(r#"{"type":"publish","id":7,"room":"chat:x"}"#),
            RequestError { id: Some(7), message: "missing field `data`".into() }
        );
        assert_eq!(parse_err(r#"{"type":"nope","id":8}"#).message, "unknown type `nope`");
        assert_eq!(parse_err(r#"{"type":"nope","id":8}"#).id, Some(8));
        assert_eq!(parse_err(r#"{"id":9}"#).message, "missing field `type`");
        assert_eq!(parse_err(r#"{"type":"join","id":3}"#).message, "missing field `room`");
        assert_eq!(
            parse_err(r#"{"type":"join","id":3,"room":"lobby"}"#).message,
            "room name must be `namespace:name`"
        );
        // `room` of the wrong type: the id is still salvaged.
        let wrong = parse_err(r#"{"type":"join","id":4,"room":5}"#);
        assert_eq!(wrong.id, Some(4));
        assert!(wrong.message.starts_with("invalid frame: invalid type"), "{}", wrong.message);
    }

    #[test]
    fn non_json_and_non_object_frames_are_bad_requests() {
        assert_eq!(parse_err("hello").message, "frame is not valid JSON");
        assert_eq!(parse_err("hello").id, None);
        assert!(parse_err("[1,2]").message.starts_with("invalid frame"));
        assert!(parse_err(r#"{"type":"join","id":-1,"room":"chat:x"}"#).id.is_none());
    }

    #[test]
    fn null_data_and_non_object_meta_are_rejected() {
        assert_eq!(
            parse_err(r#"{"type":"publish","room":"chat:x","data":null}"#).message,
            "missing field `data`"
        );
        assert_eq!(
            parse_err(r#"{"type":"join","room":"chat:x","meta":[1]}"#).message,
            "`meta` must be a JSON object"
        );
    }
}
