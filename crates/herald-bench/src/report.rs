//! The bench's result: a human summary and one JSON line.

use crate::counters::Counters;
use crate::roles::RoleReport;
use crate::Hist;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
}

impl Percentiles {
    /// From a µs histogram, in milliseconds.
    pub fn ms(h: &Hist) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            count: h.len(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: u64,
    pub connected: u64,
    pub failed: u64,
    pub closed_early: u64,
    pub connect_ms: Percentiles,
    pub channels: u64,
    pub rate_target: f64,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub published: u64,
    pub publish_errors: u64,
    pub publish_rate: f64,
    pub publish_ms: Percentiles,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_ms: Percentiles,
    pub server_pid: Option<u32>,
    pub server_rss_before: u64,
    pub server_rss_connected: u64,
    pub server_rss_per_connection: f64,
    pub server_cpu_s: f64,
    pub deliveries_per_server_cpu_s: f64,
    pub publishes_per_server_cpu_s: f64,
    pub bench_cpu_s: f64,
    pub ingest_msgs_per_s: f64,
    /// Resume storm: seconds from the first connect until every client had every message.
    pub resume_caught_up_s: f64,
    /// Role accounting (`--role`, `--cluster-dir`): per role, CPU over the measured window
    /// and RSS, from each process's /proc.
    pub roles: BTreeMap<String, RoleReport>,
    /// The processes' own counters over the measured window (Herald /metrics, NATS /varz,
    /// Cassandra's virtual tables).
    pub counters: Option<Counters>,
    /// store-insert / store-lwt: what the bench wrote to Cassandra itself.
    pub store: Option<StoreReport>,
    /// flash-crowd: the crowd, and the first subscribers' latency before and during it.
    pub flash: Option<FlashReport>,
    /// node-death / drain: the victim's clients moving to the other nodes.
    pub failover: Option<FailoverReport>,
}

#[derive(Debug, Default, Serialize)]
pub struct FailoverReport {
    /// What happened to the victim: `kill -9` or `drain (SIGTERM)`.
    pub event: String,
    pub victim: String,
    /// Clients connected to the victim when it failed.
    pub victim_clients: u64,
    /// Streams opened again (at the other nodes).
    pub reconnects: u64,
    /// Attempts that got no stream (the dead node refusing, errors, timeouts).
    pub reconnect_failures: u64,
    /// Clients that stopped trying.
    pub gave_up: u64,
    /// `herald:reconnect` events the clients received (drain).
    pub told_to_reconnect: u64,
    /// Clients whose stream ended and had not caught up when the run ended.
    pub still_catching_up: u64,
    /// Seconds from the failure until the last client was connected again.
    pub all_reconnected_s: f64,
    /// Seconds from the failure until the last client had received every message published
    /// before it reconnected (0 when some never did).
    pub all_caught_up_s: f64,
    /// Per client: from its stream's end until it had caught up.
    pub recovery_ms: Percentiles,
    /// Reconnects that landed on each node (index of --node-addr).
    pub reconnects_per_node: Vec<u64>,
    /// The most reconnects in any one second, over all the other nodes. A reconnect counts
    /// when the client started the attempt that got its stream (its connect(2)): the rate
    /// new connections arrive at the other nodes, whatever their speed in answering.
    pub peak_connects_per_s: u64,
    /// Reconnects ÷ the time from the first to the last.
    pub mean_connects_per_s: f64,
    /// Reconnects in each second after the failure (0–1 s, 1–2 s, …).
    pub reconnects_per_s: Vec<u64>,
    /// `herald:reconnect` events received in each second after the drain began.
    pub told_per_s: Vec<u64>,
    /// Drain: the window the victim spreads its clients over, and their number ÷ it.
    pub drain_window_s: f64,
    pub even_connects_per_s: f64,
    /// Drain: `peak_connects_per_s ÷ even_connects_per_s`.
    pub peak_vs_even: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct FlashReport {
    pub crowd: u64,
    pub crowd_connected: u64,
    pub crowd_failed: u64,
    /// Seconds from the crowd's first connect until every crowd connection was open (or
    /// had failed).
    pub crowd_connect_s: f64,
    /// The first subscribers' publish → deliver latency before the crowd.
    pub before_ms: Percentiles,
    /// The same while the crowd was connecting (its start until all were in).
    pub joining_ms: Percentiles,
    /// The same once the channel had settled with the crowd (1 s after it was in, for 3 s):
    /// the channel's steady value at its new size.
    pub settled_ms: Percentiles,
    /// `joining_ms.p99 / settled_ms.p99`: what the join itself cost.
    pub joining_vs_settled_p99: f64,
    /// `joining_ms.p99 / before_ms.p99`.
    pub joining_vs_before_p99: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct StoreReport {
    pub keyspace: String,
    /// `IF NOT EXISTS` (one Paxos round per row).
    pub conditional: bool,
    pub writers: u64,
    pub rows: u64,
    pub errors: u64,
    pub not_applied: u64,
    pub rows_per_s: f64,
    pub write_ms: Percentiles,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) => format!("{v:.digits$}"),
        None => "n/a".into(),
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl Report {
    pub fn print(&self) {
        println!("herald bench: {} against {}", self.scenario, self.target);
        if let Some(f) = &self.failover {
            println!(
                "  failover      {} of {}: {} clients; {} reconnected ({} failed attempts, {} gave up, {} told in band) — all back {:.2} s, all caught up {:.2} s after it ({} still behind); per client p50/p99/max {:.0}/{:.0}/{:.0} ms",
                f.event, f.victim, f.victim_clients, f.reconnects, f.reconnect_failures, f.gave_up,
                f.told_to_reconnect, f.all_reconnected_s, f.all_caught_up_s, f.still_catching_up,
                f.recovery_ms.p50, f.recovery_ms.p99, f.recovery_ms.max
            );
            println!(
                "  connect rate  peak {}/s, mean {:.0}/s at the other nodes (per node {:?}){}",
                f.peak_connects_per_s,
                f.mean_connects_per_s,
                f.reconnects_per_node,
                if f.drain_window_s > 0.0 {
                    format!(
                        "; even over the {:.0} s drain: {:.0}/s (peak {:.2}× even)",
                        f.drain_window_s, f.even_connects_per_s, f.peak_vs_even
                    )
                } else {
                    String::new()
                }
            );
        }
        if let Some(f) = &self.flash {
            println!(
                "  flash crowd   {} joined ({} failed) in {:.2} s; first subscribers' p99 {:.1} ms before, {:.1} ms while it joined, {:.1} ms settled (joining {:.2}× settled, {:.2}× before)",
                f.crowd_connected, f.crowd_failed, f.crowd_connect_s, f.before_ms.p99, f.joining_ms.p99,
                f.settled_ms.p99, f.joining_vs_settled_p99, f.joining_vs_before_p99
            );
        }
        if self.connections > 0 {
            println!(
                "  connections   {} requested, {} connected, {} failed, {} closed early; connect p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.connections, self.connected, self.failed, self.closed_early,
                self.connect_ms.p50, self.connect_ms.p99, self.connect_ms.max
            );
        }
        if self.server_rss_connected > 0 && self.connected > 0 {
            println!(
                "  server memory {:.1} MiB before, {:.1} MiB connected: {:.0} bytes per connection",
                self.server_rss_before as f64 / 1048576.0,
                self.server_rss_connected as f64 / 1048576.0,
                self.server_rss_per_connection
            );
        }
        if self.published > 0 && self.resume_caught_up_s == 0.0 {
            println!(
                "  published     {} in {:.1} s ({:.0}/s, target {:.0}/s), {} errors; publish p50 {:.2} ms, p99 {:.2} ms",
                self.published, self.duration_s, self.publish_rate, self.rate_target,
                self.publish_errors, self.publish_ms.p50, self.publish_ms.p99
            );
            if self.rate_target > 0.0 && self.publish_rate < 0.9 * self.rate_target {
                println!(
                    "  note          the server took under 90 % of the offered rate: its latency is for a lighter load than asked, not comparable with a server that took it all"
                );
            }
        }
        if self.expected_deliveries > 0 {
            println!(
                "  deliveries    {} of {} expected: lost {}, duplicated {}, out of order {}",
                self.deliveries,
                self.expected_deliveries,
                self.lost,
                self.duplicates,
                self.out_of_order
            );
            println!(
                "  latency       p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms (publish → receive)",
                self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.p999, self.latency_ms.max
            );
        }
        if self.resume_caught_up_s > 0.0 {
            println!(
                "  resume storm  {} clients {} messages behind: all caught up after {:.2} s",
                self.connected,
                self.expected_deliveries / self.connected.max(1),
                self.resume_caught_up_s
            );
        }
        if self.ingest_msgs_per_s > 0.0 {
            println!(
                "  ingest        {:.0} durable msgs/s; {:.0} per server CPU-second",
                self.ingest_msgs_per_s, self.publishes_per_server_cpu_s
            );
        }
        if let Some(st) = &self.store {
            println!(
                "  store         {} rows{} into {}.messages from {} writers ({}): {:.0} rows/s, {} errors, {} not applied; insert p50 {:.2} ms, p99 {:.2} ms",
                st.rows,
                if st.conditional { " (IF NOT EXISTS)" } else { "" },
                st.keyspace,
                st.writers,
                if self.rate_target > 0.0 {
                    format!("paced to {:.0} rows/s", self.rate_target)
                } else {
                    "as fast as they go".to_owned()
                },
                st.rows_per_s,
                st.errors,
                st.not_applied,
                st.write_ms.p50,
                st.write_ms.p99
            );
        }
        for (name, r) in &self.roles {
            println!(
                "  role {name:<10} cpu {:.2} s ({} per 1k publishes, {} per 1k deliveries); rss {:.1} → {:.1} MiB; pids {:?}{}",
                r.cpu_s,
                opt(r.cpu_s_per_1k_publishes, 3),
                opt(r.cpu_s_per_1k_deliveries, 4),
                mib(r.rss_before),
                mib(r.rss_after),
                r.pids,
                if r.gone.is_empty() { String::new() } else { format!(" (gone: {:?})", r.gone) }
            );
        }
        if let Some(c) = &self.counters {
            self.print_counters(c);
        }
        if self.server_pid.is_some() {
            println!(
                "  server cpu    {:.2} s: {:.0} deliveries per server CPU-second; bench cpu {:.2} s",
                self.server_cpu_s, self.deliveries_per_server_cpu_s, self.bench_cpu_s
            );
        }
        match serde_json::to_string(self) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("report not serializable: {e}"),
        }
    }
}

impl Report {
    fn print_counters(&self, c: &Counters) {
        let h = &c.herald;
        let pm = &c.per_message;
        println!(
            "  counters      over {:.1} s, per message of {} published:",
            c.window_s, pm.messages
        );
        println!(
            "    herald      {} processes: cql requests write {} lwt {} read {}; statements write {} lwt {}; publishes {} deliveries {}",
            h.processes,
            opt(h.cql_write_requests, 0),
            opt(h.cql_lwt_requests, 0),
            opt(h.cql_read_requests, 0),
            opt(h.cql_write_statements, 0),
            opt(h.cql_lwt_statements, 0),
            opt(h.publishes, 0),
            opt(h.deliveries, 0)
        );
        println!(
            "                per message: consensus rounds (lwt requests) {}, plain write statements {}, read requests {}",
            opt(pm.herald_lwt_requests, 4),
            opt(pm.herald_write_statements, 3),
            opt(pm.herald_read_requests, 3)
        );
        if h.replays_ring.is_some() || h.replays_store.is_some() {
            println!(
                "                resumes from the ring {}, from the store {}; store reads: {} channel metas, {} ranges, {} more shared; drain reconnects {}",
                opt(h.replays_ring, 0),
                opt(h.replays_store, 0),
                opt(h.store_meta_reads, 0),
                opt(h.store_range_reads, 0),
                opt(h.shared_store_reads, 0),
                opt(h.drain_reconnects, 0)
            );
        }
        if let Some(n) = &c.nats {
            println!(
                "    nats        in {} msgs / {} B, out {} msgs / {} B; per message in {} out {}",
                n.in_msgs,
                n.in_bytes,
                n.out_msgs,
                n.out_bytes,
                opt(pm.nats_in_msgs, 2),
                opt(pm.nats_out_msgs, 2)
            );
        }
        if let Some(k) = &c.cassandra {
            println!(
                "    cassandra   statements executed {} ({} per message); system.paxos writes {} ({} per message, ~3 per LWT round)",
                opt(k.statements_executed, 0),
                opt(pm.cql_statements, 3),
                opt(k.paxos_table_writes, 0),
                opt(pm.paxos_table_writes, 3)
            );
            let tables = |m: &Option<BTreeMap<String, f64>>| match m {
                None => "n/a".to_owned(),
                Some(m) if m.is_empty() => "none".to_owned(),
                Some(m) => m
                    .iter()
                    .map(|(t, v)| format!("{t} {v:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            println!(
                "                coordinator writes in {}: {}; reads: {}",
                k.keyspace,
                tables(&k.coordinator_writes),
                tables(&k.coordinator_reads)
            );
            if let Some(m) = &pm.coordinator_writes {
                if !m.is_empty() {
                    println!(
                        "                coordinator writes per message: {}",
                        m.iter()
                            .map(|(t, v)| format!("{t} {v:.3}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        for e in &c.errors {
            println!("    not read:   {e}");
        }
    }
}
