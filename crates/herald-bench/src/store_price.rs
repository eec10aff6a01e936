//! The store's own price: the bench writes message rows like Herald's straight to Cassandra
//! (no Herald in between), plain or conditional (`IF NOT EXISTS`, one Paxos round each), so
//! Herald's cost per message can be compared with what the store alone needs.
//!
//! Cassandra's CPU per row depends on how hard it is driven (per row it costs several times
//! more at 6k rows/s than at 35k rows/s), so the writers either go as fast as they can or are
//! paced to a set total rate (`--rate`), to price the store at the rate Herald ran at.

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

/// When writer `k` of `writers` sends its first insert and how far apart the rest are, for
/// `rate` rows/s in total; `None` (as fast as it goes) when `rate` is not positive. The
/// writers' first inserts are spread over one period, so the inserts arrive evenly.
fn schedule(rate: f64, writers: usize, k: usize) -> Option<(Duration, Duration)> {
    if !(rate > 0.0 && rate.is_finite()) {
        return None;
    }
    let writers = writers.max(1);
    let period = Duration::from_secs_f64(writers as f64 / rate);
    Some((period.mul_f64(k as f64 / writers as f64), period))
}

/// Inserts rows for `duration` from `writers` concurrent tasks. Task k owns channels k,
/// k + writers, … (one writer per channel, seqs 1, 2, 3 … after a per-run base, so a run
/// never rewrites an earlier run's rows and every conditional insert applies).
///
/// `rate` > 0: open-loop pacing, `rate` rows/s in total spread evenly over the writers. Each
/// writer's inserts are due on a fixed schedule, whatever the answers' latency; one that fell
/// behind (an insert took longer than its period) sends the overdue ones back to back until
/// it is on schedule again, and one that cannot keep up simply writes fewer rows: the
/// outcome's rows over its elapsed time is the rate achieved, not the one asked for.
/// `rate` ≤ 0: as fast as the writers go, one insert at a time each.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    session: Arc<Session>,
    insert: PreparedStatement,
    lwt: bool,
    writers: usize,
    rate: f64,
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
        // When this writer's next insert is due, and its period (None: unpaced).
        let mut pace = schedule(rate, writers, k).map(|(first, period)| (started + first, period));
        tasks.spawn(async move {
            let mine: Vec<String> = (k..CHANNELS)
                .step_by(writers)
                .map(crate::target::channel_name)
                .collect();
            let mut next = vec![base; mine.len()];
            let (mut rows, mut errors, mut not_applied) = (0u64, 0u64, 0u64);
            let mut latency = crate::new_hist();
            let mut i = 0usize;
            // Stops at the end of the window, however far behind schedule (a writer that is
            // behind must not run on to send what it owes).
            while started.elapsed() < duration {
                if let Some((due, period)) = &mut pace {
                    if due.duration_since(started) >= duration {
                        break;
                    }
                    tokio::time::sleep_until((*due).into()).await;
                    *due += *period;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpaced_without_a_positive_rate() {
        assert_eq!(schedule(0.0, 32, 0), None);
        assert_eq!(schedule(-5.0, 32, 3), None);
        assert_eq!(schedule(f64::NAN, 32, 3), None);
    }

    #[test]
    fn writers_share_the_rate_and_start_spread_over_one_period() {
        let writers = 32;
        let (first, period) = schedule(5000.0, writers, 0).unwrap();
        assert_eq!(first, Duration::ZERO);
        assert_eq!(period, Duration::from_secs_f64(32.0 / 5000.0));
        let total: f64 = (0..writers)
            .map(|k| 1.0 / schedule(5000.0, writers, k).unwrap().1.as_secs_f64())
            .sum();
        assert!((total - 5000.0).abs() < 1.0, "{total}");
        let mut offsets: Vec<Duration> = (0..writers)
            .map(|k| schedule(5000.0, writers, k).unwrap().0)
            .collect();
        assert!(offsets.iter().all(|o| *o < period));
        offsets.dedup();
        assert_eq!(offsets.len(), writers);
    }
}
