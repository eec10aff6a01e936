//! Writing a group commit: plain QUORUM writes, no consensus per message.
//!
//! Per channel: the idempotency records first (a record whose message never lands is
//! ignored by `idempotency_get`, a message without its record could be stored twice by a
//! retry), then the rows one partition at a time, each mutation carrying the new head in
//! the partition's static columns. A write into a new bucket moves the channel row's bucket
//! pointer afterwards, so the pointer is never more than one bucket behind the head.
//! Channels are written concurrently.

use super::util::{bucket, cql_ttl, to_i64, BUCKET_BITS};
use super::ScyllaStore;
use crate::{AppendBatch, AppendEntry, StoreError};
use scylla::statement::batch::{Batch, BatchType};

/// Payload bytes per batch: Cassandra's default `batch_size_fail_threshold` is 50 KiB.
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Statements per batch.
const MAX_BATCH_ENTRIES: usize = 256;
/// Extra life of an idempotency row past its logical expiry (clock skew between the
/// publisher's `ts_ms` and the coordinator; reads filter on `expires_at` exactly).
const IDEMPOTENCY_GRACE_SECS: u64 = 60;

type RowValues<'a> = (
    &'a str,
    i64,
    i64,
    i64,
    i64,
    &'a str,
    &'a [u8],
    Option<&'a str>,
    i32,
    i64,
);
type HeadRowValues<'a> = (
    &'a str,
    i64,
    i64,
    i64,
    i64,
    &'a str,
    &'a [u8],
    Option<&'a str>,
    i64,
    i64,
    i64,
    i32,
    i64,
);

impl ScyllaStore {
    pub(super) async fn append_batch(&self, batch: AppendBatch) -> Result<(), StoreError> {
        // Group by channel, keeping each channel's seq order.
        let mut channels: Vec<(&str, Vec<&AppendEntry>)> = Vec::new();
        for e in &batch.entries {
            match channels.iter_mut().find(|(c, _)| *c == e.channel) {
                Some((_, v)) => v.push(e),
                None => channels.push((e.channel.as_str(), vec![e])),
            }
        }
        futures_util::future::try_join_all(
            channels
                .into_iter()
                .map(|(c, entries)| self.append_channel(c, entries)),
        )
        .await?;
        Ok(())
    }

    async fn append_channel(
        &self,
        channel: &str,
        entries: Vec<&AppendEntry>,
    ) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let cql = &self.inner.cql;
        let first = entries[0];
        let records = entries.iter().filter_map(|e| {
            let (key, expires) = e.idempotency.as_ref()?;
            Some(self.write_record(channel, key, e, *expires))
        });
        let created = async {
            if first.seq != 1 {
                return Ok(());
            }
            // A new log (or a new epoch of an expired one): the channel row names it.
            let ts = self.inner.clock.next()?;
            cql.write(
                &st.set_epoch,
                (ts, to_i64("epoch", first.epoch)?, 0i64, 0i64, channel),
                "create channel",
            )
            .await
        };
        tokio::try_join!(futures_util::future::try_join_all(records), created)?;

