//! The store's own price: the bench writes message rows like Herald's straight to Cassandra
//! (no Herald in between), plain or conditional (`IF NOT EXISTS`, one Paxos round each), so
//! Herald's cost per message can be compared with what the store alone needs.

use crate::cql;
use anyhow::Context;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Channels written, `bench-0 … bench-99`, like the bench's Herald scenarios.
const CHANNELS: usize = 100;
/// `USING TTL` of every row (Herald's default retention is a day).
const TTL_SECS: i32 = 86_400;
/// Seqs per partition, as Herald's `bucket = seq >> 16`.
const BUCKET_BITS: u32 = 16;

/// Creates the keyspace (replication factor 1) and table if missing, and prepares the insert.
pub async fn prepare(
    session: &Session,
    keyspace: &str,
    lwt: bool,
) -> anyhow::Result<PreparedStatement> {
    anyhow::ensure!(
        cql::valid_identifier(keyspace),
        "keyspace name {keyspace:?}: lower-case letters, digits and _"
    );
    cql::exec(
        session,
        &format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        ),
    )
    .await?;
    cql::exec(
        session,
        &format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.messages (channel text, bucket bigint, \
             seq bigint, epoch bigint, ts bigint, event text, data blob, \
             PRIMARY KEY ((channel, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC) \
             AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
             'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}}"
        ),
    )
    .await?;
    cql::deadline(Duration::from_secs(60), session.await_schema_agreement())
        .await
        .context("schema agreement")?;
    let cond = if lwt { " IF NOT EXISTS" } else { "" };
    let q = format!(
        "INSERT INTO {keyspace}.messages (channel, bucket, seq, epoch, ts, event, data) \
         VALUES (?, ?, ?, ?, ?, ?, ?){cond} USING TTL ?"
    );
    let mut st = cql::deadline(cql::REQUEST_TIMEOUT, session.prepare(q.as_str()))
        .await
        .with_context(|| q.clone())?;
    st.set_consistency(Consistency::Quorum);
    st.set_serial_consistency(Some(SerialConsistency::Serial));
    Ok(st)
}

pub struct Outcome {
    /// Rows written (for LWT: applied).
    pub rows: u64,
    pub errors: u64,
    /// Conditional inserts that found the row already there.
    pub not_applied: u64,
    /// Per insert, µs.
    pub latency: crate::Hist,
    pub elapsed: Duration,
}

fn now_ms() -> i64 {
    (crate::target::now_us() / 1000) as i64
}

/// Inserts rows for `duration` from `writers` concurrent tasks. Task k owns channels k,
/// k + writers, … (one writer per channel, seqs 1, 2, 3 … after a per-run base, so a run
/// never rewrites an earlier run's rows and every conditional insert applies).
pub async fn run(
    session: Arc<Session>,
    insert: PreparedStatement,
    lwt: bool,
    writers: usize,
    duration: Duration,
    payload_bytes: usize,
    sent: Arc<AtomicU64>,
) -> Outcome {
    let writers = writers.clamp(1, CHANNELS);
    let epoch = now_ms();
    // Seconds since the epoch, shifted past any run's row count (2^24 per channel).
    let base = (epoch / 1000) << 24;
    let data: Arc<[u8]> = Arc::from(vec![b'x'; payload_bytes]);
    let insert = Arc::new(insert);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..writers {
        let (session, insert, data, sent) =
            (session.clone(), insert.clone(), data.clone(), sent.clone());
        tasks.spawn(async move {
            let mine: Vec<String> = (k..CHANNELS)
                .step_by(writers)
                .map(crate::target::channel_name)
                .collect();
            let mut next = vec![base; mine.len()];
            let (mut rows, mut errors, mut not_applied) = (0u64, 0u64, 0u64);
            let mut latency = crate::new_hist();
            let mut i = 0usize;
            while started.elapsed() < duration {
                let slot = i % mine.len();
                i += 1;
                let seq = next[slot] + 1;
                let values = (
                    mine[slot].as_str(),
                    seq >> BUCKET_BITS,
                    seq,
                    epoch,
                    now_ms(),
                    "message",
                    &data[..],
                    TTL_SECS,
                );
                let t0 = Instant::now();
                let res = cql::deadline(
                    cql::REQUEST_TIMEOUT,
                    session.execute_unpaged(&insert, values),
                )
                .await;
                match res {
                    Ok(r) => {
                        let _ = latency.record(t0.elapsed().as_micros().max(1) as u64);
                        next[slot] = seq;
                        if lwt && !applied(r) {
                            not_applied += 1;
                        } else {
                            rows += 1;
                            sent.fetch_add(1, Relaxed);
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (rows, errors, not_applied, latency)
        });
    }
    let mut out = Outcome {
        rows: 0,
        errors: 0,
        not_applied: 0,
        latency: crate::new_hist(),
        elapsed: Duration::ZERO,
    };
    while let Some(res) = tasks.join_next().await {
        if let Ok((r, e, n, h)) = res {
            out.rows += r;
            out.errors += e;
            out.not_applied += n;
            let _ = out.latency.add(&h);
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// The `[applied]` column of a conditional statement's answer (false when missing).
fn applied(res: scylla::response::query_result::QueryResult) -> bool {
    let Ok(rows) = res.into_rows_result() else {
        return false;
    };
    let Ok(mut it) = rows.rows::<scylla::value::Row>() else {
        return false;
    };
    matches!(
        it.next(),
        Some(Ok(row)) if matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))))
    )
}
