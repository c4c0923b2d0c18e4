//! The Pusher Channels protocol 7 as the load generator speaks it: the
//! connection URL, channel names, locally computed channel authorisations,
//! the frames a benchmark sends and how the frames it receives are read.
//! Pure functions only: `proto` owns the socket.
//!
//! A benchmark "room" `ns:name` is the channel `ns-name` (Pusher channel
//! names have no `:`); the namespace picks the channel type, so
//! `--namespace private-fan` makes private channels (client events are
//! allowed on them) and `--namespace presence-chat` presence channels.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The event name benchmark client events carry.
pub const BENCH_EVENT: &str = "client-bench";

/// What a connection needs to authorise its own subscriptions: the app key
/// (from the URL) and secret, and the socket id the server gave it.
#[derive(Clone, Debug)]
pub struct Session {
    pub key: String,
    pub secret: String,
    pub socket_id: String,
}

/// The WebSocket URL for `ws://host:port/app/{key}`, with the protocol query.
pub fn connect_url(url: &str) -> String {
    format!("{url}?protocol=7&client=starling-bench&version=1")
}

/// The app key in `ws://host:port/app/{key}`.
pub fn app_key(url: &str) -> anyhow::Result<&str> {
    let (_, key) = url
        .rsplit_once("/app/")
        .ok_or_else(|| anyhow::anyhow!("a Pusher URL ends in /app/{{key}}: {url}"))?;
    anyhow::ensure!(!key.is_empty() && !key.contains(['/', '?']), "bad app key in {url}");
    Ok(key)
}

/// The channel a benchmark room maps to.
pub fn channel(room: &str) -> String {
    room.replace(':', "-")
}

fn needs_auth(channel: &str) -> bool {
    channel.starts_with("private-") || channel.starts_with("presence-")
}

/// Pusher's channel authorisation: `key:hex(HMAC-SHA256(secret,
/// "socket_id:channel[:channel_data]"))`.
pub fn channel_auth(
    key: &str,
    secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(socket_id.as_bytes());
    mac.update(b":");
    mac.update(channel.as_bytes());
    if let Some(data) = channel_data {
        mac.update(b":");
        mac.update(data.as_bytes());
    }
    format!("{key}:{}", hex::encode(mac.finalize().into_bytes()))
}

/// The `pusher:subscribe` frame for `channel`, authorised when its type
/// needs it; a presence member's user id is derived from the socket id.
pub fn subscribe_frame(session: &Session, channel: &str) -> String {
    let mut data = serde_json::json!({ "channel": channel });
    if needs_auth(channel) {
        let channel_data = channel
            .starts_with("presence-")
            .then(|| serde_json::json!({ "user_id": format!("u-{}", session.socket_id) }).to_string());
        data["auth"] =
            channel_auth(&session.key, &session.secret, &session.socket_id, channel, channel_data.as_deref())
                .into();
        if let Some(channel_data) = channel_data {
            data["channel_data"] = channel_data.into();
        }
    }
    serde_json::json!({ "event": "pusher:subscribe", "data": data }).to_string()
}

/// The `pusher:unsubscribe` frame (Pusher answers nothing).
pub fn unsubscribe_frame(channel: &str) -> String {
    serde_json::json!({ "event": "pusher:unsubscribe", "data": { "channel": channel } }).to_string()
}

/// A client event carrying `data` (already JSON) to `channel`'s other subscribers.
pub fn client_event_frame(channel: &str, data: &str) -> String {
    let channel = serde_json::to_string(channel).expect("a string serialises");
    format!(r#"{{"event":"{BENCH_EVENT}","channel":{channel},"data":{data}}}"#)
}

pub const PING: &str = r#"{"event":"pusher:ping","data":{}}"#;
pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// A received frame, once benchmark deliveries have been taken out.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// `pusher:connection_established`, with the socket id.
    Established { socket_id: String },
    /// `pusher_internal:subscription_succeeded` (`ok`) or
    /// `pusher:subscription_error` (not `ok`) for `channel`.
    Subscription { channel: String, ok: bool },
    /// The server's `pusher:ping`: to be answered with a pong.
    Ping,
    /// The server's `pusher:pong`, the answer to our ping.
    Pong,
    /// `pusher:error` (a refused client event, for example).
    Error,
    /// Anything else (member_added, member_removed, ...).
    Other,
}

#[derive(Deserialize)]
struct RawFrame {
    event: String,
    channel: Option<String>,
    data: Option<serde_json::Value>,
}

