//! `--target cluster`: a fresh keyspace (`herald migrate`) on the given Cassandra/ScyllaDB,
//! its own `nats-server`, 2 `herald dispatcher`s and 3 `herald node`s on fixed ports. Faults
//! kill one process with `SIGKILL` — a node, a dispatcher or NATS — and restart it on the same
//! port. The keyspace is dropped at the end (best effort).

use super::{restart, revive, FaultOutcome, ServerConf, Topology};
use crate::cql;
use crate::procs::{free_ports, herald_bin, nats_bin, tail, Managed, Ready, Role};
use crate::verify::Violation;
use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DISPATCHERS: usize = 2;
const NODES: usize = 3;
const MEMBERSHIP_TTL_MS: u64 = 2000;

pub struct Cluster {
    cql: String,
    keyspace: String,
    nats: Managed,
    dispatchers: Vec<Managed>,
    nodes: Vec<Managed>,
    topo: Arc<Topology>,
    /// Kinds of process the next faults hit.
    next_kinds: Vec<Role>,
}

impl Cluster {
    pub async fn start(conf: &ServerConf<'_>) -> anyhow::Result<Self> {
        let Some(cql) = conf.args.cql.clone().filter(|c| !c.trim().is_empty()) else {
            bail!("--target cluster needs --cql HOST:PORT (or HERALD_CQL) of a Cassandra/ScyllaDB");
        };
        let herald = herald_bin(conf.args.herald_bin.as_deref())?;
        let keyspace = format!("herald_check_{:08x}", rand::random::<u32>());
        cql::exec(
            &cql,
            "SELECT release_version FROM system.local",
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("Cassandra/ScyllaDB at {cql} is not answering"))?;
        migrate(&herald, &cql, &keyspace, conf.run_dir).await?;
        let started = Self::start_processes(conf, &herald, &cql, &keyspace).await;
        if started.is_err() {
            let _ = drop_keyspace(&cql, &keyspace).await;
        }
        started
    }

    async fn start_processes(
        conf: &ServerConf<'_>,
        herald: &Path,
        cql: &str,
        keyspace: &str,
    ) -> anyhow::Result<Self> {
        let ports = free_ports(1 + DISPATCHERS + NODES)?;
        let nats_url = format!("nats://127.0.0.1:{}", ports[0]);
        let mut nats = Managed::new(
            "nats",
            Role::Nats,
            &nats_bin(conf.args.nats_server.as_deref()),
            vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                ports[0].to_string(),
            ],
            Vec::new(),
            conf.run_dir,
            Ready::Tcp(ports[0]),
        );
        nats.start(Duration::from_secs(20))
            .await
            .context("starting nats-server (apt-get install nats-server, or --nats-server)")?;
        let role_args = |role: &str, id: &str, port: u16| -> Vec<String> {
            let mut a = vec![
                role.to_owned(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--cql".into(),
                cql.to_owned(),
                "--keyspace".into(),
                keyspace.to_owned(),
                "--nats".into(),
                nats_url.clone(),
                "--id".into(),
                id.to_owned(),
                "--config".into(),
                conf.config_path.display().to_string(),
            ];
            if role == "dispatcher" {
                a.push("--membership-ttl-ms".into());
                a.push(MEMBERSHIP_TTL_MS.to_string());
            }
            a
        };
        let mut env = conf.env();
        env.push((
            "HERALD_CLUSTER_SECRET".into(),
            conf.secrets.cluster_secret.clone(),
        ));
        let mut cluster = Cluster {
            cql: cql.to_owned(),
            keyspace: keyspace.to_owned(),
            nats,
            dispatchers: Vec::new(),
            nodes: Vec::new(),
            topo: Arc::new(Topology {
                dispatchers: Vec::new(),
                nodes: Vec::new(),
                all: Vec::new(),
            }),
            next_kinds: Vec::new(),
        };
        for i in 0..DISPATCHERS {
            let port = ports[1 + i];
            let name = format!("d{i}");
            cluster.dispatchers.push(Managed::new(
                &name,
                Role::Dispatcher,
                herald,
                role_args("dispatcher", &name, port),
                env.clone(),
                conf.run_dir,
                Ready::Http(format!("http://127.0.0.1:{port}")),
            ));
        }
        for i in 0..NODES {
            let port = ports[1 + DISPATCHERS + i];
            let name = format!("n{i}");
            cluster.nodes.push(Managed::new(
                &name,
                Role::Node,
                herald,
                role_args("node", &name, port),
                env.clone(),
                conf.run_dir,
                Ready::Http(format!("http://127.0.0.1:{port}")),
            ));
        }
        // From here on `cluster` owns everything: an error drops (kills) it all.
        for p in cluster
            .dispatchers
            .iter_mut()
            .chain(cluster.nodes.iter_mut())
        {
            p.start(Duration::from_secs(60)).await?;
        }
        let all = std::iter::once(cluster.nats.shared.clone())
            .chain(cluster.dispatchers.iter().map(|p| p.shared.clone()))
            .chain(cluster.nodes.iter().map(|p| p.shared.clone()))
            .collect();
        cluster.topo = Arc::new(Topology {
            dispatchers: cluster
                .dispatchers
                .iter()
                .map(|p| p.shared.clone())
                .collect(),
            nodes: cluster.nodes.iter().map(|p| p.shared.clone()).collect(),
            all,
        });
        Ok(cluster)
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.topo.clone()
    }

