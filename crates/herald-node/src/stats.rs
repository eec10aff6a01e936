use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Counters of the subscribe side, for /metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub connections: i64,
    pub subscriptions: i64,
    pub channels: i64,
    pub connections_total: u64,
    pub rejected_connections: u64,
    pub deliveries: u64,
    pub ephemeral_dropped: u64,
    pub ephemeral_conflated: u64,
    /// Ephemeral messages dropped before fan-out because the node was behind.
    pub ephemeral_shed: u64,
    /// Ephemeral messages that replaced the oldest queued one (`drop_oldest`, `conflate`).
    pub ephemeral_evicted: u64,
    /// Connections closed for a full queue by an ephemeral message (`disconnect`).
    pub ephemeral_disconnects: u64,
    /// Connections closed for a full queue by a reliable message (they resume).
    pub slow_disconnects: u64,
    pub stalled_disconnects: u64,
    pub gap_disconnects: u64,
    pub replays_ring: u64,
    pub replays_store: u64,
    pub replayed_messages: u64,
    pub resets: u64,
    pub gap_repairs: u64,
    /// Holes stepped over without a store read (too many repairs at once, or a channel too
    /// far behind while its repair ran): connections that would skip a message resume.
    pub gap_skips: u64,
    /// Channels caught up with the store after the fabric reported a possible loss.
    pub resync_repairs: u64,
    /// Streams asked to reconnect elsewhere by a drain.
    pub drain_reconnects: u64,
    /// Streams asked to reconnect at their maximum lifetime.
    pub lifetime_reconnects: u64,
    /// Presence reports this node sent to the cluster (at most one a tick).
    pub presence_reports: u64,
    /// `herald:occupancy`, `herald:join` and `herald:leave` events fanned out.
    pub presence_events: u64,
    /// Store reads answered by joining an identical read already in flight, or (a resume's
    /// channel meta) by one completed moments ago.
    pub shared_reads: u64,
    /// Channel meta reads that went to the store.
    pub store_meta_reads: u64,
    /// Message range reads (replays, repairs, resyncs) that went to the store.
    pub store_range_reads: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub connections: AtomicI64,
    pub subscriptions: AtomicI64,
    pub channels: AtomicI64,
    pub connections_total: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub deliveries: AtomicU64,
    pub ephemeral_dropped: AtomicU64,
    pub ephemeral_conflated: AtomicU64,
    pub ephemeral_shed: AtomicU64,
    pub ephemeral_evicted: AtomicU64,
    pub ephemeral_disconnects: AtomicU64,
    pub slow_disconnects: AtomicU64,
    pub stalled_disconnects: AtomicU64,
    pub gap_disconnects: AtomicU64,
    pub replays_ring: AtomicU64,
    pub replays_store: AtomicU64,
    pub replayed_messages: AtomicU64,
    pub resets: AtomicU64,
    pub gap_repairs: AtomicU64,
    pub gap_skips: AtomicU64,
    pub resync_repairs: AtomicU64,
    pub drain_reconnects: AtomicU64,
    pub lifetime_reconnects: AtomicU64,
    pub presence_reports: AtomicU64,
    pub presence_events: AtomicU64,
}

impl Counters {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> NodeStats {
        NodeStats {
            connections: self.connections.load(Relaxed),
            subscriptions: self.subscriptions.load(Relaxed),
            channels: self.channels.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            rejected_connections: self.rejected_connections.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            ephemeral_dropped: self.ephemeral_dropped.load(Relaxed),
            ephemeral_conflated: self.ephemeral_conflated.load(Relaxed),
            ephemeral_shed: self.ephemeral_shed.load(Relaxed),
            ephemeral_evicted: self.ephemeral_evicted.load(Relaxed),
            ephemeral_disconnects: self.ephemeral_disconnects.load(Relaxed),
            slow_disconnects: self.slow_disconnects.load(Relaxed),
            stalled_disconnects: self.stalled_disconnects.load(Relaxed),
            gap_disconnects: self.gap_disconnects.load(Relaxed),
            replays_ring: self.replays_ring.load(Relaxed),
            replays_store: self.replays_store.load(Relaxed),
            replayed_messages: self.replayed_messages.load(Relaxed),
            resets: self.resets.load(Relaxed),
            gap_repairs: self.gap_repairs.load(Relaxed),
            gap_skips: self.gap_skips.load(Relaxed),
            resync_repairs: self.resync_repairs.load(Relaxed),
            drain_reconnects: self.drain_reconnects.load(Relaxed),
            lifetime_reconnects: self.lifetime_reconnects.load(Relaxed),
            presence_reports: self.presence_reports.load(Relaxed),
            presence_events: self.presence_events.load(Relaxed),
            shared_reads: 0,
            store_meta_reads: 0,
            store_range_reads: 0,
        }
    }
}