/// Reads a frame (that is not a benchmark delivery).
pub fn classify(text: &str) -> Frame {
    let Ok(frame) = serde_json::from_str::<RawFrame>(text) else {
        return Frame::Other;
    };
    match frame.event.as_str() {
        "pusher:connection_established" => {
            // `data` is a JSON string holding an object (or, leniently, the object).
            let data = match frame.data {
                Some(serde_json::Value::String(s)) => serde_json::from_str(&s).unwrap_or_default(),
                Some(other) => other,
                None => serde_json::Value::Null,
            };
            match data["socket_id"].as_str() {
                Some(id) => Frame::Established { socket_id: id.to_string() },
                None => Frame::Other,
            }
        }
        "pusher_internal:subscription_succeeded" | "pusher:subscription_error" => match frame.channel {
            Some(channel) => Frame::Subscription { channel, ok: frame.event.starts_with("pusher_internal") },
            None => Frame::Other,
        },
        "pusher:ping" => Frame::Ping,
        "pusher:pong" => Frame::Pong,
        "pusher:error" => Frame::Error,
        _ => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signatures are the ones in Pusher's documentation (the same
    /// vectors Starling's own auth tests use), private and presence.
    #[test]
    fn channel_auth_matches_pushers_documented_examples() {
        let (key, secret) = ("278d425bdf160c739803", "7ad3773142a6692b25b8");
        assert_eq!(
            channel_auth(key, secret, "1234.1234", "private-foobar", None),
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        assert_eq!(
            channel_auth(key, secret, "1234.1234", "presence-foobar", Some(data)),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    /// A presence subscription carries channel_data as a JSON string and an
    /// auth signed over it; a public one carries neither.
    #[test]
    fn subscribe_frames_are_authorised_by_channel_type() {
        let session = Session { key: "k".into(), secret: "s".into(), socket_id: "1.2".into() };
        let frame: serde_json::Value =
            serde_json::from_str(&subscribe_frame(&session, "presence-chat-j-1")).unwrap();
        let channel_data = frame["data"]["channel_data"].as_str().expect("channel_data is a string");
        assert_eq!(channel_data, r#"{"user_id":"u-1.2"}"#);
        assert_eq!(
            frame["data"]["auth"],
            channel_auth("k", "s", "1.2", "presence-chat-j-1", Some(channel_data))
        );
        let public: serde_json::Value = serde_json::from_str(&subscribe_frame(&session, "bench-3")).unwrap();
        assert_eq!(public, serde_json::json!({"event": "pusher:subscribe", "data": {"channel": "bench-3"}}));
    }

    /// Frames from both servers are read the same: the socket id from the
    /// string-encoded data, subscription answers per channel, pings, errors.
    #[test]
    fn frames_are_matched_by_event_and_channel() {
        let established = r#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
        assert_eq!(classify(established), Frame::Established { socket_id: "123.456".into() });
        let ok = r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-fan-bench-1","data":"{}"}"#;
        assert_eq!(classify(ok), Frame::Subscription { channel: "private-fan-bench-1".into(), ok: true });
        let refused = r#"{"event":"pusher:subscription_error","channel":"presence-x","data":{"type":"AuthError","error":"bad","status":401}}"#;
        assert_eq!(classify(refused), Frame::Subscription { channel: "presence-x".into(), ok: false });
        assert_eq!(classify(r#"{"event":"pusher:ping","data":{}}"#), Frame::Ping);
        assert_eq!(classify(r#"{"event":"pusher:pong","data":"{}"}"#), Frame::Pong);
        assert_eq!(
            classify(r#"{"event":"pusher:error","data":{"code":4301,"message":"rate"}}"#),
            Frame::Error
        );
        let added =
            r#"{"event":"pusher_internal:member_added","channel":"presence-x","data":"{\"user_id\":\"u\"}"}"#;
        assert_eq!(classify(added), Frame::Other);
    }

    #[test]
    fn urls_and_channels() {
        assert_eq!(app_key("ws://127.0.0.1:6001/app/app-key").unwrap(), "app-key");
        assert!(app_key("ws://127.0.0.1:6001/ws").is_err());
        assert_eq!(channel("private-fan:bench-7"), "private-fan-bench-7");
        assert_eq!(
            client_event_frame("private-fan-bench-7", r#"{"a":1}"#),
            r#"{"event":"client-bench","channel":"private-fan-bench-7","data":{"a":1}}"#
        );
    }
}
