//! Flags of `herald check`.

use std::path::PathBuf;
use std::time::Duration;

/// Which deployment the checker starts and breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// One `herald serve` (embedded store), killed and restarted on the same port and data dir.
    Single,
    /// NATS, 2 dispatchers and 3 nodes over a Cassandra/ScyllaDB (`--cql`), each killed and
    /// restarted in turn.
    Cluster,
}

/// Flags of `herald check`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// What to start and inject faults into.
    #[arg(long, value_enum, default_value = "single")]
    pub target: TargetKind,
    /// How long publishers publish (faults are injected meanwhile): `60s`, `5m`, `1500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent SSE subscribers (each follows 1–3 channels in one stream).
    #[arg(long, default_value_t = 40)]
    pub subscribers: usize,
    /// Channels, spread over the namespaces `tiny:` (retention 20), `live:` and `user:`.
    #[arg(long, default_value_t = 6)]
    pub channels: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Mean time between injected faults (each interval is randomized ±50%); `0s` for none.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// Seed of every random choice (printed in the report, to replay a run's choices).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cassandra/ScyllaDB contact point(s) `host:port` for `--target cluster`.
    #[arg(long, env = "HERALD_CQL")]
    pub cql: Option<String>,
    /// Largest server RSS (any process, MiB) before it counts as a violation.
    #[arg(long, default_value_t = 512)]
    pub max_rss_mb: u64,
    /// How long subscribers get, after publishing stopped, to reach every channel's head.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub catch_up: Duration,
    /// `HERALD_QUEUE_CAP` of the servers (small, so slow readers get disconnected).
    #[arg(long, default_value_t = 64)]
    pub queue_cap: usize,
    /// The `herald` executable to start (default: this one).
    #[arg(long)]
    pub herald_bin: Option<PathBuf>,
    /// The `nats-server` executable (default: `$NATS_SERVER`, PATH, /usr/sbin).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// Keep the run directory (server logs, data) even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// Also print the report as one JSON line (the last line of the output).
    #[arg(long)]
    pub json: bool,
    /// Drop one received event before verification, to show the checker catches a gap.
    #[arg(long, hide = true)]
    pub selftest_violation: bool,
}

/// A duration flag that did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use e.g. 300ms, 20s, 1.5s, 5m, 1h (a bare number is seconds)")]
pub struct DurationError(pub String);

/// Parses `300ms`, `20s`, `1.5s`, `5m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let err = || DurationError(s.to_owned());
    let (num, unit_secs) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 {
        return Err(err());
    }
    Duration::try_from_secs_f64(v * unit_secs).map_err(|_| err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
