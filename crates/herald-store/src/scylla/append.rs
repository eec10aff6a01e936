//! Writing a group commit: plain QUORUM writes, no consensus per message.
//!
//! 1. The idempotency records first (a record whose message never lands is ignored by
//!    `idempotency_get`; a message without its record could be stored twice by a retry).
//! 2. The rows, one mutation per `(channel, bucket)` partition whose last row carries the new
//!    head in the partition's static columns. Partitions that live on the same replicas go
//!    in one unlogged batch: the database's cost is mostly per request, so a group commit of
//!    many channels costs a few requests, not one per channel. Each partition's rows stay
//!    whole within one batch, so each partition's write is still atomic on its own.
//! 3. A channel whose rows cross into a new bucket writes that bucket after the first one
//!    returned, then moves the channel row's bucket pointer, so the pointer is never more
//!    than one bucket behind the head.
//!
//! Once the writer has acknowledged them, the records are marked `landed` (`mark_landed`): a
//! retry within the window is then known for a duplicate even after its message row expired
//! (a namespace may keep messages for seconds and dedupe for a day).

use super::util::{bucket, cql_ttl, to_i64, BUCKET_BITS};
use super::ScyllaStore;
use crate::{AppendBatch, AppendEntry, StoreError};
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::BTreeMap;

/// Estimated mutation bytes per batch (see `Values::bytes`): Cassandra refuses batches over
/// `batch_size_fail_threshold` (50 KiB by default) and warns over 5 KiB.
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
type RecordValues<'a> = (&'a str, &'a str, i64, i64, i64, i32, i64);
type LandedValues<'a> = (i32, i64, &'a str, &'a str);

