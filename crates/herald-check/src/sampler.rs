//! Every second: the resident memory of every server process (/proc/PID/status); every two
//! seconds: a few counters from each Herald process's `/metrics`, summed over restarts.

use crate::procs::{rss_bytes, Role};
use crate::target::Topology;
use crate::Phase;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Server counters worth showing next to what the clients saw.
const METRICS: [&str; 9] = [
    "herald_slow_consumer_disconnects_total",
    "herald_stalled_disconnects_total",
    "herald_gap_disconnects_total",
    "herald_resets_total",
    "herald_replays_ring_total",
    "herald_replays_store_total",
    "herald_publish_duplicates_total",
    "herald_ephemeral_dropped_total",
    "herald_ephemeral_conflated_total",
];

#[derive(Debug, Default)]
pub struct Sampled {
    /// Highest RSS per process name, bytes.
    pub max_rss: BTreeMap<String, u64>,
    /// Counters summed over every process and every restart (what was scraped before each
    /// kill; up to two seconds of counts before a kill are missed).
    pub metrics: BTreeMap<String, f64>,
}

fn parse_metrics(text: &str) -> HashMap<&'static str, f64> {
    let mut out = HashMap::new();
    for name in METRICS {
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
        {
            out.insert(name, v);
        }
    }
    out
}

/// Samples until the phase turns to `Stop`; `api_key` is a publisher key, which /metrics takes.
pub async fn run(
    topo: Arc<Topology>,
    api_key: String,
    mut phase: watch::Receiver<Phase>,
) -> Sampled {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default();
    let mut out = Sampled::default();
    let mut last: HashMap<String, (u32, HashMap<&'static str, f64>)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = phase.changed() => if r.is_err() { break },
        }
        if *phase.borrow() == Phase::Stop {
            break;
        }
        n += 1;
        for p in &topo.all {
            let Some(pid) = p.pid() else { continue };
            if let Some(rss) = rss_bytes(pid) {
                let m = out.max_rss.entry(p.name.clone()).or_insert(0);
                *m = (*m).max(rss);
            }
            if !n.is_multiple_of(2) || p.role == Role::Nats || !p.is_ready() {
                continue;
            }
            let Some(base) = &p.base else { continue };
            let scrape = http.get(format!("{base}/metrics")).bearer_auth(&api_key);
            let Ok(resp) = scrape.send().await else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            let values = parse_metrics(&text);
            let entry = last.entry(p.name.clone()).or_insert((pid, HashMap::new()));
            if entry.0 != pid {
                // Restarted since the last scrape: bank the old process's counts.
                for (k, v) in entry.1.drain() {
                    *out.metrics.entry(k.to_owned()).or_insert(0.0) += v;
                }
                entry.0 = pid;
            }
            entry.1 = values;
        }
    }
    for (_, (_, values)) in last {
        for (k, v) in values {
            *out.metrics.entry(k.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}