        let mut start = 0;
        while start < entries.len() {
            let b = bucket(entries[start].seq);
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && bucket(entries[end].seq) == b
                && end - start < MAX_BATCH_ENTRIES
                && (end == start || bytes + entries[end].data.len() <= MAX_BATCH_BYTES)
            {
                bytes += entries[end].data.len() + entries[end].event.len();
                end += 1;
            }
            self.write_rows(channel, &entries[start..end]).await?;
            let opens_bucket = entries[start].seq & ((1 << BUCKET_BITS) - 1) == 0;
            if opens_bucket && b > 0 {
                let ts = self.inner.clock.next()?;
                cql.write(
                    &st.set_bucket,
                    (ts, to_i64("bucket", b)?, channel),
                    "move channel bucket",
                )
                .await?;
            }
            start = end;
        }
        Ok(())
    }

    /// One mutation of one partition: the rows, the last carrying the head.
    async fn write_rows(&self, channel: &str, chunk: &[&AppendEntry]) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let cql = &self.inner.cql;
        let ts = self.inner.clock.next()?;
        let Some((last, rest)) = chunk.split_last() else {
            return Ok(());
        };
        let b = to_i64("bucket", bucket(last.seq))?;
        let head: HeadRowValues = (
            channel,
            b,
            to_i64("seq", last.seq)?,
            to_i64("epoch", last.epoch)?,
            to_i64("ts", last.ts_ms)?,
            last.event.as_str(),
            last.data.as_ref(),
            last.idempotency.as_ref().map(|(k, _)| k.as_str()),
            to_i64("seq", last.seq)?,
            to_i64("fence", last.fence)?,
            to_i64("epoch", last.epoch)?,
            self.ttl_of(last),
            ts,
        );
        if rest.is_empty() {
            return cql
                .write(&st.insert_message_with_head, head, "append")
                .await;
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut rows: Vec<RowValues> = Vec::with_capacity(rest.len());
        for e in rest {
            batch.append_statement(st.insert_message.clone());
            rows.push((
                channel,
                b,
                to_i64("seq", e.seq)?,
                to_i64("epoch", e.epoch)?,
                to_i64("ts", e.ts_ms)?,
                e.event.as_str(),
                e.data.as_ref(),
                e.idempotency.as_ref().map(|(k, _)| k.as_str()),
                self.ttl_of(e),
                ts,
            ));
        }
        batch.append_statement(st.insert_message_with_head.clone());
        cql.write_batch(&batch, BatchRows { rows, head }, "append")
            .await
    }

    async fn write_record(
        &self,
        channel: &str,
        key: &str,
        e: &AppendEntry,
        expires: u64,
    ) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let secs = expires.saturating_sub(e.ts_ms).div_ceil(1000) + IDEMPOTENCY_GRACE_SECS;
        let ts = self.inner.clock.next()?;
        self.inner
            .cql
            .write(
                &st.insert_idempotency,
                (
                    channel,
                    key,
                    to_i64("epoch", e.epoch)?,
                    to_i64("seq", e.seq)?,
                    to_i64("expires_at", expires)?,
                    cql_ttl(secs),
                    ts,
                ),
                "write idempotency record",
            )
            .await
    }

    /// TTL of a message row: the entry's own (its namespace's retention age), else the
    /// store's default.
    fn ttl_of(&self, e: &AppendEntry) -> i32 {
        if e.ttl_secs > 0 {
            cql_ttl(u64::from(e.ttl_secs))
        } else {
            self.inner.message_ttl
        }
    }
}

/// The values of a rows batch: plain rows, then the row carrying the head.
struct BatchRows<'a> {
    rows: Vec<RowValues<'a>>,
    head: HeadRowValues<'a>,
}

impl scylla::serialize::batch::BatchValues for BatchRows<'_> {
    type BatchValuesIter<'r>
        = BatchRowsIter<'r>
    where
        Self: 'r;

    fn batch_values_iter(&self) -> Self::BatchValuesIter<'_> {
        BatchRowsIter {
            rows: &self.rows,
            head: &self.head,
            next: 0,
        }
    }
}

struct BatchRowsIter<'r> {
    rows: &'r [RowValues<'r>],
    head: &'r HeadRowValues<'r>,
    next: usize,
}

impl<'r> scylla::serialize::batch::BatchValuesIterator<'r> for BatchRowsIter<'r> {
    fn serialize_next(
        &mut self,
        ctx: &scylla::serialize::row::RowSerializationContext<'_>,
        writer: &mut scylla::serialize::writers::RowWriter,
    ) -> Option<Result<(), scylla::serialize::SerializationError>> {
        use scylla::serialize::row::SerializeRow;
        let i = self.next;
        self.next += 1;
        match i.cmp(&self.rows.len()) {
            std::cmp::Ordering::Less => Some(self.rows[i].serialize(ctx, writer)),
            std::cmp::Ordering::Equal => Some(self.head.serialize(ctx, writer)),
            std::cmp::Ordering::Greater => None,
        }
    }

    fn is_empty_next(&mut self) -> Option<bool> {
        use scylla::serialize::row::SerializeRow;
        let i = self.next;
        self.next += 1;
        match i.cmp(&self.rows.len()) {
            std::cmp::Ordering::Less => Some(self.rows[i].is_empty()),
            std::cmp::Ordering::Equal => Some(self.head.is_empty()),
            std::cmp::Ordering::Greater => None,
        }
    }

    fn skip_next(&mut self) -> Option<()> {
        let i = self.next;
        self.next += 1;
        (i <= self.rows.len()).then_some(())
    }
}