/// The values of one statement of a batch.
enum Values<'a> {
    Row(RowValues<'a>),
    Head(HeadRowValues<'a>),
    Record(RecordValues<'a>),
    Landed(LandedValues<'a>),
}

impl SerializeRow for Values<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            Values::Row(v) => v.serialize(ctx, writer),
            Values::Head(v) => v.serialize(ctx, writer),
            Values::Record(v) => v.serialize(ctx, writer),
            Values::Landed(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Statements bound for one request: a single statement, or an unlogged batch.
#[derive(Default)]
struct Request<'a> {
    statements: Vec<(PreparedStatement, Values<'a>)>,
    bytes: usize,
}

impl ScyllaStore {
    pub(super) async fn append_batch(&self, batch: AppendBatch) -> Result<(), StoreError> {
        // Each channel's entries in seq order, cut where a partition (bucket) ends.
        let mut channels: Vec<(&str, Vec<&AppendEntry>)> = Vec::new();
        for e in &batch.entries {
            match channels.iter_mut().find(|(c, _)| *c == e.channel) {
                Some((_, v)) => v.push(e),
                None => channels.push((e.channel.as_str(), vec![e])),
            }
        }
        let st = self.statements().await?;

        // 1. Idempotency records (and the row of a new log written without a claim).
        let mut records = Vec::new();
        for e in &batch.entries {
            if let Some((key, expires)) = &e.idempotency {
                let secs = record_secs(e.ts_ms, *expires);
                let values = (
                    e.channel.as_str(),
                    key.as_str(),
                    to_i64("epoch", e.epoch)?,
                    to_i64("seq", e.seq)?,
                    to_i64("expires_at", *expires)?,
                    cql_ttl(secs),
                    self.inner.clock.next()?,
                );
                records.push(Part {
                    statements: vec![(st.insert_idempotency.clone(), Values::Record(values))],
                    table: "idempotency",
                    key: PartitionKey::Record(e.channel.as_str(), key.as_str()),
                });
            }
        }
        let created = channels.iter().filter_map(|(c, entries)| {
            // A writer that claims channels created the row with the epoch already; a sole
            // writer (fence 0, no claims) names a new log's epoch with its first message.
            let first = entries[0];
            (first.seq == 1 && first.fence == 0).then_some((*c, first.epoch))
        });
        let creations = futures_util::future::try_join_all(created.map(|(c, epoch)| async move {
            let ts = self.inner.clock.next()?;
            self.inner
                .cql
                .write(
                    &st.set_epoch,
                    (ts, to_i64("epoch", epoch)?, 0i64, 0i64, c),
                    "create channel",
                )
                .await
        }));
        tokio::try_join!(self.send_all(self.group_by_replicas(records)), creations)?;

        // 2. The first piece of every channel (one partition's rows). A channel's further
        //    pieces wait for it: a head must never land before the rows below it.
        let mut rest: Vec<(&str, &[&AppendEntry])> = Vec::new();
        let mut firsts = Vec::new();
        for (c, entries) in &channels {
            let first = first_piece(entries);
            firsts.push(Part {
                statements: self.rows(c, &entries[..first])?,
                table: "messages",
                key: PartitionKey::Message(c, bucket(entries[0].seq)),
            });
            if first < entries.len() {
                rest.push((c, &entries[first..]));
            }
        }
        self.send_all(self.group_by_replicas(firsts)).await?;
        let opened = channels.iter().filter_map(|(c, entries)| {
            let seq = entries[0].seq;
            (seq & ((1 << BUCKET_BITS) - 1) == 0 && bucket(seq) > 0).then_some((*c, bucket(seq)))
        });
        futures_util::future::try_join_all(opened.map(|(c, b)| self.move_bucket(c, b))).await?;

        // 3. Channels crossing into a new bucket: one partition after the other.
        futures_util::future::try_join_all(
            rest.into_iter()
                .map(|(c, entries)| self.write_later_buckets(c, entries)),
        )
        .await?;

        Ok(())
    }

    /// Marks the records of acknowledged messages `landed` (only acknowledged ones: a late
    /// write of an owner that lost its lease may have been overwritten, and its record must
    /// then keep depending on the row).
    pub(super) async fn mark_landed(&self, entries: &[AppendEntry]) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let mut marks = Vec::new();
        for e in entries {
            if let Some((key, expires)) = &e.idempotency {
                let values = (
                    cql_ttl(record_secs(e.ts_ms, *expires)),
                    self.inner.clock.next()?,
                    e.channel.as_str(),
                    key.as_str(),
                );
                marks.push(Part {
                    statements: vec![(st.mark_landed.clone(), Values::Landed(values))],
                    table: "idempotency",
                    key: PartitionKey::Record(e.channel.as_str(), key.as_str()),
                });
            }
        }
        self.send_all(self.group_by_replicas(marks)).await
    }

    async fn write_later_buckets(
        &self,
        channel: &str,
        entries: &[&AppendEntry],
    ) -> Result<(), StoreError> {
        let mut start = 0;
        while start < entries.len() {
            let end = start + first_piece(&entries[start..]);
            let piece = &entries[start..end];
            self.send(Request::with(self.rows(channel, piece)?)).await?;
            if piece[0].seq & ((1 << BUCKET_BITS) - 1) == 0 {
                self.move_bucket(channel, bucket(piece[0].seq)).await?;
            }
            start = end;
        }
        Ok(())
    }

    /// Points the channel row at bucket `b`, once rows there landed.
    async fn move_bucket(&self, channel: &str, b: u64) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let ts = self.inner.clock.next()?;
        self.inner
            .cql
            .write(
                &st.set_bucket,
                (ts, to_i64("bucket", b)?, channel),
                "move channel bucket",
            )
            .await
    }

    /// The statements writing one partition's rows, the last carrying the head.
    fn rows<'a>(
        &self,
        channel: &'a str,
        chunk: &[&'a AppendEntry],
    ) -> Result<Vec<(PreparedStatement, Values<'a>)>, StoreError> {
        let st = self
            .inner
            .statements
            .get()
            .ok_or_else(|| StoreError::Engine("statements not prepared".into()))?;
        let ts = self.inner.clock.next()?;
        let mut out = Vec::with_capacity(chunk.len());
        let Some((last, before)) = chunk.split_last() else {
            return Ok(out);
        };
        let b = to_i64("bucket", bucket(last.seq))?;
        let row = |e: &'a AppendEntry| -> Result<RowValues<'a>, StoreError> {
            Ok((
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
            ))
        };
        for e in before {
            out.push((st.insert_message.clone(), Values::Row(row(e)?)));
        }
        let (c, b, seq, epoch, ts_ms, event, data, key, ttl, ts) = row(last)?;
        let head = (seq, to_i64("fence", last.fence)?, epoch);
        out.push((
            st.insert_message_with_head.clone(),
            Values::Head((
                c, b, seq, epoch, ts_ms, event, data, key, head.0, head.1, head.2, ttl, ts,
            )),
        ));
        Ok(out)
    }

    /// Packs whole partitions' statements into requests, one series per replica set (the
    /// nodes holding the partition), each request within the batch limits.
    fn group_by_replicas<'a>(&self, parts: Vec<Part<'a>>) -> Vec<Request<'a>> {
        let state = self.inner.cql.session.get_cluster_state();
        let ks = self.inner.keyspace.as_str();
        let mut by_replicas: BTreeMap<Vec<u128>, Vec<Request<'a>>> = BTreeMap::new();
        for part in parts {
            let endpoints = match part.key {
                PartitionKey::Message(c, b) => {
                    state.get_endpoints(ks, part.table, &(c, i64::try_from(b).unwrap_or(i64::MAX)))
                }
                PartitionKey::Record(c, key) => state.get_endpoints(ks, part.table, &(c, key)),
            };
            // Unknown replicas (metadata not loaded yet) share one series.
            let mut replicas: Vec<u128> = endpoints
                .map(|v| v.iter().map(|(n, _)| n.host_id.as_u128()).collect())
                .unwrap_or_default();
            replicas.sort_unstable();
            let requests = by_replicas.entry(replicas).or_default();
            let bytes: usize = part.statements.iter().map(|(_, v)| v.bytes()).sum();
            let fits = requests.last().is_some_and(|r| {
                r.bytes + bytes <= MAX_BATCH_BYTES
                    && r.statements.len() + part.statements.len() <= MAX_BATCH_ENTRIES
            });
            if !fits {
                requests.push(Request::default());
            }
            if let Some(r) = requests.last_mut() {
                r.bytes += bytes;
                r.statements.extend(part.statements);
            }
        }
        by_replicas.into_values().flatten().collect()
    }

    async fn send_all(&self, requests: Vec<Request<'_>>) -> Result<(), StoreError> {
        futures_util::future::try_join_all(requests.into_iter().map(|r| self.send(r))).await?;
        Ok(())
    }

    async fn send(&self, request: Request<'_>) -> Result<(), StoreError> {
        let mut statements = request.statements;
        if statements.len() == 1 {
            if let Some((st, values)) = statements.pop() {
                return self.inner.cql.write(&st, values, "append").await;
            }
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values = Vec::with_capacity(statements.len());
        for (st, v) in statements {
            batch.append_statement(st);
            values.push(v);
        }
        self.inner.cql.write_batch(&batch, values, "append").await
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

/// Seconds an idempotency record (and its mark) lives: its window, and a grace period.
fn record_secs(ts_ms: u64, expires_ms: u64) -> u64 {
    expires_ms.saturating_sub(ts_ms).div_ceil(1000) + IDEMPOTENCY_GRACE_SECS
}

/// The partition key of a statement, for finding its replicas.
enum PartitionKey<'a> {
    Message(&'a str, u64),
    Record(&'a str, &'a str),
}

/// One partition's statements, to be sent whole in one request.
struct Part<'a> {
    statements: Vec<(PreparedStatement, Values<'a>)>,
    table: &'static str,
    key: PartitionKey<'a>,
}

impl Values<'_> {
    /// About what the statement adds to the batch's mutation size as Cassandra counts it
    /// for `batch_size_fail_threshold` (each cell carries a timestamp and TTL besides its
    /// value: measured ~2× the raw values for 100-byte messages), rounded up.
    fn bytes(&self) -> usize {
        match self {
            Values::Row(v) => 2 * (v.0.len() + v.5.len() + v.6.len()) + 160,
            Values::Head(v) => 2 * (v.0.len() + v.5.len() + v.6.len()) + 224,
            Values::Record(v) => 2 * (v.0.len() + v.1.len()) + 120,
            Values::Landed(v) => 2 * (v.2.len() + v.3.len()) + 60,
        }
    }
}

impl<'a> Request<'a> {
    fn with(statements: Vec<(PreparedStatement, Values<'a>)>) -> Self {
        let bytes = statements.iter().map(|(_, v)| v.bytes()).sum();
        Self { statements, bytes }
    }
}

/// How many of `entries` (one channel's, in seq order) go in the first mutation: those of
/// the first bucket, within the batch limits.
fn first_piece(entries: &[&AppendEntry]) -> usize {
    let b = bucket(entries[0].seq);
    let size = |e: &AppendEntry| 2 * (e.channel.len() + e.event.len() + e.data.len()) + 224;
    let mut bytes = 0;
    let mut end = 0;
    while end < entries.len()
        && bucket(entries[end].seq) == b
        && end < MAX_BATCH_ENTRIES
        && (end == 0 || bytes + size(entries[end]) <= MAX_BATCH_BYTES)
    {
        bytes += size(entries[end]);
        end += 1;
    }
    end
}
