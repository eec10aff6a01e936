//! The processes' own counters, as deltas over the measured window:
//! - Herald's `/metrics` of every dispatcher and node (CQL requests and statements by kind,
//!   publishes, deliveries); a metric a process does not export is absent (`null`), never 0;
//! - nats-server's monitoring endpoint `/varz` (messages and bytes in and out);
//! - Cassandra's virtual tables over CQL: coordinator reads and writes per table of one
//!   keyspace, local writes of `system.paxos` (Cassandra's own Paxos state: each LWT round
//!   writes it about three times), and statements executed (`system_views.cql_metrics`).

use crate::cql;
use scylla::client::session::Session;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Herald metrics the bench reads: (report key, metric name, `kind` label).
const HERALD: [(&str, &str, Option<&str>); 17] = [
    (
        "cql_write_requests",
        "herald_cql_requests_total",
        Some("write"),
    ),
    ("cql_lwt_requests", "herald_cql_requests_total", Some("lwt")),
    (
        "cql_read_requests",
        "herald_cql_requests_total",
        Some("read"),
    ),
    (
        "cql_write_statements",
        "herald_cql_statements_total",
        Some("write"),
    ),
    (
        "cql_lwt_statements",
        "herald_cql_statements_total",
        Some("lwt"),
    ),
    ("publishes", "herald_publishes_total", None),
    ("deliveries", "herald_deliveries_total", None),
    (
        "slow_consumer_disconnects",
        "herald_slow_consumer_disconnects_total",
        None,
    ),
    (
        "stalled_disconnects",
        "herald_stalled_disconnects_total",
        None,
    ),
    ("gap_disconnects", "herald_gap_disconnects_total", None),
    ("gap_repairs", "herald_gap_repairs_total", None),
    ("replays_ring", "herald_replays_ring_total", None),
    ("replays_store", "herald_replays_store_total", None),
    (
        "shared_store_reads",
        "herald_shared_store_reads_total",
        None,
    ),
    ("store_meta_reads", "herald_store_meta_reads_total", None),
    ("store_range_reads", "herald_store_range_reads_total", None),
    ("drain_reconnects", "herald_drain_reconnects_total", None),
];

const NATS: [&str; 4] = ["in_msgs", "out_msgs", "in_bytes", "out_bytes"];

/// Where the counters come from.
#[derive(Clone, Default)]
pub struct Sources {
    /// Herald processes (`http://ADDR/metrics`).
    pub herald: Vec<std::net::SocketAddr>,
    /// What /metrics takes: a publisher API key or the metrics token.
    pub metrics_key: Option<String>,
    /// nats-server monitoring address (`host:port` or `http://host:port`).
    pub nats_monitor: Option<String>,
    pub cql: Option<Arc<Session>>,
    /// The keyspace whose tables' coordinator counts are reported.
    pub keyspace: String,
}

/// One reading of every source.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    at: Option<Instant>,
    /// (process, key) → value, for the metrics each process exports.
    herald: BTreeMap<(String, &'static str), f64>,
    nats: Option<BTreeMap<&'static str, u64>>,
    cassandra: Option<CassandraSnapshot>,
    errors: Vec<String>,
}

impl Snapshot {
    /// The sum of one Herald counter (report key) over the processes that export it.
    pub fn herald_sum(&self, key: &str) -> Option<f64> {
        let mut vals = self
            .herald
            .iter()
            .filter(|((_, k), _)| *k == key)
            .peekable();
        vals.peek()?;
        Some(vals.map(|(_, v)| v).sum())
    }
}

#[derive(Clone, Debug, Default)]
struct CassandraSnapshot {
    keyspace: String,
    coordinator_writes: Option<BTreeMap<String, f64>>,
    coordinator_reads: Option<BTreeMap<String, f64>>,
    paxos_writes: Option<f64>,
    /// cql_metrics name → value
    cql_metrics: Option<BTreeMap<String, f64>>,
}

