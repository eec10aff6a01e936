//! A new owner taking a channel over: seal, then read what landed, then say where it
//! resumes.
//!
//! The seal (the channel row's `fence`, written before the read) is what makes the read
//! final: from the moment it lands, readers ignore heads of earlier owners, so a write an
//! earlier owner still had in flight, landing after this read, is never seen by anyone;
//! this owner's later writes carry higher timestamps and replace it. Without the seal such
//! a write could be read between this owner's read and its first write, then replaced.

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
        let mut state = self.head_state(channel).await?;
        let sealed = state.row.map_or(0, |r| r.fence);
        if sealed > fence {
            return Err(fenced(channel, sealed, fence));
        }
        if sealed < fence {
            self.seal(channel, fence).await?;
            state = self.head_state(channel).await?;
            let sealed = state.row.map_or(0, |r| r.fence);
            if sealed != fence {
                return Err(fenced(channel, sealed, fence));
            }
        }
        self.settle(channel, fence, &state).await
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
