//! The hops of traced messages through this process, the most recent ones kept.

use crate::context::{SpanId, TraceContext, TraceId};
use crate::fanout::Fanout;
use crate::histogram::HopLatency;
use crate::span::{SpanKind, SpanView};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// What a process did with a traced message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// A dispatcher took the publish request.
    Accepted,
    /// The dispatcher that took it sent it on to the dispatcher holding its channel.
    Forwarded,
    /// The owner dispatcher wrote it to the store (its position is final).
    Stored,
    /// The owner dispatcher handed it to the fabric, towards the nodes.
    Fabric,
    /// A node took it off the fabric.
    Received,
    /// The node queued it for its first subscribed connection.
    QueuedFirst,
    /// The node queued it for its last subscribed connection (with how many got it, and
    /// how many were skipped and why).
    QueuedLast,
    /// The first connection's socket took its bytes.
    WrittenFirst,
    /// The last connection's socket so far took its bytes.
    WrittenLast,
}

impl Step {
    /// Its name on the wire (`GET /v1/trace`) and in span events.
    pub fn name(self) -> &'static str {
        match self {
            Step::Accepted => "accepted",
            Step::Forwarded => "forwarded",
            Step::Stored => "stored",
            Step::Fabric => "fabric",
            Step::Received => "received",
            Step::QueuedFirst => "queued_first",
            Step::QueuedLast => "queued_last",
            Step::WrittenFirst => "written_first",
            Step::WrittenLast => "written_last",
        }
    }
}

/// One hop of a message's journey.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The process (its cluster id, or `serve`).
    pub process: String,
    pub role: String,
    pub step: Step,
    /// Microseconds since the Unix epoch.
    pub at_us: u64,
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// E.g. the dispatcher a publish was forwarded to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// E.g. connections queued, skipped as slow consumers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
}

/// Which traced message: by its trace id, or by the position it was stored at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    Id(TraceId),
    Position { channel: String, seq: u64 },
}

struct Entry {
    trace: TraceId,
    channel: Arc<str>,
    seq: Option<u64>,
    /// The span that handed the message to this process when it was first seen here.
    from: SpanId,
    /// This process's `herald.publish` span, once it took the publish request: its id
    /// (handed on with the message) and its parent (none when Herald began the trace).
    publish: Option<(SpanId, Option<SpanId>)>,
    hops: Vec<Hop>,
    /// Live counters of fan-outs on this node (a node may see a message twice: the fabric,
    /// then a repair).
    fanouts: Vec<Arc<Fanout>>,
}

struct Inner {
    traces: HashMap<TraceId, Entry>,
    order: VecDeque<TraceId>,
    positions: HashMap<(Arc<str>, u64), TraceId>,
    /// Traces to report as spans once settled, with when (oldest first).
    settling: VecDeque<(TraceId, u64)>,
}

/// The traced messages this process handled, the `keep` most recent.
pub struct Journal {
    process: String,
    role: String,
    keep: usize,
    /// Microseconds after a trace is first seen here that its spans are reported, when
    /// they are exported at all.
    export_after_us: Option<u64>,
    inner: Mutex<Inner>,
    /// Per-hop latency of every message, traced or not.
    pub latency: HopLatency,
}

/// Hops one entry may hold: a message is handled a bounded number of times per process,
/// but a retried publish could otherwise add hops without end.
const MAX_HOPS: usize = 64;

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("process", &self.process)
            .field("role", &self.role)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

impl Journal {
    pub fn new(process: impl Into<String>, role: impl Into<String>, keep: usize) -> Arc<Self> {
        Self::build(process.into(), role.into(), keep, None)
    }

    /// A journal whose traces are also reported as spans ([`settled`](Self::settled))
    /// `after` they were first seen here: by then this process's part is normally done.
    pub fn exporting(
        process: impl Into<String>,
        role: impl Into<String>,
        keep: usize,
        after: std::time::Duration,
    ) -> Arc<Self> {
        let after_us = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
        Self::build(process.into(), role.into(), keep, Some(after_us))
    }

