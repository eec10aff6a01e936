//! Channel → local subscribers, with a small ring of each channel's recent messages.
//! Fan-out and attach take the same per-channel lock, so a subscriber joins at an exact
//! position: everything after it is either handed over from the ring or fanned out live.

use crate::message::Message;
use crate::queue::{ConnQueue, Item, Pushed, SlowPolicy};
use crate::stats::Counters;
use crate::SlowPolicies;
use herald_fabric::Fabric;
use herald_proto::Position;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

/// One channel on this node.
pub struct Slot {
    pub channel: Arc<str>,
    /// When this node began to take the channel's messages: a store read that started
    /// earlier may miss messages fanned out before the slot existed.
    pub created: Instant,
    /// What the channel's namespace does with ephemeral messages for full queues.
    policy: SlowPolicy,
    inner: Mutex<SlotInner>,
}

struct SlotInner {
    ring: VecDeque<Arc<Message>>,
    epoch: u64,
    /// Last seq fanned out here; `None` until the first message arrives.
    head: Option<u64>,
    subs: Vec<(Arc<ConnQueue>, u16)>,
    idle_since: Option<Instant>,
    /// Streams between taking this slot and attaching to it (see [`Claim`]).
    joining: u32,
}

/// A joining stream's hold on its channel's slot: while it reads the store, before it has
/// attached, the idle sweep must not drop the slot (the stream would then attach to a slot
/// no longer fanned out to, and wait for messages that never come).
pub struct Claim {
    slot: Arc<Slot>,
}

impl Claim {
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut g = self.slot.inner.lock();
        g.joining = g.joining.saturating_sub(1);
        if g.subs.is_empty() && g.idle_since.is_none() {
            g.idle_since = Some(Instant::now());
        }
    }
}

/// What a delivery found.
pub enum Delivered {
    Done,
    /// Messages `after+1 ..= before-1` never arrived: repair from the store first.
    Gap {
        after: u64,
    },
}

/// What an attach found.
pub enum Attached {
    Live,
    /// The ring does not reach back to the position: read the store up to the ring first.
    NeedStore,
    Closed,
}

pub struct Hub {
    shards: Vec<RwLock<HashMap<Arc<str>, Arc<Slot>>>>,
    ring_cap: usize,
    fabric: Arc<dyn Fabric>,
    counters: Arc<Counters>,
    policies: SlowPolicies,
}

