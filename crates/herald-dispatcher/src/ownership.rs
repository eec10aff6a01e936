//! Which channels this dispatcher may write, and under which fence: the sequencer asks
//! before it writes and again before it acknowledges. A dispatcher that is the only writer
//! of its store (the embedded `herald serve`) has no ownership to ask about.

use crate::PublishError;
use async_trait::async_trait;
use std::time::Duration;

/// A lease term: a partition of channels and the fence its current lease carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Term {
    pub partition: u32,
    pub fence: u64,
}

impl Term {
    /// The term of a sole writer (no leases).
    pub const SOLE: Term = Term {
        partition: 0,
        fence: 0,
    };
}

/// Write ownership of channels, held by leases (see the cluster's lease manager).
#[async_trait]
pub trait Ownership: Send + Sync + 'static {
    /// Waits up to `wait` until this process holds the partition of every one of
    /// `channels`; fails (503) if it does not by then.
    async fn ready(&self, channels: &[&str], wait: Duration) -> Result<(), PublishError>;

    /// The term a write of `channel` starts under now; `None` when this process does not
    /// hold its partition (or is giving it up).
    fn term(&self, channel: &str) -> Option<Term>;

    /// A write under a term of `partition` starts; the partition is not given up while
    /// writes are in flight (up to a bound).
    fn enter(&self, partition: u32);

    /// The write that `enter`ed `partition` is answered.
    fn leave(&self, partition: u32);

    /// Whether a write made under `term` may be acknowledged now: the lease is still held,
    /// and will be for longer than anyone else could take it.
    fn still_valid(&self, term: Term) -> bool;

    /// Whether this process has taken its share of partitions once since it started (it is
    /// ready to take publishes without making them wait).
    fn started(&self) -> bool {
        true
    }
}