/// Sums of Herald's counters over its processes (None: no process exports it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeraldCounters {
    pub processes: usize,
    pub cql_write_requests: Option<f64>,
    pub cql_lwt_requests: Option<f64>,
    pub cql_read_requests: Option<f64>,
    pub cql_write_statements: Option<f64>,
    pub cql_lwt_statements: Option<f64>,
    pub publishes: Option<f64>,
    pub deliveries: Option<f64>,
    /// Connections the nodes closed (queue overflow, peer not reading, a gap to resume
    /// from): what explains a bench connection "closed early".
    pub slow_consumer_disconnects: Option<f64>,
    pub stalled_disconnects: Option<f64>,
    pub gap_disconnects: Option<f64>,
    pub gap_repairs: Option<f64>,
    /// Resumes answered from the nodes' recent-message rings, and from the store.
    pub replays_ring: Option<f64>,
    pub replays_store: Option<f64>,
    /// Store reads answered by an identical read already in flight, or a resume's channel
    /// meta by a read moments old (coalesced resumes).
    pub shared_store_reads: Option<f64>,
    /// Reads the nodes sent to the store: channel metas, and message ranges.
    pub store_meta_reads: Option<f64>,
    pub store_range_reads: Option<f64>,
    /// Streams a drain asked to reconnect elsewhere.
    pub drain_reconnects: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NatsCounters {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CassandraCounters {
    pub keyspace: String,
    /// prepared + regular statements executed (cql_metrics).
    pub statements_executed: Option<f64>,
    pub prepared_statements_executed: Option<f64>,
    pub regular_statements_executed: Option<f64>,
    /// Coordinator writes / reads per table of `keyspace`.
    pub coordinator_writes: Option<BTreeMap<String, f64>>,
    pub coordinator_reads: Option<BTreeMap<String, f64>>,
    /// Local writes of `system.paxos`: Cassandra's Paxos state (each LWT round writes it
    /// ~3 times: promise, proposal, commit), raw.
    pub paxos_table_writes: Option<f64>,
}

/// Counts divided by the messages published in the window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerMessage {
    pub messages: u64,
    /// Cassandra's statements executed per message.
    pub cql_statements: Option<f64>,
    pub coordinator_writes: Option<BTreeMap<String, f64>>,
    /// system.paxos writes per message (raw; ~3 per LWT round).
    pub paxos_table_writes: Option<f64>,
    /// Herald's conditional (Paxos) requests per message: consensus rounds per message.
    pub herald_lwt_requests: Option<f64>,
    /// Herald's plain (unconditional) write statements per message.
    pub herald_write_statements: Option<f64>,
    pub herald_write_requests: Option<f64>,
    pub herald_read_requests: Option<f64>,
    pub nats_in_msgs: Option<f64>,
    pub nats_out_msgs: Option<f64>,
}

/// Everything over the window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub window_s: f64,
    pub herald: HeraldCounters,
    pub nats: Option<NatsCounters>,
    pub cassandra: Option<CassandraCounters>,
    pub per_message: PerMessage,
    /// Sources that could not be read (their figures are absent).
    pub errors: Vec<String>,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default()
}

impl Sources {
    pub fn is_empty(&self) -> bool {
        self.herald.is_empty() && self.nats_monitor.is_none() && self.cql.is_none()
    }

    /// Reads every source once; what cannot be read is noted in `errors`.
    pub async fn snapshot(&self) -> Snapshot {
        let http = http();
        let mut snap = Snapshot {
            at: Some(Instant::now()),
            ..Snapshot::default()
        };
        for addr in &self.herald {
            let mut req = http.get(format!("http://{addr}/metrics"));
            if let Some(key) = &self.metrics_key {
                req = req.bearer_auth(key);
            }
            match fetch(req).await {
                Ok(text) => {
                    for (key, value) in herald_values(&text) {
                        snap.herald.insert((addr.to_string(), key), value);
                    }
                }
                Err(e) => snap.errors.push(format!("{addr}/metrics: {e:#}")),
            }
        }
        if let Some(m) = &self.nats_monitor {
            let base = if m.starts_with("http://") || m.starts_with("https://") {
                m.trim_end_matches('/').to_owned()
            } else {
                format!("http://{m}")
            };
            match varz(&http, &format!("{base}/varz")).await {
                Ok(v) => snap.nats = Some(v),
                Err(e) => snap.errors.push(format!("{base}/varz: {e:#}")),
            }
        }
        if let Some(session) = &self.cql {
            snap.cassandra = Some(cassandra(session, &self.keyspace, &mut snap.errors).await);
        }
        snap
    }
}

