//! A new owner taking a channel over: seal, then read what landed, then say where it
//! resumes.
//!
//! The seal (the channel row's `fence`, written before the read) is what makes the read
//! final: from the moment it lands, readers ignore heads of earlier owners, so a write an
//! earlier owner still had in flight, landing after this read, is never seen by anyone;
//! this owner's later writes carry higher timestamps and replace it. Without the seal such
//! a write could be read between this owner's read and its first write, then replaced.

use super::clock::now_us;
use super::reads::HeadState;
use super::util::{bucket, to_i64};
use super::ScyllaStore;
use crate::{ChannelMeta, StoreError};

impl ScyllaStore {
    pub(super) async fn claim_channel(
        &self,
        channel: &str,
        fence: u64,
    ) -> Result<Option<ChannelMeta>, StoreError> {
        let Some(row) = self.channel_row(channel).await? else {
            return self.create(channel, fence).await.map(Some);
        };
        if row.fence > fence {
            return Err(fenced(channel, row.fence, fence));
        }
        let state = if row.fence == fence {
            // Sealed under this fence already (this owner's cache was dropped): what landed
            // since is this owner's own, or stale writes readers ignore.
            HeadState {
                heads: self.heads_from(channel, row.bucket).await?,
                row: Some(row),
            }
        } else {
            self.seal(channel, fence).await?;
            let state = self.head_state(channel).await?;
            let sealed = state.row.map_or(0, |r| r.fence);
            if sealed != fence {
                return Err(fenced(channel, sealed, fence));
            }
            state
        };
        match self.settle(channel, fence, &state).await? {
            Some(meta) => Ok(Some(meta)),
            // Nothing under the channel's epoch: never written, or all of it expired.
            None => self.create(channel, fence).await.map(Some),
        }
    }

    /// A new log (or a new epoch of one whose messages all expired), sealed under `fence`
    /// in the same write. The epoch is its creation time, so a log recreated after data
    /// loss or expiry gets a different one and old cursors are reset instead of misread.
    /// Whatever an older owner may still land under another epoch is ignored by everyone.
    async fn create(&self, channel: &str, fence: u64) -> Result<ChannelMeta, StoreError> {
        let st = self.statements().await?;
        let epoch = u64::try_from(now_us() / 1000).unwrap_or(1).max(1);
        let ts = self.inner.clock.next()?;
        self.inner
            .cql
            .write(
                &st.create_channel,
                (
                    ts,
                    to_i64("epoch", epoch)?,
                    to_i64("fence", fence)?,
                    channel,
                ),
                "create channel",
            )
            .await?;
        Ok(ChannelMeta {
            epoch,
            last_seq: 0,
            first_seq: 1,
        })
    }

    async fn seal(&self, channel: &str, fence: u64) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let ts = self.inner.clock.next()?;
        self.inner
            .cql
            .write(
                &st.seal_channel,
                (ts, to_i64("fence", fence)?, channel),
                "seal channel",
            )
            .await
    }

    /// From a post-seal read: where the log stands, repairing what an interrupted writer
    /// left behind (a channel row without its epoch, a bucket pointer one behind), and
    /// recording this owner's fence with the head it adopts so readers stop waiting.
    async fn settle(
        &self,
        channel: &str,
        fence: u64,
        state: &HeadState,
    ) -> Result<Option<ChannelMeta>, StoreError> {
        let row = state.row.unwrap_or_default();
        let (epoch, head) = match row.epoch {
            Some(e) => (e, state.best(e)),
            // Our own first write landed but its channel row did not: adopt it.
            None => match state.heads.iter().find(|h| h.fence == fence) {
                Some(h) => (h.epoch, Some(*h)),
                None => return Ok(None),
            },
        };
        // No head under the epoch: nothing was written, or all of it expired. Starting a
        // new epoch makes old cursors reset instead of resuming into a log that is gone.
        let Some(head) = head else { return Ok(None) };
        let st = self.statements().await?;
        let cql = &self.inner.cql;
        let head_bucket = bucket(head.seq);
        if row.epoch.is_none() {
            let ts = self.inner.clock.next()?;
            cql.write(
                &st.set_epoch,
                (
                    ts,
                    to_i64("epoch", epoch)?,
                    to_i64("bucket", head_bucket)?,
                    0i64,
                    channel,
                ),
                "repair channel",
            )
            .await?;
        } else if head_bucket > row.bucket {
            let ts = self.inner.clock.next()?;
            cql.write(
                &st.set_bucket,
                (ts, to_i64("bucket", head_bucket)?, channel),
                "repair channel bucket",
            )
            .await?;
        }
        if head.fence != fence {
            let ts = self.inner.clock.next()?;
            cql.write(
                &st.set_head,
                (
                    head.ttl.unwrap_or(0),
                    ts,
                    to_i64("seq", head.seq)?,
                    to_i64("fence", fence)?,
                    to_i64("epoch", epoch)?,
                    channel,
                    to_i64("bucket", head_bucket)?,
                ),
                "resolve head",
            )
            .await?;
        }
        Ok(Some(ChannelMeta {
            epoch,
            last_seq: head.seq,
            first_seq: row.low.max(1).min(head.seq + 1),
        }))
    }
}

fn fenced(channel: &str, sealed: u64, fence: u64) -> StoreError {
    StoreError::Fenced(format!(
        "{channel} is sealed by fence {sealed}, newer than this writer's {fence}"
    ))
}
