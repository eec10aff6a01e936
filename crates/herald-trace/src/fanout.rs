//! One traced message's fan-out on one node, counted while it happens: when it was queued
//! for its first and last connection, when sockets took it, and what skipped it. Updated
//! only for traced messages, with atomics, so connections never wait on each other.

use crate::context::SpanId;
use crate::journal::{Hop, Step};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What one fan-out pass did with the message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutCounts {
    /// Connections it was queued for.
    pub queued: u64,
    /// Ephemeral: it replaced a queued message with the same key.
    pub conflated: u64,
    /// Ephemeral: it took the place of the oldest queued one on a full queue.
    pub evicted: u64,
    /// Ephemeral: dropped on a full queue, or the connection was closing.
    pub dropped: u64,
    /// The connection's queue was full: closed as a slow consumer (it resumes from its
    /// cursor and gets the message from the store).
    pub slow_consumer: u64,
}

#[derive(Debug)]
pub struct Fanout {
    received_us: u64,
    /// The span that handed the message to this node (the owner's `herald.publish`).
    from: SpanId,
    queued_first_us: AtomicU64,
    queued_last_us: AtomicU64,
    queued: AtomicU64,
    conflated: AtomicU64,
    evicted: AtomicU64,
    dropped: AtomicU64,
    slow_consumer: AtomicU64,
    /// Connections that already had it (a resumed stream) or found a hole before it.
    duplicate: AtomicU64,
    gap: AtomicU64,
    written_first_us: AtomicU64,
    written_last_us: AtomicU64,
    written: AtomicU64,
}

impl Fanout {
    pub(crate) fn new(received_us: u64, from: SpanId) -> Self {
        Self {
            received_us,
            from,
            queued_first_us: AtomicU64::new(0),
            queued_last_us: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            conflated: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slow_consumer: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            gap: AtomicU64::new(0),
            written_first_us: AtomicU64::new(0),
            written_last_us: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    pub(crate) fn from(&self) -> SpanId {
        self.from
    }

    /// A fan-out pass over the channel's connections ran from `first_us` to `last_us`.
    pub fn fanned_out(&self, first_us: u64, last_us: u64, c: FanoutCounts) {
        let _ = self
            .queued_first_us
            .compare_exchange(0, first_us, Relaxed, Relaxed);
        self.queued_last_us.fetch_max(last_us, Relaxed);
        self.queued.fetch_add(c.queued, Relaxed);
        self.conflated.fetch_add(c.conflated, Relaxed);
        self.evicted.fetch_add(c.evicted, Relaxed);
        self.dropped.fetch_add(c.dropped, Relaxed);
        self.slow_consumer.fetch_add(c.slow_consumer, Relaxed);
    }

    /// A connection's socket took the message's bytes.
    pub fn written(&self) {
        let now = crate::now_us();
        let _ = self
            .written_first_us
            .compare_exchange(0, now, Relaxed, Relaxed);
        self.written_last_us.fetch_max(now, Relaxed);
        self.written.fetch_add(1, Relaxed);
    }

    /// A connection skipped it: it had it already (`duplicate`) or missed one before it.
    pub fn skipped(&self, duplicate: bool) {
        if duplicate {
            self.duplicate.fetch_add(1, Relaxed);
        } else {
            self.gap.fetch_add(1, Relaxed);
        }
    }

    /// The hops so far.
    pub(crate) fn hops(
        &self,
        process: &str,
        role: &str,
        channel: &str,
        seq: Option<u64>,
    ) -> Vec<Hop> {
        let hop = |step, at_us, counts: BTreeMap<String, u64>| Hop {
            process: process.to_owned(),
            role: role.to_owned(),
            step,
            at_us,
            channel: channel.to_owned(),
            seq,
            note: None,
            counts,
        };
        let mut out = vec![hop(Step::Received, self.received_us, BTreeMap::new())];
        let first = self.queued_first_us.load(Relaxed);
        if first != 0 {
            out.push(hop(Step::QueuedFirst, first, BTreeMap::new()));
            let counts = [
                ("queued", &self.queued),
                ("conflated", &self.conflated),
                ("evicted", &self.evicted),
                ("dropped", &self.dropped),
                ("slow_consumer", &self.slow_consumer),
                ("duplicate", &self.duplicate),
                ("gap", &self.gap),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.load(Relaxed)))
            .filter(|(k, v)| *v > 0 || k == "queued")
            .collect();
            out.push(hop(
                Step::QueuedLast,
                self.queued_last_us.load(Relaxed),
                counts,
            ));
        }
        let written_first = self.written_first_us.load(Relaxed);
        if written_first != 0 {
            out.push(hop(Step::WrittenFirst, written_first, BTreeMap::new()));
            let counts = BTreeMap::from([("written".to_owned(), self.written.load(Relaxed))]);
            out.push(hop(
                Step::WrittenLast,
                self.written_last_us.load(Relaxed),
                counts,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_appear_as_the_fanout_progresses() {
        let f = Fanout::new(100, SpanId([1; 8]));
        assert_eq!(f.hops("n0", "node", "live:a", Some(1)).len(), 1);
        f.fanned_out(
            110,
            120,
            FanoutCounts {
                queued: 2,
                slow_consumer: 1,
                ..FanoutCounts::default()
            },
        );
        f.written();
        f.written();
        let hops = f.hops("n0", "node", "live:a", Some(1));
        let steps: Vec<Step> = hops.iter().map(|h| h.step).collect();
        assert_eq!(
            steps,
            vec![
                Step::Received,
                Step::QueuedFirst,
                Step::QueuedLast,
                Step::WrittenFirst,
                Step::WrittenLast
            ]
        );
        assert_eq!(hops[2].counts["queued"], 2);
        assert_eq!(hops[2].counts["slow_consumer"], 1);
        assert!(!hops[2].counts.contains_key("dropped"));
        assert_eq!(hops[4].counts["written"], 2);
        assert!(hops[3].at_us <= hops[4].at_us);
    }
}