async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    fetch(http.get(url)).await
}

async fn fetch(req: reqwest::RequestBuilder) -> anyhow::Result<String> {
    let resp = req.send().await?;
    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
    Ok(resp.text().await?)
}

async fn varz(http: &reqwest::Client, url: &str) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let v: serde_json::Value = serde_json::from_str(&scrape(http, url).await?)?;
    let mut out = BTreeMap::new();
    for k in NATS {
        let n = v
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| anyhow::anyhow!("no {k} in varz"))?;
        out.insert(k, n);
    }
    Ok(out)
}

/// One sample of Prometheus text: name, labels, value.
struct Series<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: f64,
}

/// One Prometheus text line: `name{label="v",…} value`.
fn parse_line(line: &str) -> Option<Series<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (series, value) = line.rsplit_once(char::is_whitespace)?;
    let value: f64 = value.trim().parse().ok()?;
    let series = series.trim();
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    let labels = labels
        .split(',')
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some(Series {
        name: name.trim(),
        labels,
        value,
    })
}

/// The metrics of [`HERALD`] a process exports (a series counts when its `kind` label is the
/// wanted one; several matching series are summed).
fn herald_values(text: &str) -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::new();
    for s in text.lines().filter_map(parse_line) {
        let kind = s.labels.iter().find(|(k, _)| *k == "kind").map(|(_, v)| *v);
        for (key, metric, want) in HERALD {
            if s.name == metric && kind == want {
                *out.entry(key).or_insert(0.0) += s.value;
            }
        }
    }
    out
}

/// Per table of `keyspace`: the `count` column of a latency virtual table.
async fn latency_counts(
    session: &Session,
    table: &str,
    keyspace: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let rows = cql::rows(
        session,
        &format!("SELECT keyspace_name, table_name, count FROM system_views.{table}"),
    )
    .await?;
    Ok(rows
        .iter()
        .filter(|r| cql::text(r, 0) == Some(keyspace))
        .filter_map(|r| Some((cql::text(r, 1)?.to_owned(), cql::number(r, 2)?)))
        .collect())
}

async fn cassandra(
    session: &Session,
    keyspace: &str,
    errors: &mut Vec<String>,
) -> CassandraSnapshot {
    let mut s = CassandraSnapshot {
        keyspace: keyspace.to_owned(),
        ..CassandraSnapshot::default()
    };
    let mut note = |what: &str, e: anyhow::Error| errors.push(format!("cassandra {what}: {e:#}"));
    match latency_counts(session, "coordinator_write_latency", keyspace).await {
        Ok(m) => s.coordinator_writes = Some(m),
        Err(e) => note("coordinator_write_latency", e),
    }
    match latency_counts(session, "coordinator_read_latency", keyspace).await {
        Ok(m) => s.coordinator_reads = Some(m),
        Err(e) => note("coordinator_read_latency", e),
    }
    match latency_counts(session, "local_write_latency", "system").await {
        Ok(m) => s.paxos_writes = Some(m.get("paxos").copied().unwrap_or(0.0)),
        Err(e) => note("local_write_latency", e),
    }
    match cql::rows(session, "SELECT name, value FROM system_views.cql_metrics").await {
        Ok(rows) => {
            s.cql_metrics = Some(
                rows.iter()
                    .filter_map(|r| Some((cql::text(r, 0)?.to_owned(), cql::number(r, 1)?)))
                    .collect(),
            )
        }
        Err(e) => note("cql_metrics", e),
    }
    s
}

