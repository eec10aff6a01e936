//! The result of a run: a human summary and, with `--json`, one JSON line.

use crate::args::TargetKind;
use crate::publisher::PublishStats;
use crate::subscriber::SubscribeStats;
use crate::verify::{EventStats, FinalSummary, Violation};
use serde::Serialize;
use std::collections::BTreeMap;

/// Violation details kept in the report (the counts cover all of them).
pub const MAX_DETAILS: usize = 200;

#[derive(Debug, Serialize)]
pub struct Report {
    /// No violation.
    pub ok: bool,
    pub target: TargetKind,
    pub seed: u64,
    pub duration_s: f64,
    pub wall_s: f64,
    pub publishers: usize,
    pub subscribers: usize,
    pub clients: usize,
    pub channels: Vec<String>,
    pub publish: PublishStats,
    pub subscribe: SubscribeStats,
    pub events: EventStats,
    pub resets_by_reason: BTreeMap<String, u64>,
    /// Injected faults by kind (`sigkill server`, `sigterm server`, `sigkill node`, …).
    pub faults: BTreeMap<String, u64>,
    /// `sigkill` + `sigterm` of any process.
    pub kills: u64,
    pub fault_notes: Vec<String>,
    /// Every fault: `t=12.3s sigkill d1 (back in 812ms)`.
    pub fault_log: Vec<String>,
    pub verification: FinalSummary,
    /// Counters scraped from the servers' /metrics, summed over processes and restarts.
    pub server_metrics: BTreeMap<String, f64>,
    pub max_rss_mb: f64,
    pub max_rss_mb_by_process: BTreeMap<String, f64>,
    pub subscribers_caught_up: usize,
    /// Violations by kind.
    pub violations: BTreeMap<String, u64>,
    pub violation_count: u64,
    pub violation_details: Vec<Violation>,
    /// Logs and data of the run (kept when it failed or with `--keep`).
    pub run_dir: Option<String>,
}

impl Report {
    pub fn new_violations(all: &[Violation]) -> (BTreeMap<String, u64>, Vec<Violation>) {
        let mut counts = BTreeMap::new();
        for v in all {
            *counts.entry(v.kind.name()).or_insert(0) += 1;
        }
        // Details: a few of every kind first, then the rest in order.
        let mut details: Vec<Violation> = Vec::new();
        let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
        for v in all {
            let n = per_kind.entry(v.kind.name()).or_insert(0);
            if *n < 20 && details.len() < MAX_DETAILS {
                details.push(v.clone());
                *n += 1;
            }
        }
        (counts, details)
    }

    /// The human summary, then the JSON line when `json`.
    pub fn print(&self, json: bool) {
        println!("{}", self.human());
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
        }
    }

    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let target = match self.target {
            TargetKind::Single => "single",
            TargetKind::Cluster => "cluster",
        };
        let _ = writeln!(
            s,
            "herald check: {} — target {target}, seed {}, {:.0} s of faults ({:.0} s wall)",
            if self.ok { "PASS" } else { "FAIL" },
            self.seed,
            self.duration_s,
            self.wall_s
        );
        let _ = writeln!(
            s,
            "  clients      {} ({} publishers, {} subscribers) on {} channels: {}",
            self.clients,
            self.publishers,
            self.subscribers,
            self.channels.len(),
            self.channels.join(" ")
        );
        let p = &self.publish;
        let _ = writeln!(
            s,
            "  publish      {} reliable messages ({} batches), {} acked 2xx ({} attempts, {} retried, {} re-sent on purpose, {} never acked); {} ephemeral ({} failed)",
            p.messages, p.batches, p.acked, p.attempts, p.retried, p.resent, p.unacked, p.ephemeral, p.ephemeral_failed
        );
        let e = &self.events;
        let sub = &self.subscribe;
        let _ = writeln!(
            s,
            "  subscribe    {} sessions ({} connects, {} refused/failed), {} reliable + {} ephemeral events, {} resets {:?}",
            e.sessions,
            sub.connects,
            sub.connect_failures,
            e.reliable,
            e.ephemeral,
            e.resets,
            self.resets_by_reason
        );
        let _ = writeln!(
            s,
            "               resumes: {} last id, {} older id, {} fresh; {} slow + {} stalled + {} frozen sessions; {} ended by the server, {} by the client; {}/{} caught up",
            sub.resumed_last,
            sub.resumed_older,
            sub.fresh_starts,
            sub.slow_sessions,
            sub.stall_sessions,
            sub.freeze_sessions,
            sub.ended_by_server,
            sub.ended_by_client,
            self.subscribers_caught_up,
            self.subscribers
        );
        if !sub.connect_failure_reasons.is_empty() {
            let _ = writeln!(
                s,
                "               failed connects: {:?}",
                sub.connect_failure_reasons
            );
        }
        let _ = writeln!(s, "  faults       {} kills {:?}", self.kills, self.faults);
        if !self.ok {
            for f in &self.fault_log {
                let _ = writeln!(s, "               {f}");
            }
        }
        for n in &self.fault_notes {
            let _ = writeln!(s, "               note: {n}");
        }
        let v = &self.verification;
        let _ = writeln!(
            s,
            "  verified     {} acks in history ({} trimmed by retention), {} stored messages, {} delivered positions, {} resets judged",
            v.acks_verified, v.acks_trimmed, v.history_messages, v.deliveries_verified, v.resets_judged
        );
        if !self.server_metrics.is_empty() {
            let m: Vec<String> = self
                .server_metrics
                .iter()
                .map(|(k, v)| format!("{}={v}", k.trim_start_matches("herald_")))
                .collect();
            let _ = writeln!(s, "  server       {}", m.join(" "));
        }
        let _ = writeln!(
            s,
            "  memory       max RSS {:.1} MiB {:?}",
            self.max_rss_mb, self.max_rss_mb_by_process
        );
        let _ = writeln!(
            s,
            "  violations   {}{}",
            self.violation_count,
            if self.violations.is_empty() {
                String::new()
            } else {
                format!(" {:?}", self.violations)
            }
        );
        for d in &self.violation_details {
            let _ = writeln!(s, "    [{}] {}", d.kind.name(), d.detail);
        }
        if (self.violation_details.len() as u64) < self.violation_count {
            let _ = writeln!(
                s,
                "    … {} more",
                self.violation_count - self.violation_details.len() as u64
            );
        }
        if let Some(d) = &self.run_dir {
            let _ = writeln!(s, "  run dir      {d}");
        }
        s
    }
}
