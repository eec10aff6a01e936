//! Where a channel's log stands, and reading it.
//!
//! A channel's head is the static head of the `messages` partition it was last written in:
//! `(head_seq, head_fence, head_epoch)`, written in the same mutation as the rows, so a head
//! never names rows that did not land. The `channels` row says which bucket that is (or the
//! one before: it is moved after the rows of a new bucket land) and the fence of the newest
//! owner that sealed the channel. Among the heads of those two buckets the one written
//! under the highest fence counts (a late write of an earlier owner may have left a stale
//! head in a bucket the new owner has not written yet).
//!
//! A head whose fence is below the channel's sealed fence belongs to an earlier owner: the
//! new owner sealed the channel and has not yet written where it resumed. Readers wait for
//! that (milliseconds) instead of trusting the old head, which may include writes the old
//! owner left in flight and the new owner will overwrite.

use super::clock::now_us;
use super::util::{bucket, eng, to_i64, to_u64, BUCKET_BITS};
use super::ScyllaStore;
use crate::{ChannelMeta, StoreError, StoredMessage};
use bytes::Bytes;
use futures_util::TryStreamExt;
use std::time::Duration;

/// Rows fetched per query when walking a channel's log.
pub(super) const PAGE_ROWS: i32 = 1_000;
/// How long a reader waits for a new owner to finish taking a channel over.
const TRANSITION_WAIT: Duration = Duration::from_secs(3);
/// A seal older than this whose owner never wrote (it died between sealing and writing)
/// stops blocking readers: they, and the next owner, take the newest head there is.
const STALE_SEAL_US: i64 = 10 * 60 * 1_000_000;

/// The `channels` row.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ChannelRow {
    pub epoch: Option<u64>,
    pub fence: u64,
    /// When the fence was written (its write timestamp, µs).
    pub sealed_at: i64,
    pub bucket: u64,
    pub low: u64,
}

/// The static head of one `messages` partition.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeadCell {
    pub seq: u64,
    pub fence: u64,
    pub epoch: u64,
    /// Seconds left before it expires (`None`: it does not).
    pub ttl: Option<i32>,
}

/// What the store holds about a channel's head.
#[derive(Clone, Debug, Default)]
pub(super) struct HeadState {
    pub row: Option<ChannelRow>,
    pub heads: Vec<HeadCell>,
}

impl HeadState {
    /// The head written under the highest fence (then the highest seq) among those of
    /// `epoch`.
    pub fn best(&self, epoch: u64) -> Option<HeadCell> {
        self.heads
            .iter()
            .filter(|h| h.epoch == epoch)
            .max_by_key(|h| (h.fence, h.seq))
            .copied()
    }

    /// What a reader may rely on; `Err(InTransition)` while a new owner is taking over.
    fn reader_view(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        let Some(row) = self.row else { return Ok(None) };
        let Some(epoch) = row.epoch else {
            return Ok(None);
        };
        let last_seq = match self.best(epoch) {
            Some(h) if h.fence < row.fence && now_us() - row.sealed_at < STALE_SEAL_US => {
                return Err(StoreError::InTransition(channel.to_owned()))
            }
            Some(h) => h.seq,
            // Never written, or everything expired (the head expires with the last rows).
            None => 0,
        };
        Ok(Some(ChannelMeta {
            epoch,
            last_seq,
            first_seq: row.low.max(1).min(last_seq + 1),
        }))
    }
}

impl ScyllaStore {
    pub(super) async fn channel_row(
        &self,
        channel: &str,
    ) -> Result<Option<ChannelRow>, StoreError> {
        let st = self.statements().await?;
        let rows = self
            .inner
            .cql
            .read(&st.get_channel, (channel,), "read channel")
            .await?;
        let row = rows
            .maybe_first_row::<(
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i64>,
            )>()
            .map_err(eng("read channel"))?;
        let Some((epoch, fence, sealed_at, b, low)) = row else {
            return Ok(None);
        };
        let opt = |what, v: Option<i64>| v.map(|v| to_u64(what, v)).transpose();
        Ok(Some(ChannelRow {
            epoch: opt("channel epoch", epoch)?,
            fence: opt("channel fence", fence)?.unwrap_or(0),
            sealed_at: sealed_at.unwrap_or(0),
            bucket: opt("channel bucket", b)?.unwrap_or(0),
            low: opt("channel low", low)?.unwrap_or(0),
        }))
    }