fn sub_maps(
    a: &Option<BTreeMap<String, f64>>,
    b: &Option<BTreeMap<String, f64>>,
) -> Option<BTreeMap<String, f64>> {
    let (a, b) = (a.as_ref()?, b.as_ref()?);
    Some(
        b.iter()
            .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect(),
    )
}

/// The deltas from `a` to `b`, and per message of `messages` published in between.
pub fn delta(a: &Snapshot, b: &Snapshot, messages: u64) -> Counters {
    let mut c = Counters {
        window_s: match (a.at, b.at) {
            (Some(x), Some(y)) => y.duration_since(x).as_secs_f64(),
            _ => 0.0,
        },
        errors: a.errors.iter().chain(&b.errors).cloned().collect(),
        ..Counters::default()
    };
    c.errors.dedup();

    // Herald: per process, only what it exported both times.
    let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
    let mut procs = std::collections::BTreeSet::new();
    for ((proc_, key), after) in &b.herald {
        if let Some(before) = a.herald.get(&(proc_.clone(), key)) {
            *sums.entry(key).or_insert(0.0) += after - before;
            procs.insert(proc_.clone());
        }
    }
    let h = &mut c.herald;
    h.processes = procs.len();
    h.cql_write_requests = sums.get("cql_write_requests").copied();
    h.cql_lwt_requests = sums.get("cql_lwt_requests").copied();
    h.cql_read_requests = sums.get("cql_read_requests").copied();
    h.cql_write_statements = sums.get("cql_write_statements").copied();
    h.cql_lwt_statements = sums.get("cql_lwt_statements").copied();
    h.publishes = sums.get("publishes").copied();
    h.deliveries = sums.get("deliveries").copied();
    h.slow_consumer_disconnects = sums.get("slow_consumer_disconnects").copied();
    h.stalled_disconnects = sums.get("stalled_disconnects").copied();
    h.gap_disconnects = sums.get("gap_disconnects").copied();
    h.gap_repairs = sums.get("gap_repairs").copied();
    h.replays_ring = sums.get("replays_ring").copied();
    h.replays_store = sums.get("replays_store").copied();
    h.shared_store_reads = sums.get("shared_store_reads").copied();
    h.store_meta_reads = sums.get("store_meta_reads").copied();
    h.store_range_reads = sums.get("store_range_reads").copied();
    h.drain_reconnects = sums.get("drain_reconnects").copied();

    if let (Some(x), Some(y)) = (&a.nats, &b.nats) {
        let d = |k: &str| {
            y.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(x.get(k).copied().unwrap_or(0))
        };
        c.nats = Some(NatsCounters {
            in_msgs: d("in_msgs"),
            out_msgs: d("out_msgs"),
            in_bytes: d("in_bytes"),
            out_bytes: d("out_bytes"),
        });
    }

    if let (Some(x), Some(y)) = (&a.cassandra, &b.cassandra) {
        let metric = |name: &str| -> Option<f64> {
            let before = x.cql_metrics.as_ref()?.get(name)?;
            let after = y.cql_metrics.as_ref()?.get(name)?;
            Some(after - before)
        };
        let prepared = metric("prepared_statements_executed");
        let regular = metric("regular_statements_executed");
        c.cassandra = Some(CassandraCounters {
            keyspace: y.keyspace.clone(),
            statements_executed: match (prepared, regular) {
                (Some(p), Some(r)) => Some(p + r),
                _ => None,
            },
            prepared_statements_executed: prepared,
            regular_statements_executed: regular,
            coordinator_writes: sub_maps(&x.coordinator_writes, &y.coordinator_writes),
            coordinator_reads: sub_maps(&x.coordinator_reads, &y.coordinator_reads),
            paxos_table_writes: match (x.paxos_writes, y.paxos_writes) {
                (Some(p), Some(q)) => Some(q - p),
                _ => None,
            },
        });
    }

    let n = messages as f64;
    let per = |v: Option<f64>| v.filter(|_| messages > 0).map(|v| v / n);
    let pm = &mut c.per_message;
    pm.messages = messages;
    pm.herald_lwt_requests = per(c.herald.cql_lwt_requests);
    pm.herald_write_statements = per(c.herald.cql_write_statements);
    pm.herald_write_requests = per(c.herald.cql_write_requests);
    pm.herald_read_requests = per(c.herald.cql_read_requests);
    if let Some(nats) = &c.nats {
        pm.nats_in_msgs = per(Some(nats.in_msgs as f64));
        pm.nats_out_msgs = per(Some(nats.out_msgs as f64));
    }
    if let Some(cass) = &c.cassandra {
        pm.cql_statements = per(cass.statements_executed);
        pm.paxos_table_writes = per(cass.paxos_table_writes);
        if messages > 0 {
            pm.coordinator_writes = cass
                .coordinator_writes
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v / n)).collect());
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP herald_publishes_total x
# TYPE herald_publishes_total counter
herald_publishes_total 120
herald_publishes_ephemeral_total 7
herald_cql_requests_total{kind="write"} 10
herald_cql_requests_total{kind="lwt"} 2
herald_cql_requests_total{kind="read"} 5
herald_cql_statements_total{kind="write"} 100
herald_cql_statements_total{ kind = "lwt" } 3
herald_publish_duration_seconds_bucket{le="0.001"} 9
"#;

    #[test]
    fn reads_herald_metrics_and_leaves_missing_ones_absent() {
        let v = herald_values(METRICS);
        assert_eq!(v.get("publishes"), Some(&120.0));
        assert_eq!(v.get("cql_write_requests"), Some(&10.0));
        assert_eq!(v.get("cql_lwt_requests"), Some(&2.0));
        assert_eq!(v.get("cql_read_requests"), Some(&5.0));
        assert_eq!(v.get("cql_write_statements"), Some(&100.0));
        assert_eq!(v.get("cql_lwt_statements"), Some(&3.0));
        assert_eq!(v.get("deliveries"), None);
        let old = herald_values("herald_publishes_total 5\nherald_deliveries_total 9\n");
        assert_eq!(old.get("cql_lwt_requests"), None);
        assert_eq!(old.get("deliveries"), Some(&9.0));
    }

    #[test]
    fn deltas_only_over_what_both_snapshots_have() {
        let mut a = Snapshot::default();
        let mut b = Snapshot::default();
        for (p, v) in [("d0", 10.0), ("n0", 1.0)] {
            a.herald.insert((p.into(), "cql_lwt_requests"), v);
            b.herald.insert((p.into(), "cql_lwt_requests"), v * 3.0);
        }
        // A process that only answered at the end is left out.
        b.herald.insert(("n1".into(), "cql_lwt_requests"), 1000.0);
        b.herald.insert(("d0".into(), "publishes"), 50.0);
        a.nats = Some(NATS.iter().map(|k| (*k, 100)).collect());
        b.nats = Some(NATS.iter().map(|k| (*k, 300)).collect());
        let c = delta(&a, &b, 100);
        assert_eq!(c.herald.cql_lwt_requests, Some(22.0));
        assert_eq!(c.herald.processes, 2);
        assert_eq!(c.herald.publishes, None);
        assert_eq!(c.herald.cql_write_statements, None);
        assert_eq!(c.per_message.herald_lwt_requests, Some(0.22));
        assert_eq!(c.per_message.herald_write_statements, None);
        assert_eq!(c.nats.as_ref().map(|n| n.in_msgs), Some(200));
        assert_eq!(c.per_message.nats_in_msgs, Some(2.0));
        assert!(c.cassandra.is_none());
        let none = delta(&a, &b, 0);
        assert_eq!(none.per_message.herald_lwt_requests, None);
    }
}
