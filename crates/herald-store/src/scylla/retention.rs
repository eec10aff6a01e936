//! Retention without deletes: rows expire by TTL (age, physically, whole SSTables at a time
//! under TWCS), and count retention is a watermark (`channels.low`) readers start from. No
//! tombstone is ever written on the message log.

use super::reads::PAGE_ROWS;
use super::util::{bucket, eng, to_i64, to_u64, BUCKET_BITS};
use super::ScyllaStore;
use crate::{Retention, StoreError, TrimOutcome};
use futures_util::TryStreamExt;

/// Ages at or above this are "keep forever": no rows are read to apply them.
const FOREVER_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

impl ScyllaStore {
    pub(super) async fn trim_channel(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        let Some(meta) = self.reader_meta(channel).await? else {
            return Ok(TrimOutcome::default());
        };
        let mut new_first = retention.first_by_count(&meta);
        let age_ms = retention.max_age_ms();
        if new_first <= meta.last_seq && age_ms < FOREVER_MS {
            let cutoff = now_ms.saturating_sub(age_ms);
            new_first = self
                .first_young(channel, new_first, meta.last_seq, cutoff)
                .await?;
        }
        if new_first <= meta.first_seq {
            return Ok(TrimOutcome {
                removed: 0,
                first_seq: meta.first_seq,
            });
        }
        let st = self.statements().await?;
        let ts = self.inner.clock.next()?;
        self.inner
            .cql
            .write(
                &st.set_low,
                (ts, to_i64("seq", new_first)?, channel),
                "write low",
            )
            .await?;
        Ok(TrimOutcome {
            removed: new_first - meta.first_seq,
            first_seq: new_first,
        })
    }

    /// The first seq at or after `from` whose message is younger than `cutoff_ms`
    /// (`to + 1` when all are older).
    async fn first_young(
        &self,
        channel: &str,
        from: u64,
        to: u64,
        cutoff_ms: u64,
    ) -> Result<u64, StoreError> {
        let st = self.statements().await?;
        let mut new_first = from;
        let mut cursor = from;
        while cursor <= to {
            let b = bucket(cursor);
            let rows = self
                .inner
                .cql
                .read(
                    &st.read_timestamps,
                    (
                        channel,
                        to_i64("bucket", b)?,
                        to_i64("seq", cursor)?,
                        to_i64("seq", to)?,
                        PAGE_ROWS,
                    ),
                    "read timestamps",
                )
                .await?;
            let mut last = None;
            for r in rows.rows::<(i64, i64)>().map_err(eng("read timestamps"))? {
                let (seq, ts) = r.map_err(eng("read timestamps"))?;
                let (seq, ts) = (to_u64("message", seq)?, to_u64("message", ts)?);
                if ts >= cutoff_ms {
                    return Ok(new_first);
                }
                new_first = seq + 1;
                last = Some(seq);
            }
            cursor = match last {
                Some(seq) => seq + 1,
                // Bucket exhausted (or its rows expired): go on with the next one.
                None => (b + 1) << BUCKET_BITS,
            };
        }
        Ok(to + 1)
    }

    pub(super) async fn all_channels(&self) -> Result<Vec<String>, StoreError> {
        let st = self.statements().await?;
        let mut stream = self
            .inner
            .cql
            .read_pages(&st.list_channels, (), "list channels")
            .await?
            .rows_stream::<(String,)>()
            .map_err(eng("list channels"))?;
        let mut out = Vec::new();
        while let Some((c,)) = stream.try_next().await.map_err(eng("list channels"))? {
            out.push(c);
        }
        Ok(out)
    }
}
