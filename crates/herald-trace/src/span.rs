//! The spans a process reports for one traced message, shaped for an OpenTelemetry
//! exporter: a `herald.publish` span for each process that took the publish request (its
//! parent is the span that handed the message on: the publisher's, or the dispatcher that
//! forwarded it) and a `herald.deliver` span for each fan-out on a node (its parent is the
//! owner dispatcher's `herald.publish`). Each hop becomes an event of its span.

use crate::context::{SpanId, TraceId};
use crate::journal::Hop;

/// Which part of the journey a span covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Took the publish request: accepted, forwarded, stored, put on the fabric.
    Publish,
    /// A node's fan-out: received, queued for and written to its connections.
    Deliver,
}

impl SpanKind {
    pub fn name(self) -> &'static str {
        match self {
            SpanKind::Publish => "herald.publish",
            SpanKind::Deliver => "herald.deliver",
        }
    }
}

/// One span of a traced message, as this process saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanView {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// `None` when Herald began the trace (the publisher sent no `traceparent`).
    pub parent: Option<SpanId>,
    /// The parent span is another process's.
    pub parent_remote: bool,
    pub kind: SpanKind,
    /// Microseconds since the Unix epoch.
    pub start_us: u64,
    pub end_us: u64,
    pub channel: String,
    pub seq: Option<u64>,
    /// The hops inside the span, oldest first.
    pub hops: Vec<Hop>,
}

impl SpanView {
    /// The span over `hops`, from the first to the last; none without hops.
    pub(crate) fn over(
        (trace_id, span_id): (TraceId, SpanId),
        (parent, parent_remote): (Option<SpanId>, bool),
        kind: SpanKind,
        mut hops: Vec<Hop>,
    ) -> Option<Self> {
        hops.sort_by_key(|h| (h.at_us, h.step));
        let first = hops.first()?;
        let start_us = first.at_us;
        let channel = first.channel.clone();
        let seq = hops.iter().find_map(|h| h.seq);
        let end_us = hops.iter().map(|h| h.at_us).max().unwrap_or(start_us);
        Some(Self {
            trace_id,
            span_id,
            parent_remote: parent_remote && parent.is_some(),
            parent,
            kind,
            start_us,
            end_us,
            channel,
            seq,
            hops,
        })
    }
}
