//! The deployment under test: processes the checker starts, the endpoints clients use, and
//! the faults it injects.

pub mod cluster;
pub mod single;

use crate::args::{Args, TargetKind};
use crate::procs::ProcShared;
use crate::verify::Violation;
use rand::rngs::StdRng;
use rand::Rng;
use std::path::Path;
use std::sync::Arc;

/// Credentials the checker generates for its servers.
#[derive(Clone)]
pub struct Secrets {
    pub api_key: String,
    pub jwt_secret: String,
    pub cluster_secret: String,
}

impl Secrets {
    pub fn random(rng: &mut StdRng) -> Self {
        let mut hex = |n: usize| -> String {
            (0..n)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect()
        };
        Self {
            api_key: format!("check-{}", hex(24)),
            jwt_secret: hex(40),
            cluster_secret: hex(40),
        }
    }
}

/// Where clients go. Single target: one server is both lists.
pub struct Topology {
    pub dispatchers: Vec<Arc<ProcShared>>,
    pub nodes: Vec<Arc<ProcShared>>,
    /// Every process (memory sampling, metrics).
    pub all: Vec<Arc<ProcShared>>,
}

impl Topology {
    fn pick(list: &[Arc<ProcShared>], rng: &mut impl Rng, avoid: Option<usize>) -> usize {
        let ready: Vec<usize> = (0..list.len())
            .filter(|&i| list[i].is_ready() && Some(i) != avoid)
            .collect();
        if ready.is_empty() {
            rng.gen_range(0..list.len())
        } else {
            ready[rng.gen_range(0..ready.len())]
        }
    }

    /// A random ready dispatcher, other than `avoid` when another is ready.
    pub fn pick_dispatcher(&self, rng: &mut impl Rng, avoid: Option<usize>) -> usize {
        Self::pick(&self.dispatchers, rng, avoid)
    }

    pub fn pick_node(&self, rng: &mut impl Rng) -> usize {
        Self::pick(&self.nodes, rng, None)
    }

    pub fn base(p: &ProcShared) -> &str {
        p.base.as_deref().unwrap_or("http://127.0.0.1:0")
    }
}

/// What one injected fault did.
#[derive(Debug, Default)]
pub struct FaultOutcome {
    /// e.g. `sigkill server`, `sigterm server`, `sigkill node`, `sigkill nats`.
    pub kind: String,
    /// Which process (`server`, `d1`, `n0`, `nats`).
    pub victim: String,
    /// Something notable that is not a violation of a guarantee (a slow graceful shutdown).
    pub note: Option<String>,
    pub violations: Vec<Violation>,
}

/// The runtime configuration every Herald process of a run gets.
pub struct ServerConf<'a> {
    pub args: &'a Args,
    pub secrets: &'a Secrets,
    /// The `--config` TOML file (namespace retention).
    pub config_path: &'a Path,
    pub run_dir: &'a Path,
}

impl ServerConf<'_> {
    fn env(&self) -> Vec<(String, String)> {
        let log = std::env::var("HERALD_CHECK_LOG").unwrap_or_else(|_| "warn".to_owned());
        vec![
            (
                "HERALD_API_KEYS".into(),
                format!("checker:{}", self.secrets.api_key),
            ),
            ("HERALD_JWT_SECRET".into(), self.secrets.jwt_secret.clone()),
            ("HERALD_QUEUE_CAP".into(), self.args.queue_cap.to_string()),
            ("HERALD_RETENTION_SWEEP_SECS".into(), "1".into()),
            ("HERALD_LOG".into(), log),
        ]
    }
}

pub enum Target {
    Single(single::Single),
    Cluster(cluster::Cluster),
}

impl Target {
    /// Starts every process and waits until all are ready.
    pub async fn start(conf: &ServerConf<'_>) -> anyhow::Result<Target> {
        Ok(match conf.args.target {
            TargetKind::Single => Target::Single(single::Single::start(conf).await?),
            TargetKind::Cluster => Target::Cluster(cluster::Cluster::start(conf).await?),
        })
    }

    pub fn topology(&self) -> Arc<Topology> {
        match self {
            Target::Single(s) => s.topology(),
            Target::Cluster(c) => c.topology(),
        }
    }

    /// Kills something (and restarts it); returns once it is ready again.
    pub async fn inject_fault(&mut self, rng: &mut StdRng) -> FaultOutcome {
        match self {
            Target::Single(s) => s.inject_fault(rng).await,
            Target::Cluster(c) => c.inject_fault(rng).await,
        }
    }

    /// Restarts whatever is down (a process that crashed by itself is a violation).
    pub async fn ensure_up(&mut self) -> Vec<Violation> {
        match self {
            Target::Single(s) => s.ensure_up().await,
            Target::Cluster(c) => c.ensure_up().await,
        }
    }

    /// Stops every process; the cluster target also drops its keyspace (best effort).
    pub async fn shutdown(self) -> Vec<String> {
        match self {
            Target::Single(s) => s.shutdown().await,
            Target::Cluster(c) => c.shutdown().await,
        }
    }
}

/// Restarts `p` (up to 3 attempts); a violation when it never comes back.
pub(crate) async fn restart(p: &mut crate::procs::Managed, out: &mut FaultOutcome) {
    let mut last = String::new();
    for attempt in 1..=3 {
        match p.start(std::time::Duration::from_secs(40)).await {
            Ok(took) => {
                if attempt > 1 || took > std::time::Duration::from_secs(10) {
                    out.note = Some(format!(
                        "{} took {took:.1?} to become ready (attempt {attempt})",
                        p.name()
                    ));
                }
                return;
            }
            Err(e) => last = format!("{e:#}"),
        }
    }
    out.violations.push(Violation::new(
        crate::verify::Kind::Availability,
        format!("{} did not restart after {}: {last}", p.name(), out.kind),
    ));
}

/// A process that exited by itself between faults is a crash worth reporting.
pub(crate) async fn revive(p: &mut crate::procs::Managed, v: &mut Vec<Violation>) {
    if let Some(status) = p.exited() {
        v.push(Violation::new(
            crate::verify::Kind::Availability,
            format!(
                "{} exited by itself ({status}); log tail:\n{}",
                p.name(),
                crate::procs::tail(p.log_path(), 15)
            ),
        ));
    }
    if !p.is_running() {
        let mut out = FaultOutcome {
            kind: "a crash".into(),
            ..Default::default()
        };
        restart(p, &mut out).await;
        v.extend(out.violations);
    }
}
