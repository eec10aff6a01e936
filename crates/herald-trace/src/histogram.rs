//! Latency histograms: fixed buckets, lock-free observation, Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// A fixed-bucket histogram that many threads can observe into without locks.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// `n` observations of the same duration (messages handled together).
    pub fn observe_n(&self, d: Duration, n: u64) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(n, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64 * n, Relaxed);
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile; `None` before any
    /// observation, infinity past the last bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Per-hop latency of every message through this process (not only traced ones), so a p99
/// regression names its hop.
#[derive(Default)]
pub struct HopLatency {
    /// Dispatcher: a publish handed to the sequencer → its write stored (and answered).
    pub publish_to_commit: Histogram,
    /// Dispatcher: stored → handed to the fabric.
    pub commit_to_fabric: Histogram,
    /// Node: handed to the fabric by the dispatcher → taken off it here (two clocks).
    pub fabric_to_node: Histogram,
    /// Node: taken off the fabric → queued for every connection and written to those
    /// whose sockets had room.
    pub node_to_socket: Histogram,
}

impl HopLatency {
    pub fn render(&self, out: &mut String) {
        for (h, name, help) in [
            (&self.publish_to_commit, "herald_hop_publish_to_commit_seconds", "Publish handed to the sequencer until its durable write answered"),
            (&self.commit_to_fabric, "herald_hop_commit_to_fabric_seconds", "Durable write until the messages were handed to the fabric"),
            (&self.fabric_to_node, "herald_hop_fabric_to_node_seconds", "Handed to the fabric by the dispatcher until taken off it by this node"),
            (&self.node_to_socket, "herald_hop_node_to_socket_seconds", "Taken off the fabric until queued for every connection and written to the ready ones"),
        ] {
            h.render(out, name, help);
        }
    }
}

/// The time between two µs timestamps (zero if the clocks disagree).
pub fn between_us(from_us: u64, to_us: u64) -> Duration {
    Duration::from_micros(to_us.saturating_sub(from_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut s = String::new();
        h.render(&mut s, "x", "test");
        assert!(s.contains("x_bucket{le=\"0.0005\"} 1"));
        assert!(s.contains("x_bucket{le=\"0.005\"} 2"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3"));
        assert!(s.contains("x_count 3"));
        assert_eq!(h.quantile(0.5), Some(0.005));
        assert_eq!(h.quantile(0.99), Some(f64::INFINITY));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }
}