impl Hub {
    pub(crate) fn new(
        ring_cap: usize,
        fabric: Arc<dyn Fabric>,
        counters: Arc<Counters>,
        policies: SlowPolicies,
    ) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            ring_cap,
            fabric,
            counters,
            policies,
        }
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<Arc<str>, Arc<Slot>>> {
        let h = herald_proto::channel_hash(channel) as usize;
        &self.shards[h % SHARDS]
    }

    pub fn get(&self, channel: &str) -> Option<Arc<Slot>> {
        self.shard(channel).read().get(channel).cloned()
    }

    /// The channel's slot, created (and the fabric told of our interest) if needed.
    #[cfg(test)]
    pub fn slot(&self, channel: &str) -> Arc<Slot> {
        self.slot_with(channel, false)
    }

    /// The channel's slot for a stream about to join it, kept from the idle sweep until the
    /// claim is dropped (after the stream attached, or gave up).
    pub fn claim(&self, channel: &str) -> Claim {
        Claim {
            slot: self.slot_with(channel, true),
        }
    }

    fn slot_with(&self, channel: &str, join: bool) -> Arc<Slot> {
        let hold = |s: &Arc<Slot>| {
            if join {
                s.inner.lock().joining += 1;
            }
            s.clone()
        };
        // The hold is taken under the shard lock the sweep needs to remove the slot.
        if let Some(s) = self.shard(channel).read().get(channel) {
            return hold(s);
        }
        let mut map = self.shard(channel).write();
        if let Some(s) = map.get(channel) {
            return hold(s);
        }
        let name: Arc<str> = Arc::from(channel);
        let slot = Arc::new(Slot {
            channel: name.clone(),
            created: Instant::now(),
            policy: self.policies.for_channel(channel),
            inner: Mutex::new(SlotInner {
                ring: VecDeque::new(),
                epoch: 0,
                head: None,
                subs: Vec::new(),
                idle_since: Some(Instant::now()),
                joining: u32::from(join),
            }),
        });
        map.insert(name, slot.clone());
        drop(map);
        self.counters.channels.fetch_add(1, Relaxed);
        self.fabric.set_interest(channel, true);
        slot
    }

    /// Fans a message out to the channel's local subscribers. Socket connections that were
    /// idle are added to `flush` and written by the caller after its batch.
    pub fn deliver(&self, msg: &Arc<Message>, flush: &mut Vec<Arc<ConnQueue>>) -> Delivered {
        let Some(slot) = self.get(&msg.channel) else {
            return Delivered::Done;
        };
        let mut g = slot.inner.lock();
        if !msg.is_ephemeral() {
            if let Some(head) = g.head {
                // Epoch 0 is the baseline of a channel that had no messages yet: its first
                // message, whatever its epoch, must be seq 1.
                if msg.epoch == g.epoch || g.epoch == 0 {
                    if msg.seq <= head {
                        return Delivered::Done;
                    }
                    if msg.seq > head + 1 {
                        return Delivered::Gap { after: head };
                    }
                }
            }
            g.head = Some(msg.seq);
            g.epoch = msg.epoch;
            if g.ring.len() >= self.ring_cap {
                g.ring.pop_front();
            }
            if self.ring_cap > 0 {
                g.ring.push_back(msg.clone());
            }
        }
        let started_us = msg.trace.as_ref().map(|_| herald_trace::now_us());
        let mut counts = herald_trace::FanoutCounts::default();
        let mut i = 0;
        while i < g.subs.len() {
            let (q, idx) = &g.subs[i];
            let item = if msg.is_ephemeral() {
                Item::Ephemeral(msg.clone(), *idx, slot.policy)
            } else {
                Item::Reliable(msg.clone(), *idx)
            };
            let (pushed, needs_flush) = q.push_deferred(item);
            if needs_flush {
                flush.push(q.clone());
            }
            match pushed {
                Pushed::Queued => counts.queued += 1,
                Pushed::Conflated => {
                    counts.conflated += 1;
                    Counters::bump(&self.counters.ephemeral_conflated)
                }
                Pushed::Evicted => {
                    counts.evicted += 1;
                    Counters::bump(&self.counters.ephemeral_evicted)
                }
                Pushed::Dropped => {
                    counts.dropped += 1;
                    if !q.is_closed() {
                        Counters::bump(&self.counters.ephemeral_dropped);
                    }
                }
                Pushed::Overflow => {
                    counts.slow_consumer += 1;
                    Counters::bump(if msg.is_ephemeral() {
                        &self.counters.ephemeral_disconnects
                    } else {
                        &self.counters.slow_disconnects
                    });
                    g.subs.swap_remove(i);
                    self.counters.subscriptions.fetch_sub(1, Relaxed);
                    continue;
                }
            }
            i += 1;
        }
        if g.subs.is_empty() && g.idle_since.is_none() {
            g.idle_since = Some(Instant::now());
        }
        if let (Some(f), Some(started)) = (&msg.trace, started_us) {
            f.fanned_out(started, herald_trace::now_us(), counts);
        }
        Delivered::Done
    }

    /// Where the channel stands on this node, if a message has been seen: `(epoch, head)`.
    pub fn head(&self, slot: &Slot) -> Option<Position> {
        let g = slot.inner.lock();
        g.head.map(|seq| Position {
            epoch: g.epoch,
            seq,
        })
    }

    /// Joins `queue` to the channel after position `after` if the ring covers everything
    /// since then, handing over the ring's newer messages first.
    pub fn attach(
        &self,
        slot: &Slot,
        queue: &Arc<ConnQueue>,
        idx: u16,
        after: Position,
    ) -> Attached {
        let mut g = slot.inner.lock();
        if queue.is_closed() {
            return Attached::Closed;
        }
        let covered = match g.ring.front() {
            // Nothing fanned out since the slot was made, or nothing kept: only a position
            // at (or past) the head can join without the store.
            None => g.head.is_none_or(|h| after.seq >= h),
            Some(first) => {
                let same_epoch = after.epoch == g.epoch || after.epoch == 0;
                same_epoch && first.seq <= after.seq + 1
            }
        };
        if !covered {
            return Attached::NeedStore;
        }
        if g.head.is_none() {
            // The first subscriber fixes where this node stands: a later message that does
            // not follow it is a gap to repair, not a new start (the fabric only carries
            // messages once this node has asked for the channel).
            g.head = Some(after.seq);
            g.epoch = after.epoch;
        }
        // The hand-over bypasses the queue's bound; keep it to half of it so live messages
        // still fit. A client further behind keeps reading the store (with backpressure).
        let backlog = g.ring.iter().filter(|m| m.seq > after.seq).count();
        if backlog > (queue.cap() / 2).max(1) {
            return Attached::NeedStore;
        }
        for m in g.ring.iter().filter(|m| m.seq > after.seq) {
            if !queue.push_unbounded(Item::Reliable(m.clone(), idx)) {
                return Attached::Closed;
            }
        }
        g.subs.push((queue.clone(), idx));
        g.idle_since = None;
        self.counters.subscriptions.fetch_add(1, Relaxed);
        Attached::Live
    }

    /// Puts messages a resume just read from the store in front of the ring, as far as they
    /// join it without a hole (same epoch, each seq one below the ring's first): the next
    /// resumes of a channel new to this node (after a node death, its clients' channels)
    /// then find them here instead of reading the store again. `recent` is in seq order;
    /// the resume attaches at `at` next.
    pub fn backfill(&self, slot: &Slot, recent: &VecDeque<Arc<Message>>, at: Position) {
        let Some(newest) = recent.back() else { return };
        if self.ring_cap == 0 {
            return;
        }
        let mut g = slot.inner.lock();
        let mut front = match (g.ring.front(), g.head) {
            (Some(first), _) => first.seq,
            (None, Some(head)) => head + 1,
            // Nothing fanned out nor attached yet: the store's newest fixes where this node
            // stands, as a first subscriber at that position would.
            (None, None) => {
                if newest.seq != at.seq || newest.epoch != at.epoch {
                    return;
                }
                g.head = Some(newest.seq);
                g.epoch = newest.epoch;
                newest.seq + 1
            }
        };
        for m in recent.iter().rev() {
            if g.ring.len() >= self.ring_cap || m.epoch != g.epoch || m.seq + 1 != front {
                break;
            }
            g.ring.push_front(m.clone());
            front = m.seq;
        }
    }

    /// Whether the ring alone can serve a resume from `after` (no store read needed), for
    /// a caller that has checked `after` against the store's head. A position past this
    /// node's head is covered too: the node is only behind the store (a busy node during a
    /// reconnect storm), and what it has yet to fan out up to `after` arrives live and is
    /// dropped as already seen.
    pub fn ring_covers(&self, slot: &Slot, after: Position) -> bool {
        let g = slot.inner.lock();
        match (g.ring.front(), g.head) {
            (Some(first), Some(_)) => after.epoch == g.epoch && first.seq <= after.seq + 1,
            _ => false,
        }
    }

    /// Where the channel stands on this node; a channel that has seen nothing yet starts at
    /// `store_head` (its later messages are checked against it). Used by resyncs.
    pub fn head_or_start(&self, slot: &Slot, store_head: Position) -> Position {
        let mut g = slot.inner.lock();
        match g.head {
            Some(seq) => Position {
                epoch: g.epoch,
                seq,
            },
            None => {
                g.head = Some(store_head.seq);
                g.epoch = store_head.epoch;
                store_head
            }
        }
    }

    /// Moves the channel past a hole the store could not fill (trimmed, or unreadable):
    /// `msg` is then delivered. Each connection checks its own cursor, so one that would
    /// skip a message closes instead and resumes from the store (or gets a reset).
    pub fn skip_gap(&self, msg: &Message) {
        if let Some(slot) = self.get(&msg.channel) {
            let mut g = slot.inner.lock();
            if g.head.is_some_and(|h| h < msg.seq) {
                g.head = Some(msg.seq - 1);
                g.epoch = msg.epoch;
            }
        }
    }

    /// Subscribers per channel this node holds (channels without any are left out), with
    /// their users when there are at most `list_users` of them.
    pub fn census(&self, list_users: usize) -> Vec<(Arc<str>, crate::presence::Count)> {
        let mut out = Vec::new();
        for slot in self.slots() {
            let g = slot.inner.lock();
            if g.subs.is_empty() {
                continue;
            }
            let users = (g.subs.len() <= list_users).then(|| {
                let mut u: Vec<Arc<str>> = g.subs.iter().filter_map(|(q, _)| q.user()).collect();
                u.sort_unstable();
                u.dedup();
                u
            });
            let count = crate::presence::Count {
                subscribers: g.subs.len() as u64,
                users,
            };
            out.push((slot.channel.clone(), count));
        }
        out
    }

    /// One channel's subscribers here, with their users when at most `list_users`.
    pub fn occupancy(&self, channel: &str, list_users: usize) -> crate::presence::Occupancy {
        let Some(slot) = self.get(channel) else {
            return crate::presence::Occupancy {
                users: Some(Vec::new()),
                ..Default::default()
            };
        };
        let g = slot.inner.lock();
        let users = (g.subs.len() <= list_users).then(|| {
            let mut u: Vec<String> = g
                .subs
                .iter()
                .filter_map(|(q, _)| q.user().map(|s| s.to_string()))
                .collect();
            u.sort_unstable();
            u.dedup();
            u
        });
        crate::presence::Occupancy {
            count: g.subs.len() as u64,
            users,
            nodes: usize::from(!g.subs.is_empty()),
        }
    }

    /// Subscribers and last seq of every channel with subscribers here.
    pub fn census_heads(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for slot in self.slots() {
            let g = slot.inner.lock();
            if !g.subs.is_empty() {
                out.push((
                    slot.channel.to_string(),
                    g.subs.len() as u64,
                    g.head.unwrap_or(0),
                ));
            }
        }
        out
    }

    /// Every channel this node holds.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            out.extend(shard.read().values().cloned());
        }
        out
    }

    pub fn detach(&self, slot: &Slot, queue: &Arc<ConnQueue>) {
        let mut g = slot.inner.lock();
        if let Some(i) = g.subs.iter().position(|(q, _)| Arc::ptr_eq(q, queue)) {
            g.subs.swap_remove(i);
            self.counters.subscriptions.fetch_sub(1, Relaxed);
        }
        if g.subs.is_empty() {
            g.idle_since = Some(Instant::now());
        }
    }

    /// Forgets channels nobody has followed for `idle`, and tells the fabric.
    pub fn sweep_idle(&self, idle: Duration) {
        for shard in &self.shards {
            let mut gone = Vec::new();
            shard.write().retain(|name, slot| {
                let g = slot.inner.lock();
                let remove = g.subs.is_empty()
                    && g.joining == 0
                    && g.idle_since.is_some_and(|t| t.elapsed() >= idle);
                if remove {
                    gone.push(name.clone());
                }
                !remove
            });
            for name in gone {
                self.counters.channels.fetch_sub(1, Relaxed);
                self.fabric.set_interest(&name, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Positions;
    use crate::queue::Transport;
    use bytes::Bytes;
    use herald_fabric::FabricMessage;
    use tokio::sync::Notify;

    fn hub(ring: usize) -> Hub {
        let (fabric, _rx) = herald_fabric::in_process(16);
        Hub::new(
            ring,
            Arc::new(fabric),
            Arc::default(),
            SlowPolicies::default(),
        )
    }

    #[test]
    fn a_slot_a_stream_is_joining_outlives_the_idle_sweep() {
        let h = hub(8);
        drop(h.slot("live:idle"));
        let claim = h.claim("live:idle");
        h.sweep_idle(Duration::ZERO);
        assert!(
            h.get("live:idle")
                .is_some_and(|s| Arc::ptr_eq(&s, claim.slot())),
            "swept while a stream was joining it"
        );
        // The join gave up without attaching: the slot is idle again, and goes.
        drop(claim);
        h.sweep_idle(Duration::ZERO);
        assert!(h.get("live:idle").is_none());
    }

    fn msg(seq: u64) -> Arc<Message> {
        Message::from_fabric(
            &FabricMessage {
                channel: Arc::from("live:h"),
                epoch: 7,
                seq,
                ts_ms: 1,
                event: Arc::from("message"),
                data: Bytes::from_static(b"{}"),
                conflation_key: None,
                trace: None,
                sent_us: 0,
            },
            None,
        )
    }

    fn queue(cap: usize) -> Arc<ConnQueue> {
        Arc::new(ConnQueue::new(
            cap,
            Transport::Hyper(Arc::new(Notify::new())),
            Positions::new(vec![herald_proto::channel_hash("live:h")]),
            Arc::default(),
        ))
    }

    fn at(seq: u64) -> Position {
        Position { epoch: 7, seq }
    }

    #[test]
    fn deliver_drops_duplicates_and_reports_gaps() {
        let h = hub(8);
        let slot = h.slot("live:h");
        let mut flush = Vec::new();
        assert!(matches!(h.deliver(&msg(1), &mut flush), Delivered::Done));
        assert!(matches!(h.deliver(&msg(1), &mut flush), Delivered::Done));
        assert!(matches!(
            h.deliver(&msg(3), &mut flush),
            Delivered::Gap { after: 1 }
        ));
        assert_eq!(h.head(&slot), Some(at(1)));
        // A hole the store cannot fill is stepped over; connections check their cursors.
        h.skip_gap(&msg(3));
        assert!(matches!(h.deliver(&msg(3), &mut flush), Delivered::Done));
        assert_eq!(h.head(&slot), Some(at(3)));
    }

    #[test]
    fn first_subscriber_fixes_the_baseline_for_gap_detection() {
        let h = hub(8);
        let slot = h.slot("live:h");
        let mut flush = Vec::new();
        // Joined at 5 (the store's head) before any message reached this node.
        assert!(matches!(
            h.attach(&slot, &queue(64), 0, at(5)),
            Attached::Live
        ));
        assert!(matches!(
            h.deliver(&msg(7), &mut flush),
            Delivered::Gap { after: 5 }
        ));
        // A brand-new channel: the baseline is epoch 0, seq 0, and seq 1 must come first.
        let fresh = h.slot("live:h2");
        let q = Arc::new(ConnQueue::new(
            64,
            Transport::Hyper(Arc::new(Notify::new())),
            Positions::new(vec![herald_proto::channel_hash("live:h2")]),
            Arc::default(),
        ));
        assert!(matches!(
            h.attach(&fresh, &q, 0, Position::default()),
            Attached::Live
        ));
        let m = Message::from_fabric(
            &FabricMessage {
                channel: Arc::from("live:h2"),
                epoch: 7,
                seq: 2,
                ts_ms: 1,
                event: Arc::from("message"),
                data: Bytes::from_static(b"{}"),
                conflation_key: None,
                trace: None,
                sent_us: 0,
            },
            None,
        );
        assert!(matches!(
            h.deliver(&m, &mut flush),
            Delivered::Gap { after: 0 }
        ));
    }

    #[test]
    fn attach_hands_over_the_ring_or_asks_for_the_store() {
        let h = hub(4);
        let slot = h.slot("live:h");
        let mut flush = Vec::new();
        for s in 1..=6 {
            h.deliver(&msg(s), &mut flush);
        }
        // Ring holds 3..=6: a position at 1 is not covered.
        assert!(matches!(
            h.attach(&slot, &queue(64), 0, at(1)),
            Attached::NeedStore
        ));
        assert!(!h.ring_covers(&slot, at(1)));
        // At 4: messages 5 and 6 are handed over, then live.
        let q = queue(64);
        assert!(h.ring_covers(&slot, at(4)));
        assert!(matches!(h.attach(&slot, &q, 0, at(4)), Attached::Live));
        assert_eq!(q.len(), 2);
        // Past this node's head (it lags the store): nothing to hand over, the rest is live.
        assert!(h.ring_covers(&slot, at(9)));
        let ahead = queue(64);
        assert!(matches!(h.attach(&slot, &ahead, 0, at(9)), Attached::Live));
        assert_eq!(ahead.len(), 0);
        // A hand-over larger than half the queue bound waits for the store instead.
        assert!(matches!(
            h.attach(&slot, &queue(4), 0, at(2)),
            Attached::NeedStore
        ));
    }

    #[test]
    fn backfill_joins_the_ring_only_without_a_hole() {
        let h = hub(6);
        let recent = |seqs: &[u64]| seqs.iter().map(|&s| msg(s)).collect::<VecDeque<_>>();
        // A channel new to the node: the store's newest fixes its head.
        let fresh = h.slot("live:h");
        h.backfill(&fresh, &recent(&[3, 4, 5]), at(5));
        assert_eq!(h.head(&fresh), Some(at(5)));
        assert!(h.ring_covers(&fresh, at(2)));
        // Only messages right below the ring's first go in, up to the ring's size.
        let mut flush = Vec::new();
        h.deliver(&msg(6), &mut flush);
        h.backfill(&fresh, &recent(&[0, 1, 2]), at(2));
        assert!(h.ring_covers(&fresh, at(0)));
        let q = queue(64);
        assert!(matches!(h.attach(&fresh, &q, 0, at(0)), Attached::Live));
        assert_eq!(q.len(), 6, "1..=6, the ring full");
        // A hole below the ring, or a position other than the newest read: nothing.
        let other = h.slot("live:h2");
        h.backfill(&other, &recent(&[3, 4]), at(5));
        assert_eq!(h.head(&other), None);
        h.backfill(&other, &recent(&[4, 5]), at(5));
        h.backfill(&other, &recent(&[1, 2]), at(2));
        assert!(!h.ring_covers(&other, at(2)));
        assert!(h.ring_covers(&other, at(3)));
    }
}
