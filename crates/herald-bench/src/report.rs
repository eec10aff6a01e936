//! The bench's result: a human summary and one JSON line.

use crate::Hist;
use serde::Serialize;

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
}

impl Report {
    pub fn print(&self) {
        println!("herald bench: {} against {}", self.scenario, self.target);
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
