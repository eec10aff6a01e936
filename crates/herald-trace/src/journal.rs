//! The hops of traced messages through this process, the most recent ones kept.

use crate::context::{TraceContext, TraceId};
use crate::fanout::Fanout;
use crate::histogram::HopLatency;
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
    hops: Vec<Hop>,
    /// Live counters of fan-outs on this node (a node may see a message twice: the fabric,
    /// then a repair).
    fanouts: Vec<Arc<Fanout>>,
}

struct Inner {
    traces: HashMap<TraceId, Entry>,
    order: VecDeque<TraceId>,
    positions: HashMap<(Arc<str>, u64), TraceId>,
}

/// The traced messages this process handled, the `keep` most recent.
pub struct Journal {
    process: String,
    role: String,
    keep: usize,
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
        Arc::new(Self {
            process: process.into(),
            role: role.into(),
            keep: keep.max(1),
            inner: Mutex::new(Inner {
                traces: HashMap::new(),
                order: VecDeque::new(),
                positions: HashMap::new(),
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
        let hop = Hop {
            process: self.process.clone(),
            role: self.role.clone(),
            step,
            at_us,
            channel: channel.to_owned(),
            seq,
            note,
            counts: BTreeMap::new(),
        };
        let mut g = self.inner.lock();
        let entry = self.entry(&mut g, ctx.trace_id, channel, seq);
        if entry.hops.len() < MAX_HOPS {
            entry.hops.push(hop);
        }
    }

    /// Starts following the message's fan-out on this node (it was just received).
    pub fn fanout(&self, ctx: &TraceContext, channel: &str, seq: Option<u64>) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout::new(crate::now_us()));
        let mut g = self.inner.lock();
        let entry = self.entry(&mut g, ctx.trace_id, channel, seq);
        if entry.fanouts.len() < MAX_HOPS / 8 {
            entry.fanouts.push(fanout.clone());
        }
        fanout
    }

    /// Indexes a traced message by the position it got (the dispatcher that took the
    /// request learns it from the answer).
    pub fn positioned(&self, ctx: &TraceContext, channel: &str, seq: u64) {
        let mut g = self.inner.lock();
        self.entry(&mut g, ctx.trace_id, channel, Some(seq));
    }

    fn entry<'a>(
        &self,
        g: &'a mut Inner,
        trace: TraceId,
        channel: &str,
        seq: Option<u64>,
    ) -> &'a mut Entry {
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
        }
        let Inner {
            traces, positions, ..
        } = g;
        let entry = traces.entry(trace).or_insert_with(|| Entry {
            trace,
            channel: Arc::from(channel),
            seq: None,
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
        let j = Journal::new("n0", "node", 4);
        let a = TraceContext::random();
        j.record(&a, "live:a", Some(1), Step::QueuedLast, Some("x".into()));
        let (_, hops) = j.find(&Query::Id(a.trace_id)).expect("found");
        let json = serde_json::to_string(&hops).expect("json");
        assert!(json.contains("\"step\":\"queued_last\""), "{json}");
        let back: Vec<Hop> = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, hops);
    }
}