    async fn head_cell(&self, channel: &str, b: u64) -> Result<Option<HeadCell>, StoreError> {
        let st = self.statements().await?;
        let rows = self
            .inner
            .cql
            .read(&st.get_head, (channel, to_i64("bucket", b)?), "read head")
            .await?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<i64>, Option<i64>, Option<i32>)>()
            .map_err(eng("read head"))?;
        match row {
            Some((Some(seq), Some(fence), Some(epoch), ttl)) => Ok(Some(HeadCell {
                seq: to_u64("head", seq)?,
                fence: to_u64("head", fence)?,
                epoch: to_u64("head", epoch)?,
                ttl,
            })),
            _ => Ok(None),
        }
    }

    pub(super) async fn heads_from(
        &self,
        channel: &str,
        b: u64,
    ) -> Result<Vec<HeadCell>, StoreError> {
        let (a, n) = tokio::try_join!(self.head_cell(channel, b), self.head_cell(channel, b + 1))?;
        Ok(a.into_iter().chain(n).collect())
    }

    /// The channel row and the heads of its bucket and the next. Most channels live in
    /// bucket 0, so those heads are read alongside the row; others take a second round.
    pub(super) async fn head_state(&self, channel: &str) -> Result<HeadState, StoreError> {
        let (row, heads) =
            tokio::try_join!(self.channel_row(channel), self.heads_from(channel, 0))?;
        let heads = match row {
            Some(r) if r.bucket != 0 => self.heads_from(channel, r.bucket).await?,
            _ => heads,
        };
        Ok(HeadState { row, heads })
    }

    /// What readers need of the heads, in fewer reads than an owner's claim: the next
    /// bucket's head counts only once the head bucket is full (a writer enters bucket b+1
    /// after seq (b+1)·65536 − 1) or has no head left (expired); any other head there is a
    /// stale one of an earlier owner, which readers ignore anyway.
    async fn reader_state(&self, channel: &str) -> Result<HeadState, StoreError> {
        let (row, first) = tokio::try_join!(self.channel_row(channel), self.head_cell(channel, 0))?;
        let Some(r) = row else {
            return Ok(HeadState::default());
        };
        let b = r.bucket;
        let mut heads: Vec<HeadCell> = if b == 0 {
            first.into_iter().collect()
        } else {
            self.head_cell(channel, b).await?.into_iter().collect()
        };
        let last_of_bucket = ((b + 1) << BUCKET_BITS) - 1;
        let full_or_gone = heads
            .iter()
            .max_by_key(|h| (h.fence, h.seq))
            .is_none_or(|h| h.seq >= last_of_bucket);
        if full_or_gone {
            heads.extend(self.head_cell(channel, b + 1).await?);
        }
        Ok(HeadState { row, heads })
    }

    /// The readers' view, waiting out an owner change in progress.
    pub(super) async fn reader_meta(
        &self,
        channel: &str,
    ) -> Result<Option<ChannelMeta>, StoreError> {
        let deadline = tokio::time::Instant::now() + TRANSITION_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.reader_state(channel).await?.reader_view(channel) {
                Err(StoreError::InTransition(c)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(channel = %c, "channel is changing owner; waiting");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Messages with `from <= seq <= to`, ascending, at most `limit`.
    pub(super) async fn read_messages(
        &self,
        channel: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let st = self.statements().await?;
        let mut out = Vec::with_capacity(limit.min(1024));
        let to_i = to_i64("seq", to)?;
        for b in bucket(from)..=bucket(to) {
            let remaining = limit - out.len();
            if remaining == 0 {
                break;
            }
            let lo = from.max(b << BUCKET_BITS);
            let n = i32::try_from(remaining).unwrap_or(i32::MAX);
            let mut pager = self
                .inner
                .cql
                .read_pages(
                    &st.read_messages,
                    (channel, to_i64("bucket", b)?, to_i64("seq", lo)?, to_i, n),
                    "read messages",
                )
                .await?
                .rows_stream::<(i64, i64, i64, String, Vec<u8>)>()
                .map_err(eng("read messages"))?;
            while let Some((seq, epoch, ts, event, data)) =
                pager.try_next().await.map_err(eng("read messages"))?
            {
                out.push(StoredMessage {
                    seq: to_u64("message", seq)?,
                    epoch: to_u64("message", epoch)?,
                    ts_ms: to_u64("message", ts)?,
                    event,
                    data: Bytes::from(data),
                });
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Whether the message at `seq` exists, and the idempotency key it carries.
    pub(super) async fn message_key_at(
        &self,
        channel: &str,
        seq: u64,
    ) -> Result<Option<Option<String>>, StoreError> {
        let st = self.statements().await?;
        let rows = self
            .inner
            .cql
            .read(
                &st.message_key,
                (channel, to_i64("bucket", bucket(seq))?, to_i64("seq", seq)?),
                "read message key",
            )
            .await?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<String>)>()
            .map_err(eng("read message key"))?;
        Ok(match row {
            Some((Some(_), key)) => Some(key),
            _ => None,
        })
    }
}
