//! The measured window of a run: role accounting (/proc) and the processes' counters, read
//! at its start and end and put into the report.

use crate::coordinator::Args;
use crate::counters::{Snapshot, Sources};
use crate::report::Report;
use crate::roles::{Role, Sample};
use crate::target::{Kind, Target};
use scylla::client::session::Session;
use std::sync::Arc;

pub struct Meter {
    roles: Vec<Role>,
    sources: Sources,
    /// RSS before anything happened.
    before: Sample,
    start: Option<(Snapshot, Sample)>,
    end: Option<(Snapshot, Sample)>,
}

impl Meter {
    /// Resolves the roles (every pid must be running) and connects to Cassandra when `--cql`
    /// is given. `keyspace`: whose tables' coordinator counts are reported.
    pub async fn new(args: &Args, target: &Target, keyspace: &str) -> anyhow::Result<Meter> {
        let roles = crate::roles::resolve(args.cluster_dir.as_deref(), &args.roles)?;
        let mut herald = Vec::new();
        if target.kind == Kind::Herald {
            if target.is_cluster() {
                for a in target.publish_addrs.iter().chain(&target.node_addrs) {
                    if !herald.contains(a) {
                        herald.push(*a);
                    }
                }
                let half = target.publish_addrs.is_empty() || target.node_addrs.is_empty();
                if half && !herald.contains(&target.addr) {
                    herald.push(target.addr);
                }
            } else {
                herald.push(target.addr);
            }
        }
        let cql = match &args.cql {
            Some(points) => Some(Arc::new(crate::cql::connect(points).await?)),
            None => None,
        };
        let before = crate::roles::sample(&roles);
        Ok(Meter {
            roles,
            sources: Sources {
                herald,
                metrics_key: args.api_key.clone(),
                nats_monitor: args.nats_monitor.clone(),
                cql,
                keyspace: keyspace.to_owned(),
            },
            before,
            start: None,
            end: None,
        })
    }

    pub fn session(&self) -> Option<Arc<Session>> {
        self.sources.cql.clone()
    }

    /// Waits (up to a minute) until the Herald processes stop reading the store: nodes read
    /// each channel's head when its first subscriber joins and again once their fabric
    /// subscription is confirmed, which after a connection storm goes on for a while. The
    /// window measures steady state, not the tail of the joins.
    pub async fn settle(&self) {
        if self.sources.herald.is_empty() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut last = self
            .sources
            .snapshot()
            .await
            .herald_sum("cql_read_requests");
        while last.is_some() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = self
                .sources
                .snapshot()
                .await
                .herald_sum("cql_read_requests");
            // Dispatchers read the lease table a few times a second whatever the load.
            if let (Some(a), Some(b)) = (last, now) {
                if b - a <= 5.0 {
                    return;
                }
            }
            last = now;
        }
    }

    /// Opens the window: counters first, then CPU (the scrapes stay outside the CPU window).
    pub async fn start(&mut self) {
        let snap = self.sources.snapshot().await;
        self.start = Some((snap, crate::roles::sample(&self.roles)));
    }

    /// Closes the window: CPU first, then counters.
    pub async fn end(&mut self) {
        let sample = crate::roles::sample(&self.roles);
        self.end = Some((self.sources.snapshot().await, sample));
    }

    /// Puts roles and counters into `report`: per 1,000 of `publishes` (the messages
    /// published inside the window) and of the report's deliveries.
    pub fn fill(&self, report: &mut Report, publishes: u64) {
        let (Some((s0, c0)), Some((s1, c1))) = (&self.start, &self.end) else {
            return;
        };
        if !self.roles.is_empty() {
            report.roles = crate::roles::report(
                &self.roles,
                &self.before,
                c0,
                c1,
                publishes,
                report.deliveries,
            );
        }
        if !self.sources.is_empty() {
            report.counters = Some(crate::counters::delta(s0, s1, publishes));
        }
    }
}