    fn build(
        process: String,
        role: String,
        keep: usize,
        export_after_us: Option<u64>,
    ) -> Arc<Self> {
        Arc::new(Self {
            process,
            role,
            keep: keep.max(1),
            export_after_us,
            inner: Mutex::new(Inner {
                traces: HashMap::new(),
                order: VecDeque::new(),
                positions: HashMap::new(),
                settling: VecDeque::new(),
            }),
            latency: HopLatency::default(),
        })
    }

    pub fn process(&self) -> &str {
        &self.process
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    /// Records that this process took the publish request of a traced message, and starts
    /// its `herald.publish` span. `began`: Herald began the trace (no publisher's span is
    /// its parent). Returns the context to hand the message on with.
    pub fn accept(
        &self,
        ctx: &TraceContext,
        began: bool,
        channel: &str,
        note: Option<String>,
    ) -> TraceContext {
        // A trace Herald began names its first span already: that span is this one.
        let (span, parent) = if began {
            (ctx.parent, None)
        } else {
            (SpanId::random(), Some(ctx.parent))
        };
        let hop = self.hop(channel, None, Step::Accepted, crate::now_us(), note);
        let mut g = self.inner.lock();
        let entry = self.add_hop(&mut g, ctx, hop);
        // Accepted twice (a retried forward): the first span stays the one handed on.
        let (span, _) = *entry.publish.get_or_insert((span, parent));
        TraceContext {
            trace_id: ctx.trace_id,
            parent: span,
        }
    }

    /// Records that this process did `step` with the message of `ctx` now.
    pub fn record(
        &self,
        ctx: &TraceContext,
        channel: &str,
        seq: Option<u64>,
        step: Step,
        note: Option<String>,
    ) {
        self.record_at(ctx, channel, seq, step, crate::now_us(), note);
    }

    /// Like [`record`](Self::record), at a time taken earlier.
    pub fn record_at(
        &self,
        ctx: &TraceContext,
        channel: &str,
        seq: Option<u64>,
        step: Step,
        at_us: u64,
        note: Option<String>,
    ) {
        let hop = self.hop(channel, seq, step, at_us, note);
        self.add_hop(&mut self.inner.lock(), ctx, hop);
    }

    /// Adds `hop` to the message's entry (made if new); returns the entry.
    fn add_hop<'a>(&self, g: &'a mut Inner, ctx: &TraceContext, hop: Hop) -> &'a mut Entry {
        let entry = self.entry(g, ctx, &hop.channel, hop.seq);
        if entry.hops.len() < MAX_HOPS {
            entry.hops.push(hop);
        }
        entry
    }

    fn hop(
        &self,
        channel: &str,
        seq: Option<u64>,
        step: Step,
        at_us: u64,
        note: Option<String>,
    ) -> Hop {
        Hop {
            process: self.process.clone(),
            role: self.role.clone(),
            step,
            at_us,
            channel: channel.to_owned(),
            seq,
            note,
            counts: BTreeMap::new(),
        }
    }

    /// Starts following the message's fan-out on this node (it was just received).
    pub fn fanout(&self, ctx: &TraceContext, channel: &str, seq: Option<u64>) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout::new(crate::now_us(), ctx.parent));
        let mut g = self.inner.lock();
        let entry = self.entry(&mut g, ctx, channel, seq);
        if entry.fanouts.len() < MAX_HOPS / 8 {
            entry.fanouts.push(fanout.clone());
        }
        fanout
    }

    /// Indexes a traced message by the position it got (the dispatcher that took the
    /// request learns it from the answer).
    pub fn positioned(&self, ctx: &TraceContext, channel: &str, seq: u64) {
        let mut g = self.inner.lock();
        self.entry(&mut g, ctx, channel, Some(seq));
    }

    fn entry<'a>(
        &self,
        g: &'a mut Inner,
        ctx: &TraceContext,
        channel: &str,
        seq: Option<u64>,
    ) -> &'a mut Entry {
        let trace = ctx.trace_id;
        if !g.traces.contains_key(&trace) {
            while g.order.len() >= self.keep {
                let Some(old) = g.order.pop_front() else {
                    break;
                };
                if let Some(e) = g.traces.remove(&old) {
                    if let Some(s) = e.seq {
                        g.positions.remove(&(e.channel, s));
                    }
                }
            }
            g.order.push_back(trace);
            if let Some(after) = self.export_after_us {
                // Bounded like the traces: an evicted trace's turn finds nothing.
                if g.settling.len() >= self.keep {
                    g.settling.pop_front();
                }
                g.settling
                    .push_back((trace, crate::now_us().saturating_add(after)));
            }
        }
        let Inner {
            traces, positions, ..
        } = g;
        let entry = traces.entry(trace).or_insert_with(|| Entry {
            trace,
            channel: Arc::from(channel),
            seq: None,
            from: ctx.parent,
            publish: None,
            hops: Vec::new(),
            fanouts: Vec::new(),
        });
        if let (None, Some(s)) = (entry.seq, seq) {
            entry.seq = Some(s);
            positions.insert((entry.channel.clone(), s), trace);
        }
        entry
    }

    /// The trace id stored at a position, if this process saw that message traced.
    pub fn trace_at(&self, channel: &str, seq: u64) -> Option<TraceId> {
        let g = self.inner.lock();
        g.positions.get(&(Arc::from(channel), seq)).copied()
    }

    /// This process's hops of the message `q` names, oldest first, with its trace id.
    pub fn find(&self, q: &Query) -> Option<(TraceId, Vec<Hop>)> {
        let g = self.inner.lock();
        let id = match q {
            Query::Id(id) => *id,
            Query::Position { channel, seq } => {
                *g.positions.get(&(Arc::from(channel.as_str()), *seq))?
            }
        };
        let e = g.traces.get(&id)?;
        let mut hops = e.hops.clone();
        for f in &e.fanouts {
            hops.extend(f.hops(&self.process, &self.role, &e.channel, e.seq));
        }
        hops.sort_by_key(|h| (h.at_us, h.step));
        Some((e.trace, hops))
    }

    /// The spans of the traces whose time to be reported came by `now_us`, each trace
    /// once: a `herald.publish` span when this process took or stored the message, a
    /// `herald.deliver` span per fan-out on this node.
    pub fn settled(&self, now_us: u64) -> Vec<SpanView> {
        let mut g = self.inner.lock();
        let mut out = Vec::new();
        while let Some(&(trace, due)) = g.settling.front() {
            if due > now_us {
                break;
            }
            g.settling.pop_front();
            if let Some(e) = g.traces.get(&trace) {
                self.spans_of(e, &mut out);
            }
        }
        out
    }

    fn spans_of(&self, e: &Entry, out: &mut Vec<SpanView>) {
        // Hops recorded without a publish span of this process (a dispatcher that stored
        // a message another took) hang off the span that handed it here.
        let (id, parent) = e.publish.unwrap_or((SpanId::random(), Some(e.from)));
        out.extend(SpanView::over(
            (e.trace, id),
            (parent, true),
            SpanKind::Publish,
            e.hops.clone(),
        ));
        for f in &e.fanouts {
            let hops = f.hops(&self.process, &self.role, &e.channel, e.seq);
            // `herald serve` delivers what it took itself: the parent span is its own.
            let remote = e.publish.map(|p| p.0) != Some(f.from());
            out.extend(SpanView::over(
                (e.trace, SpanId::random()),
                (Some(f.from()), remote),
                SpanKind::Deliver,
                hops,
            ));
        }
    }

    /// Traced messages held.
    pub fn len(&self) -> usize {
        self.inner.lock().traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hops_by_id_and_by_position_and_forgets_the_oldest() {
        let j = Journal::new("d0", "dispatcher", 2);
        let a = TraceContext::random();
        j.record(&a, "live:a", None, Step::Accepted, None);
        j.record(&a, "live:a", Some(7), Step::Stored, None);
        let (id, hops) = j.find(&Query::Id(a.trace_id)).expect("by id");
        assert_eq!(id, a.trace_id);
        assert_eq!(
            hops.iter().map(|h| h.step).collect::<Vec<_>>(),
            vec![Step::Accepted, Step::Stored]
        );
        let by_pos = Query::Position {
            channel: "live:a".into(),
            seq: 7,
        };
        assert_eq!(j.find(&by_pos).map(|f| f.0), Some(a.trace_id));
        assert_eq!(j.trace_at("live:a", 7), Some(a.trace_id));

        let b = TraceContext::random();
        let c = TraceContext::random();
        j.record(&b, "live:b", Some(1), Step::Stored, None);
        j.record(&c, "live:c", Some(1), Step::Stored, None);
        assert_eq!(j.len(), 2);
        assert!(j.find(&by_pos).is_none(), "the oldest trace is gone");
        assert!(j.trace_at("live:a", 7).is_none(), "with its position");
    }

    #[test]
    fn hops_serialize_with_snake_case_steps() {
        for step in [
            Step::Accepted,
            Step::Forwarded,
            Step::Stored,
            Step::Fabric,
            Step::Received,
            Step::QueuedFirst,
            Step::QueuedLast,
            Step::WrittenFirst,
            Step::WrittenLast,
        ] {
            let json = serde_json::to_string(&step).expect("json");
            assert_eq!(json, format!("\"{}\"", step.name()));
        }
        let j = Journal::new("n0", "node", 4);
        let a = TraceContext::random();
        j.record(&a, "live:a", Some(1), Step::QueuedLast, Some("x".into()));
        let (_, hops) = j.find(&Query::Id(a.trace_id)).expect("found");
        let json = serde_json::to_string(&hops).expect("json");
        assert!(json.contains("\"step\":\"queued_last\""), "{json}");
        let back: Vec<Hop> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, hops);
    }

    #[test]
    fn settled_traces_become_a_publish_span_and_a_deliver_span_per_fanout_once() {
        let j = Journal::exporting("serve", "serve", 8, std::time::Duration::from_secs(3600));
        let from_publisher = TraceContext::random();
        let handed = j.accept(&from_publisher, false, "live:a", None);
        assert_eq!(handed.trace_id, from_publisher.trace_id);
        assert_ne!(handed.parent, from_publisher.parent, "a span of its own");
        j.record(&handed, "live:a", Some(3), Step::Stored, None);
        j.fanout(&handed, "live:a", Some(3)).written();
        assert!(j.settled(crate::now_us()).is_empty(), "not settled yet");

        let spans = j.settled(u64::MAX);
        assert_eq!(spans.len(), 2, "{spans:?}");
        let publish = &spans[0];
        assert_eq!(publish.kind, SpanKind::Publish);
        assert_eq!(publish.span_id, handed.parent);
        assert_eq!(publish.parent, Some(from_publisher.parent));
        assert_eq!(publish.seq, Some(3));
        assert!(publish.start_us <= publish.end_us);
        let deliver = &spans[1];
        assert_eq!(deliver.kind, SpanKind::Deliver);
        assert_eq!(deliver.parent, Some(handed.parent));
        assert_eq!(deliver.hops.last().map(|h| h.step), Some(Step::WrittenLast));
        assert!(j.settled(u64::MAX).is_empty(), "each trace once");
    }

    #[test]
    fn a_trace_herald_began_has_a_root_publish_span() {
        let j = Journal::exporting("d0", "dispatcher", 8, std::time::Duration::ZERO);
        let began = TraceContext::random();
        let handed = j.accept(&began, true, "live:a", None);
        assert_eq!(handed, began, "the first span is this one");
        let spans = j.settled(u64::MAX);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent, None);
        assert_eq!(spans[0].span_id, began.parent);
    }

    #[test]
    fn a_journal_that_does_not_export_settles_nothing() {
        let j = Journal::new("d0", "dispatcher", 8);
        j.accept(&TraceContext::random(), true, "live:a", None);
        assert!(j.settled(u64::MAX).is_empty());
    }
}
