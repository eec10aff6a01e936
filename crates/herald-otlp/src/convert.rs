//! A process's view of a traced message's span, as an OpenTelemetry span: hops become
//! events, counts (connections queued, written, skipped and why) become attributes.

use herald_trace::{Hop, SpanKind, SpanView};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) fn span_data(v: &SpanView, scope: &InstrumentationScope) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(v.trace_id.0),
        SpanId::from_bytes(v.span_id.0),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let mut attributes = vec![KeyValue::new("herald.channel", v.channel.clone())];
    if let Some(seq) = v.seq {
        attributes.push(KeyValue::new("herald.seq", seq as i64));
    }
    if let Some(h) = v.hops.first() {
        attributes.push(KeyValue::new("herald.process", h.process.clone()));
        attributes.push(KeyValue::new("herald.role", h.role.clone()));
    }
    // The last count of each name is the fan-out's total (written_last comes last).
    for h in &v.hops {
        for (k, n) in &h.counts {
            attributes.retain(|a| a.key.as_str() != format!("herald.{k}"));
            attributes.push(KeyValue::new(format!("herald.{k}"), *n as i64));
        }
    }
    let mut events = SpanEvents::default();
    events.events = v.hops.iter().map(event).collect();
    SpanData {
        span_context: context,
        parent_span_id: v
            .parent
            .map_or(SpanId::INVALID, |p| SpanId::from_bytes(p.0)),
        parent_span_is_remote: v.parent_remote,
        span_kind: match v.kind {
            SpanKind::Publish => OtelKind::Server,
            SpanKind::Deliver => OtelKind::Consumer,
        },
        name: Cow::Borrowed(v.kind.name()),
        start_time: at(v.start_us),
        end_time: at(v.end_us),
        attributes,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: scope.clone(),
    }
}

fn event(h: &Hop) -> Event {
    let mut attributes: Vec<KeyValue> = h
        .counts
        .iter()
        .map(|(k, n)| KeyValue::new(format!("herald.{k}"), *n as i64))
        .collect();
    if let Some(note) = &h.note {
        attributes.push(KeyValue::new("herald.note", note.clone()));
    }
    // The same names `herald trace` and `GET /v1/trace` use.
    Event::new(h.step.name(), at(h.at_us), attributes, 0)
}

fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}
