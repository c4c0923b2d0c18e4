//! The spans of a message's trace and the W3C trace context between nodes.
//!
//! One publish makes one trace: `publish` where it entered, `forward` when
//! it goes to the room's owner on another node, `sequence` on the owner,
//! `deliver` on every node that receives the sequenced frame, and `fanout`
//! where a node queues it for its local members. The context crosses nodes
//! as a `traceparent` in the peer frame.
//!
//! When no exporter is installed, every function here returns
//! [`Span::none`] after one atomic load: tracing off costs nothing on the hot
//! path. When one is, the sampling decision is taken once, at `publish`;
//! an unsampled publish creates no further spans on any node.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::{field, info_span, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::protocol::{ConnId, RoomName};

/// The target of every span that belongs to a message's trace.
pub const TRACE_TARGET: &str = "starling::trace";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Turns span creation on (an exporter was installed).
pub(super) fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Relaxed);
}

/// Whether spans are being exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Parses a W3C `traceparent` (`00-<trace id>-<parent id>-<flags>`). Ids of
/// all zeros, version `ff`, and malformed values give `None` (the message
/// then starts a trace of its own, as the W3C spec asks).
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim();
    if !value.is_ascii() {
        return None;
    }
    let bytes = value.as_bytes();
    if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
        return None;
    }
    let (version, trace_id, span_id, flags) = (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ![version, trace_id, span_id, flags].iter().all(|part| is_hex(part)) || version == "ff" {
        return None;
    }
    if version == "00" && bytes.len() != 55 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok().filter(|id| *id != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span_id).ok().filter(|id| *id != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(trace_id, span_id, TraceFlags::new(flags & 1), true, TraceState::default()))
}

/// The `traceparent` of a span context.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

/// The sampled span context of `span`, if it has one.
fn sampled_context(span: &Span) -> Option<SpanContext> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    (span_context.is_valid() && span_context.is_sampled()).then_some(span_context)
}

/// Keeps `span` if it is sampled, recording its trace id as a field so every
/// log line inside it names the trace; otherwise gives [`Span::none`].
fn keep_if_sampled(span: Span) -> Span {
    match sampled_context(&span) {
        Some(context) => {
            span.record("trace_id", field::display(context.trace_id()));
            span
        }
        None => Span::none(),
    }
}

fn with_remote_parent(span: Span, traceparent: Option<&str>) -> Span {
    if let Some(parent) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    span
}

/// The root of a message's trace, or a child of the publisher's own
/// `traceparent` when it sent one. `conn` is `None` for the HTTP API.
pub fn publish_span(room: &RoomName, conn: Option<ConnId>, traceparent: Option<&str>) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = info_span!(
        target: TRACE_TARGET,
        parent: None,
        "publish",
        room = %room,
        conn = conn.map(field::display),
        trace_id = field::Empty,
    );
    keep_if_sampled(with_remote_parent(span, traceparent))
}

/// A connection's whole life, from the upgrade to the close (its own
/// trace; `close_code` when the server closed it). Never entered: holding
/// it costs nothing per poll.
pub fn connection_span(conn: ConnId, user: &str) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = info_span!(
        target: TRACE_TARGET,
        parent: None,
        "connection",
        conn = %conn,
        user = %user,
        close_code = field::Empty,
        trace_id = field::Empty,
    );
    keep_if_sampled(span)
}

/// A join, from the request to the committed membership (its own trace).
pub fn join_span(room: &RoomName, conn: ConnId) -> Span {
    if !exporting() {
        return Span::none();
    }
    let span = info_span!(target: TRACE_TARGET, parent: None, "join", room = %room, conn = %conn, trace_id = field::Empty);
    keep_if_sampled(span)
}

/// Whether the current span belongs to a sampled message trace.
fn in_trace() -> bool {
    exporting() && Span::current().metadata().is_some_and(|m| m.target() == TRACE_TARGET)
}

/// Sending a publish to the room's owner, inside `publish`.
pub fn forward_span(room: &RoomName, owner: &str) -> Span {
    if !in_trace() {
        return Span::none();
    }
    info_span!(target: TRACE_TARGET, "forward", room = %room, owner = %owner)
}

/// Sequencing on this node (the owner), inside `publish`.
pub fn sequence_span(room: &RoomName) -> Span {
    if !in_trace() {
        return Span::none();
    }
    info_span!(target: TRACE_TARGET, "sequence", room = %room)
}

/// Sequencing a publish forwarded by `from`, child of its `forward` span.
pub fn remote_sequence_span(room: &str, from: &str, traceparent: Option<&str>) -> Span {
    if !exporting() || traceparent.is_none() {
        return Span::none();
    }
    let span = info_span!(
        target: TRACE_TARGET,
        parent: None,
        "sequence",
        room = %room,
        forwarded_by = %from,
        trace_id = field::Empty,
    );
    keep_if_sampled(with_remote_parent(span, traceparent))
}

/// Receiving a sequenced frame from the owner `from`, child of its `sequence`.
pub fn deliver_span(room: &str, from: &str, traceparent: Option<&str>) -> Span {
    if !exporting() || traceparent.is_none() {
        return Span::none();
    }
    let span = info_span!(
        target: TRACE_TARGET,
        parent: None,
        "deliver",
        room = %room,
        owner = %from,
        trace_id = field::Empty,
    );
    keep_if_sampled(with_remote_parent(span, traceparent))
}

/// Queueing a frame for this node's members of the room.
pub fn fanout_span(room: &RoomName, members: usize) -> Span {
    if !in_trace() {
        return Span::none();
    }
    info_span!(target: TRACE_TARGET, "fanout", room = %room, members)
}

/// The `traceparent` to send with a peer frame: the current span's, when
/// it belongs to a sampled message trace.
pub fn current_traceparent() -> Option<String> {
    if !in_trace() {
        return None;
    }
    sampled_context(&Span::current()).map(|context| format_traceparent(&context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_per_w3c_and_round_trip() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(value).expect("valid");
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(format_traceparent(&context), value);
        let unsampled = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // A later version may append fields after a dash.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn no_spans_are_made_while_nothing_exports() {
        let room = RoomName::parse("chat:x").unwrap();
        assert!(publish_span(&room, None, None).is_disabled());
        assert!(deliver_span("chat:x", "n", Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
            .is_disabled());
        assert!(current_traceparent().is_none());
    }
}
