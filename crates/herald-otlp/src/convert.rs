//! A process's view of a traced message's span, as an OpenTelemetry span: hops become
//! events, counts (connections queued, written, skipped and why) become attributes.

use herald_trace::{Hop, SpanKind, SpanView};
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::collections::BTreeMap;
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
    let counts: BTreeMap<&str, u64> = v
        .hops
        .iter()
        .flat_map(|h| h.counts.iter().map(|(k, n)| (k.as_str(), *n)))
        .collect();
    attributes.extend(
        counts
            .into_iter()
            .map(|(k, n)| KeyValue::new(format!("herald.{k}"), n as i64)),
    );
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

#[cfg(test)]
mod tests {
    use super::*;
    use herald_trace::{Journal, TraceContext};

    #[test]
    fn hops_become_events_counts_attributes_and_a_root_has_no_parent() {
        let j = Journal::exporting("serve", "serve", 4, Duration::ZERO);
        let began = TraceContext::random();
        let handed = j.accept(&began, true, "live:a", None);
        let fanout = j.fanout(&handed, "live:a", Some(9));
        fanout.written();
        let spans = j.settled(u64::MAX);
        let scope = InstrumentationScope::builder("herald").build();
        let publish = span_data(&spans[0], &scope);
        assert_eq!(publish.name, "herald.publish");
        assert_eq!(
            publish.parent_span_id,
            SpanId::INVALID,
            "Herald began it: a root"
        );
        assert!(!publish.parent_span_is_remote);
        assert_eq!(publish.span_context.trace_id().to_bytes(), began.trace_id.0);
        assert_eq!(publish.span_context.span_id().to_bytes(), began.parent.0);
        let deliver = span_data(&spans[1], &scope);
        assert_eq!(deliver.span_kind, OtelKind::Consumer);
        assert_eq!(deliver.parent_span_id.to_bytes(), began.parent.0);
        assert!(
            !deliver.parent_span_is_remote,
            "serve delivers what it took"
        );
        let names: Vec<&str> = deliver.events.iter().map(|e| e.name.as_ref()).collect();
        assert_eq!(names, ["received", "written_first", "written_last"]);
        let attr = |k: &str| {
            deliver
                .attributes
                .iter()
                .find(|a| a.key.as_str() == k)
                .map(|a| a.value.clone())
        };
        assert_eq!(attr("herald.written"), Some(opentelemetry::Value::I64(1)));
        assert_eq!(attr("herald.seq"), Some(opentelemetry::Value::I64(9)));
        assert_eq!(
            attr("herald.channel"),
            Some(opentelemetry::Value::from("live:a"))
        );
    }
}
