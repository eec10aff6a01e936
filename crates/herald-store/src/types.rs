use bytes::Bytes;
use std::time::Duration;

/// Where a channel's log stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelMeta {
    /// Identifies this incarnation of the channel's log; cursors from another epoch are reset.
    pub epoch: u64,
    /// Highest seq ever written (0 when none).
    pub last_seq: u64,
    /// Lowest seq still retained; `last_seq + 1` when every message has been trimmed.
    pub first_seq: u64,
}

/// One stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub epoch: u64,
    pub ts_ms: u64,
    pub event: String,
    /// The publisher's JSON, on one line.
    pub data: Bytes,
}

/// One message to append, already sequenced.
#[derive(Clone, Debug)]
pub struct AppendEntry {
    pub channel: String,
    pub epoch: u64,
    pub seq: u64,
    pub ts_ms: u64,
    pub event: String,
    pub data: Bytes,
    /// Idempotency key and the time (ms) its record expires.
    pub idempotency: Option<(String, u64)>,
    /// Seconds the message lives in a store that expires rows by TTL (the namespace's
    /// retention age); 0: until trimmed. Stores that trim by sweeping ignore it.
    pub ttl_secs: u32,
    /// The ownership term (lease fence) under which the writer sequenced this entry; 0 for
    /// a sole writer. Stores shared by several writers record it with the channel's head.
    pub fence: u64,
}

/// A group of entries written with one durable commit. Entries of one channel are in seq order.
#[derive(Clone, Debug, Default)]
pub struct AppendBatch {
    pub entries: Vec<AppendEntry>,
}

/// What an earlier publish with the same idempotency key returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub epoch: u64,
    pub seq: u64,
    pub expires_at_ms: u64,
}

/// A user's last processed position on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub epoch: u64,
    pub seq: u64,
    /// When it was recorded (ms since the Unix epoch).
    pub ts_ms: u64,
}

impl Ack {
    /// Whether this ack is past `other`: a later epoch (epochs are creation times) or a
    /// higher seq in the same one. An older ack never replaces a newer one.
    pub fn is_after(&self, other: &Ack) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }
}

/// How much of a channel's log to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many most recent messages.
    pub max_count: u64,
    /// Drop messages older than this.
    pub max_age: Duration,
}

impl Retention {
    /// The first seq count retention keeps of a log at `meta` (never below what is already
    /// trimmed).
    pub fn first_by_count(&self, meta: &ChannelMeta) -> u64 {
        let by_count = meta
            .last_seq
            .saturating_sub(self.max_count)
            .saturating_add(1);
        meta.first_seq.max(by_count)
    }

    /// The age limit in milliseconds (saturating).
    pub fn max_age_ms(&self) -> u64 {
        u64::try_from(self.max_age.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Result of one trim.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrimOutcome {
    pub removed: u64,
    pub first_seq: u64,
}

/// Requests a store sent to its database since start, by kind (for /metrics and the cluster
/// bench: what each published message costs the database).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CqlCounts {
    /// Plain (unconditional) write requests; a batch counts once.
    pub write_requests: u64,
    /// Statements inside those requests (a batch of n counts n).
    pub write_statements: u64,
    /// Conditional (LWT) requests: each is one consensus (Paxos) round.
    pub lwt_requests: u64,
    /// Statements inside conditional requests.
    pub lwt_statements: u64,
    pub read_requests: u64,
}
