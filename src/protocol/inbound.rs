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
    },
    Presence {
        room: RoomName,
    },
    Pong,
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
}

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
            Request::Join { room: room()?, meta }
        }
        "leave" => Request::Leave { room: room()? },
        "publish" => {
            let data = match raw.data {
                Some(data) if data.get() != "null" => data,
                _ => return Err(fail("missing field `data`".into())),
            };
            Request::Publish { room: room()?, data, traceparent: raw.traceparent }
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
            Request::Join { room, meta } => {
                assert_eq!(room.as_str(), "chat:lobby");
                assert_eq!(meta.unwrap().get(), r#"{"a":1}"#);
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