    pub async fn inject_fault(&mut self, rng: &mut StdRng) -> FaultOutcome {
        let mut out = FaultOutcome {
            violations: self.ensure_up().await,
            ..Default::default()
        };
        // Every round of three faults hits a node, a dispatcher and NATS, in random order.
        if self.next_kinds.is_empty() {
            self.next_kinds = vec![Role::Node, Role::Dispatcher, Role::Nats];
            self.next_kinds.shuffle(rng);
        }
        let p = match self.next_kinds.pop() {
            Some(Role::Node) => {
                let i = rng.gen_range(0..self.nodes.len());
                &mut self.nodes[i]
            }
            Some(Role::Dispatcher) => {
                let i = rng.gen_range(0..self.dispatchers.len());
                &mut self.dispatchers[i]
            }
            _ => &mut self.nats,
        };
        out.kind = format!("sigkill {}", p.shared.role.name());
        out.victim = p.name().to_owned();
        p.kill9().await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        restart(p, &mut out).await;
        out
    }

    pub async fn ensure_up(&mut self) -> Vec<Violation> {
        let mut v = Vec::new();
        revive(&mut self.nats, &mut v).await;
        for p in self.dispatchers.iter_mut().chain(self.nodes.iter_mut()) {
            revive(p, &mut v).await;
        }
        v
    }

    pub async fn shutdown(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for p in self.dispatchers.iter_mut().chain(self.nodes.iter_mut()) {
            p.kill9().await;
        }
        self.nats.kill9().await;
        if let Err(e) = drop_keyspace(&self.cql, &self.keyspace).await {
            notes.push(format!("could not drop keyspace {}: {e:#}", self.keyspace));
        }
        notes
    }
}

async fn drop_keyspace(cql: &str, keyspace: &str) -> anyhow::Result<()> {
    cql::exec(
        cql,
        &format!("DROP KEYSPACE IF EXISTS {keyspace}"),
        Duration::from_secs(60),
    )
    .await
}

/// `herald migrate` into a fresh keyspace (replication factor 1).
async fn migrate(herald: &Path, cql: &str, keyspace: &str, log_dir: &Path) -> anyhow::Result<()> {
    let log = log_dir.join("migrate.log");
    let logf = std::fs::File::create(&log)?;
    let mut cmd = tokio::process::Command::new(herald);
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["migrate", "--cql", cql, "--keyspace", keyspace])
        .args([
            "--replication",
            "{'class':'SimpleStrategy','replication_factor':1}",
        ])
        .env("HERALD_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .kill_on_drop(true)
        .spawn()
        .context("spawning herald migrate")?;
    match tokio::time::timeout(Duration::from_secs(120), child.wait()).await {
        Ok(status) => {
            let status = status?;
            anyhow::ensure!(
                status.success(),
                "herald migrate --keyspace {keyspace} failed ({status}):\n{}",
                tail(&log, 30)
            );
            Ok(())
        }
        Err(_) => bail!(
            "herald migrate did not finish within 120 s:\n{}",
            tail(&log, 30)
        ),
    }
}
