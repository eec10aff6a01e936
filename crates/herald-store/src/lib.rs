//! Durable per-channel message log for Herald: the [`Store`] trait every backend implements,
//! the embedded [`FjallStore`], the cluster's [`ScyllaStore`] (feature `scylla`), and the
//! conformance suite every backend must pass.

#![forbid(unsafe_code)]

mod codec;
pub mod conformance;
mod error;
mod fjall_store;
#[cfg(feature = "scylla")]
mod scylla;
mod types;

pub use error::StoreError;
pub use fjall_store::{FjallOptions, FjallStore};
#[cfg(feature = "scylla")]
pub use scylla::{
    CqlCredentials, DispatcherRow, LeaseSnapshot, LeaseTable, PartitionRow, ScyllaOptions,
    ScyllaStore, Take, WriteClock,
};
pub use types::{
    Ack, AppendBatch, AppendEntry, ChannelMeta, CqlCounts, IdempotencyRecord, Retention,
    StoredMessage, TrimOutcome,
};

use async_trait::async_trait;

/// The write-path operations of [`Store`], synchronous: they block the calling thread.
pub trait BlockingStore: Send + Sync {
    fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError>;
    /// Durable on return, as [`Store::append`].
    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError>;
    fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}

/// A durable, per-channel, seq-ordered message log plus the small tables Herald needs.
///
/// Sequencing is the caller's job (the dispatcher assigns `(epoch, seq)`); the store only
/// persists what it is given, durably, before `append` returns.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Epoch, last written seq and first retained seq of a channel; `None` if never written.
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError>;

    /// The writer's view of a channel it is about to write under ownership term `fence`.
    /// A store shared by writers that take turns first seals the channel against every
    /// older term (so nothing a previous owner still had in flight can become visible
    /// later), then reads what actually landed. Fails with [`StoreError::Fenced`] when a
    /// newer term has sealed it. A sole writer's store just reads the head.
    async fn claim(&self, channel: &str, fence: u64) -> Result<Option<ChannelMeta>, StoreError> {
        let _ = fence;
        self.channel_meta(channel).await
    }

    /// Writes all entries (and their idempotency records) durably; returns once they would
    /// survive a crash of this process.
    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError>;

    /// Messages of `channel` with `seq > after`, ascending, at most `limit`.
    async fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// A channel's meta with one page of its messages (`seq > after`, at most `limit`), the
    /// page starting at `first_seq` when `after` is below it. Calling [`Store::channel_meta`]
    /// then [`Store::read_range`] does not promise that: a retention trim between the two
    /// leaves a `first_seq` whose first messages are already gone. This default reads the
    /// meta again after the page and keeps the later first seq (a trim moves it forward and
    /// drops the rows below it, never the reverse), which is enough where a trim becomes
    /// visible all at once; backends that can read at one snapshot override it.
    async fn read_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Option<ChannelMeta>, Vec<StoredMessage>), StoreError> {
        let Some(mut meta) = self.channel_meta(channel).await? else {
            return Ok((None, Vec::new()));
        };
        let mut page = self.read_range(channel, after, limit).await?;
        if let Some(later) = self.channel_meta(channel).await? {
            if later.epoch == meta.epoch && later.first_seq > meta.first_seq {
                if later.first_seq > meta.last_seq + 1 {
                    meta = later;
                } else {
                    meta.first_seq = later.first_seq;
                }
                page.retain(|m| m.seq >= meta.first_seq);
            }
        }
        Ok((Some(meta), page))
    }

    /// Says that these entries (those with an idempotency key count) were stored and
    /// acknowledged, so their records stand on their own, however long their messages live.
    async fn idempotency_landed(&self, entries: &[AppendEntry]) -> Result<(), StoreError>;

    /// Whether [`Store::idempotency_landed`] does anything; false where a record is written
    /// with its message and stands on its own from the start, so callers skip the marks.
    fn marks_landed_records(&self) -> bool {
        true
    }

    /// The record of an earlier publish with this idempotency key, if it has not expired.
    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Applies retention to one channel: drops messages beyond `retention` and advances the
    /// channel's first retained seq.
    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError>;

    /// Applies retention to many channels; returns the messages removed in all. Backends
    /// override this to do the whole sweep in one go.
    async fn trim_many(
        &self,
        channels: Vec<(String, Retention)>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for (c, r) in channels {
            removed += self.trim(&c, r, now_ms).await?.removed;
        }
        Ok(removed)
    }

    /// Every channel that has ever been written (for retention sweeps).
    async fn list_channels(&self) -> Result<Vec<String>, StoreError>;

    /// Records `user`'s last processed position on `channel` unless a later one is already
    /// recorded; returns the ack now on record.
    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError>;

    /// `user`'s last processed position on `channel`, if any.
    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError>;

    /// The acks of `channel`, by user name, starting after `after_user`, at most `limit`.
    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError>;

    /// Removes idempotency records that expired before `now_ms`; returns how many.
    async fn expire_idempotency(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// The same operations, synchronous, for a store that does its work on the calling
    /// thread anyway (embedded). A sequencer with a thread of its own uses it and saves a
    /// thread hop per group commit. `None`: use the async methods.
    fn blocking_access(&self) -> Option<std::sync::Arc<dyn BlockingStore>> {
        None
    }

    /// Makes everything written so far durable (used at shutdown).
    async fn flush(&self) -> Result<(), StoreError>;

    /// Whether messages and idempotency records expire by themselves (a per-row TTL from
    /// [`AppendEntry::ttl_secs`]). The dispatcher then applies only count retention, to the
    /// channels it wrote, and never lists every channel or scans idempotency records.
    fn expires_by_ttl(&self) -> bool {
        false
    }

    /// Requests sent to the database so far, for stores that talk to one.
    fn cql_counts(&self) -> Option<CqlCounts> {
        None
    }
}
