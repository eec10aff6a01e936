//! Harness for the cluster tests: a fresh Cassandra keyspace (`herald migrate`), a NATS server
//! the test can kill and restart, and `herald dispatcher` / `herald node` processes, each
//! started like `common::Server` (real binary on 127.0.0.1:0, killed on drop).
//!
//! The tests need a Cassandra/ScyllaDB: `HERALD_CQL=host:port[,host:port…]`. Without it they
//! fail, unless `HERALD_SKIP_CLUSTER=1` is set (then they pass without running). They need
//! `nats-server` (on PATH, in /usr/sbin, or `NATS_SERVER=/path/to/nats-server`).
//!
//! Every process writes its stderr to a log file in a per-test directory; when a test does not
//! reach [`Cluster::passed`], the tail of every log is printed (libtest shows it with the
//! failure) and the directory is kept.

use crate::common::{token, API_KEY, SECRET};
use anyhow::{bail, Context};
use herald_check::cql;
use herald_client::{Client, Publish, Subscription};
use herald_proto::{Cursor, Position, PublishResult, SseEvent};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared by all dispatchers of a test cluster (internal forwarding).
pub const CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";
/// How long a process may take from spawn to `/readyz` 200.
pub const READY_WAIT: Duration = Duration::from_secs(40);

/// `Some(contact points)` when the cluster tests should run; `None` when they are skipped with
/// `HERALD_SKIP_CLUSTER=1`. Panics (the test fails) when neither is set.
pub fn cql_or_skip(test: &str) -> Option<String> {
    match std::env::var("HERALD_CQL") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().to_owned()),
        _ if std::env::var("HERALD_SKIP_CLUSTER").as_deref() == Ok("1") => {
            eprintln!("{test}: skipped (HERALD_SKIP_CLUSTER=1 and no HERALD_CQL)");
            None
        }
        _ => panic!(
            "{test}: the cluster tests need a Cassandra/ScyllaDB: set HERALD_CQL=127.0.0.1:PORT \
             (CASSANDRA_PORT=19042 scripts/cassandra-up starts one), or set HERALD_SKIP_CLUSTER=1 \
             to skip them"
        ),
    }
}

/// `Some((contact point, PEM CA))` of the Cassandra that requires a password and TLS
/// (`HERALD_CQL_SECURE`, `HERALD_CQL_SECURE_CA`; `CASSANDRA_SECURE=1 scripts/cassandra-up`
/// starts one); `None` when skipped with `HERALD_SKIP_CLUSTER=1`. Panics when neither is set.
pub fn secure_cql_or_skip(test: &str) -> Option<(String, PathBuf)> {
    match (
        std::env::var("HERALD_CQL_SECURE"),
        std::env::var("HERALD_CQL_SECURE_CA"),
    ) {
        (Ok(cql), Ok(ca)) if !cql.trim().is_empty() => Some((cql.trim().to_owned(), ca.into())),
        _ if std::env::var("HERALD_SKIP_CLUSTER").as_deref() == Ok("1") => {
            eprintln!("{test}: skipped (HERALD_SKIP_CLUSTER=1 and no HERALD_CQL_SECURE)");
            None
        }
        _ => panic!(
            "{test}: needs a Cassandra requiring a password and TLS: set HERALD_CQL_SECURE and \
             HERALD_CQL_SECURE_CA (CASSANDRA_SECURE=1 scripts/cassandra-up starts one and \
             writes its ca.pem), or set HERALD_SKIP_CLUSTER=1 to skip"
        ),
    }
}

/// Every link of a test cluster authenticated and encrypted: the secure Cassandra (its
/// superuser, TLS), nats-server with TLS and a user, dispatchers and nodes serving HTTPS
/// with one self-signed certificate, dispatchers forwarding to each other over HTTPS.
#[derive(Clone)]
struct Locked {
    cert: PathBuf,
    key: PathBuf,
    cert_pem: String,
    cql_ca: PathBuf,
}

const NATS_USER: &str = "herald-fabric";
const NATS_PASSWORD: &str = "fabric-password-0123456789";

impl Locked {
    fn new(dir: &Path, cql_ca: PathBuf) -> anyhow::Result<Locked> {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        let cert_pem = ck.cert.pem();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, &cert_pem)?;
        std::fs::write(&key, ck.key_pair.serialize_pem())?;
        Ok(Locked {
            cert,
            key,
            cert_pem,
            cql_ca,
        })
    }

    fn nats_args(&self) -> Vec<String> {
        let mut a = vec!["--tls".to_owned(), "--tlscert".to_owned()];
        a.push(self.cert.display().to_string());
        a.push("--tlskey".to_owned());
        a.push(self.key.display().to_string());
        a.extend(["--user", NATS_USER, "--pass", NATS_PASSWORD].map(str::to_owned));
        a
    }

    /// Flags and environment of `herald migrate` (`role` None), a dispatcher or a node. The
    /// passwords go through the environment, as they should in production (not in `ps`).
    fn apply(&self, cmd: &mut Command, role: Option<Role>) {
        cmd.arg("--cql-tls-ca").arg(&self.cql_ca);
        cmd.env("HERALD_CQL_USER", "cassandra")
            .env("HERALD_CQL_PASSWORD", "cassandra");
        let Some(role) = role else { return };
        cmd.arg("--tls-cert").arg(&self.cert);
        cmd.arg("--tls-key").arg(&self.key);
        cmd.arg("--nats-tls-ca").arg(&self.cert);
        cmd.env("HERALD_NATS_USER", NATS_USER)
            .env("HERALD_NATS_PASSWORD", NATS_PASSWORD);
        if role == Role::Dispatcher {
            cmd.arg("--cluster-tls-ca").arg(&self.cert);
        }
    }
}

/// An HTTP client for a cluster's processes: trusts the test certificate when they serve TLS.
fn http_client(locked: Option<&Locked>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(l) = locked {
        b = b
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(l.cert_pem.as_bytes())?);
    }
    Ok(b.build()?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..10)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.gen_range(0..36)]))
        .collect()
}

/// SIGKILL then reap.
fn kill_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------

/// `$NATS_SERVER`, else `nats-server` on PATH, else the Debian package's `/usr/sbin` one.
fn nats_server_bin() -> String {
    if let Ok(b) = std::env::var("NATS_SERVER") {
        return b;
    }
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nats-server").is_file()));
    if !on_path {
        for p in ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"] {
            if Path::new(p).is_file() {
                return p.to_owned();
            }
        }
    }
    "nats-server".to_owned()
}

/// A `nats-server` child on a fixed port; can be killed and started again on the same port.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
    /// Extra flags (TLS, a user).
    args: Vec<String>,
}

impl Nats {
    /// Picks the port without starting the server (start it with [`restart`](Self::restart)).
    pub fn reserve(log_dir: &Path) -> anyhow::Result<Nats> {
        Ok(Nats {
            child: None,
            port: free_port()?,
            log: log_dir.join("nats.log"),
            args: Vec::new(),
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "nats-server already running");
        let bin = nats_server_bin();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "spawning {bin} (install it: apt-get install nats-server, or set NATS_SERVER)"
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !port_open(self.port) {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited at start ({status}); log:\n{}",
                    tail(&self.log, 20)
                );
            }
            if Instant::now() > deadline {
                kill_child(&mut child);
                bail!(
                    "nats-server not accepting on port {} within 15 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: every connection drops at once, nothing in flight is delivered.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Which role a cluster process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Dispatcher,
    Node,
}

/// A running `herald dispatcher` or `herald node`; killed when dropped.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub role: Role,
    pub base: String,
    pub log: PathBuf,
    /// Trusts the cluster's certificate when it serves TLS.
    http: reqwest::Client,
}

impl Proc {
    fn spawn(
        role: Role,
        name: &str,
        cluster: &ClusterConf,
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let logf = std::fs::File::create(&log)?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(match role {
            Role::Dispatcher => "dispatcher",
            Role::Node => "node",
        })
        .args(["--listen", "127.0.0.1:0"])
        .args(["--cql", &cluster.cql])
        .args(["--keyspace", &cluster.keyspace])
        .args(["--nats", &cluster.nats_url]);
        cmd.args(["--id", name]);
        if role == Role::Dispatcher {
            cmd.args([
                "--membership-ttl-ms",
                &cluster.membership_ttl.as_millis().to_string(),
            ]);
        }
        if let (Role::Node, Some(d)) = (role, cluster.node_drain) {
            cmd.args(["--drain-secs", &d.as_secs().to_string()]);
        }
        if let Some(l) = &cluster.locked {
            l.apply(&mut cmd, Some(role));
        }
        cmd.envs(cluster.env.iter().map(|(k, v)| (k, v)));
        cmd.env("HERALD_API_KEYS", API_KEY)
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_CLUSTER_SECRET", CLUSTER_SECRET)
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        let mut child = cmd.spawn().context("spawning herald")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep draining after the listening line so the child never blocks on stdout.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("herald listening on ") {
                        return Ok(Proc {
                            child: Some(child),
                            name: name.to_owned(),
                            role,
                            base: url.trim().to_owned(),
                            log,
                            http: http_client(cluster.locked.as_ref())?,
                        });
                    }
                }
                Err(_) => {
                    kill_child(&mut child);
                    bail!(
                        "herald {name} ({role:?}) did not report listening; log:\n{}",
                        tail(&log, 40)
                    );
                }
            }
        }
    }

    /// Polls `/readyz` until 200 or `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let http = &self.http;
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            match http
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} ({:?}) not ready within {limit:?} (last /readyz: {last}); log:\n{}",
            self.name,
            self.role,
            tail(&self.log, 40)
        )
    }

    /// Reads one metric value from /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let scrape = self
            .http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(API_KEY)
            .send();
        let text = match scrape.await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0.0,
        };
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// `/readyz` status code (0 when it does not answer).
    pub async fn readyz(&self) -> u16 {
        match self
            .http
            .get(format!("{}/readyz", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP` / `libc::SIGCONT` to pause and resume the process).
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on a child pid we own and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// SIGKILL: a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    pub fn publisher(&self) -> Client {
        self.client().with_api_key(API_KEY)
    }

    pub fn subscriber(&self, patterns: &[&str]) -> Client {
        self.client().with_token(token("u1", patterns))
    }

    fn client(&self) -> Client {
        Client::new(&self.base).with_http(self.http.clone())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Clone)]
struct ClusterConf {
    cql: String,
    keyspace: String,
    nats_url: String,
    membership_ttl: Duration,
    node_drain: Option<Duration>,
    locked: Option<Locked>,
    env: Vec<(String, String)>,
}

/// What to start.
pub struct Spec {
    pub dispatchers: usize,
    pub nodes: usize,
    pub membership_ttl: Duration,
    /// Start the processes before NATS, and do not wait for them to be ready.
    pub nats_down_at_start: bool,
    /// `--drain-secs` of the nodes (default: the role's).
    pub node_drain: Option<Duration>,
    /// Every link authenticated and encrypted, on the Cassandra of `HERALD_CQL_SECURE`.
    pub locked: bool,
    /// More environment for every dispatcher and node (`HERALD_*` settings).
    pub env: Vec<(String, String)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            dispatchers: 2,
            nodes: 2,
            membership_ttl: Duration::from_millis(3000),
            nats_down_at_start: false,
            node_drain: None,
            locked: false,
            env: Vec::new(),
        }
    }
}

/// A whole test cluster: keyspace, NATS, dispatchers `d0…`, nodes `n0…`.
pub struct Cluster {
    pub test: String,
    pub cql: String,
    pub keyspace: String,
    pub nats: Nats,
    pub dispatchers: Vec<Proc>,
    pub nodes: Vec<Proc>,
    pub log_dir: PathBuf,
    passed: bool,
    /// Keyspaces of the secure Cassandra are left to its purge (the harness's CQL client does
    /// not log in).
    drop_keyspace: bool,
}

impl Cluster {
    /// `Ok(None)` when skipped (see [`cql_or_skip`]).
    pub async fn start(test: &str, spec: Spec) -> anyhow::Result<Option<Cluster>> {
        let (cql, cql_ca) = if spec.locked {
            match secure_cql_or_skip(test) {
                Some((cql, ca)) => (cql, Some(ca)),
                None => return Ok(None),
            }
        } else {
            match cql_or_skip(test) {
                Some(cql) => (cql, None),
                None => return Ok(None),
            }
        };
        let keyspace = format!("herald_t_{}", random_suffix());
        let log_dir = std::env::temp_dir()
            .join("herald-cluster-tests")
            .join(format!("{test}-{keyspace}"));
        std::fs::create_dir_all(&log_dir)?;
        eprintln!("{test}: keyspace {keyspace}, logs in {}", log_dir.display());
        let locked = match cql_ca {
            Some(ca) => Some(Locked::new(&log_dir, ca)?),
            None => {
                cql::exec(
                    &cql,
                    "SELECT release_version FROM system.local",
                    Duration::from_secs(10),
                )
                .await
                .with_context(|| format!("Cassandra at HERALD_CQL={cql} is not answering"))?;
                None
            }
        };
        migrate(&cql, &keyspace, &log_dir, locked.as_ref())?;
        let mut nats = Nats::reserve(&log_dir)?;
        if let Some(l) = &locked {
            nats.args = l.nats_args();
        }
        if !spec.nats_down_at_start {
            nats.restart()?;
        }
        let conf = ClusterConf {
            cql: cql.clone(),
            keyspace: keyspace.clone(),
            nats_url: nats.url(),
            membership_ttl: spec.membership_ttl,
            node_drain: spec.node_drain,
            locked: locked.clone(),
            env: spec.env.clone(),
        };
        let mut cluster = Cluster {
            test: test.to_owned(),
            cql,
            keyspace,
            nats,
            dispatchers: Vec::new(),
            nodes: Vec::new(),
            log_dir,
            passed: false,
            drop_keyspace: locked.is_none(),
        };
        for i in 0..spec.dispatchers {
            let p = Proc::spawn(Role::Dispatcher, &format!("d{i}"), &conf, &cluster.log_dir)?;
            cluster.dispatchers.push(p);
        }
        for i in 0..spec.nodes {
            let p = Proc::spawn(Role::Node, &format!("n{i}"), &conf, &cluster.log_dir)?;
            cluster.nodes.push(p);
        }
        if !spec.nats_down_at_start {
            cluster.wait_ready(READY_WAIT).await?;
        }
        Ok(Some(cluster))
    }

    /// Waits until every running process answers `/readyz` 200.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        for p in self.dispatchers.iter().chain(&self.nodes) {
            if p.child.is_some() {
                p.wait_ready(limit).await?;
            }
        }
        Ok(())
    }

    /// Marks the test as passed: logs are removed instead of printed.
    pub fn passed(mut self) {
        self.passed = true;
    }

    pub fn publishers(&self) -> Vec<Client> {
        self.dispatchers.iter().map(Proc::publisher).collect()
    }

    pub fn node_bases(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.base.clone()).collect()
    }

    /// One stream per node following `channels` from their first message (a token for
    /// `pattern`), so nothing published afterwards can be missed.
    pub async fn subscribe_every_node(
        &self,
        pattern: &str,
        channels: &[&str],
    ) -> anyhow::Result<Vec<Subscription>> {
        let start = from_start(channels);
        let mut subs = Vec::new();
        for node in &self.nodes {
            subs.push(
                node.subscriber(&[pattern])
                    .subscribe(channels, Some(&start))
                    .await
                    .with_context(|| format!("subscribe on {}", node.name))?,
            );
        }
        Ok(subs)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.dispatchers.iter_mut().chain(self.nodes.iter_mut()) {
            p.kill9();
        }
        self.nats.kill9();
        if self.drop_keyspace {
            if let Err(e) = cql::exec_blocking(
                &self.cql,
                &format!("DROP KEYSPACE IF EXISTS {}", self.keyspace),
                Duration::from_secs(30),
            ) {
                eprintln!(
                    "{}: could not drop keyspace {}: {e:#}",
                    self.test, self.keyspace
                );
            }
        }
        if self.passed {
            let _ = std::fs::remove_dir_all(&self.log_dir);
            return;
        }
        eprintln!(
            "{}: FAILED; logs kept in {}",
            self.test,
            self.log_dir.display()
        );
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.log_dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files {
            eprintln!("----- tail -n 60 {} -----\n{}", f.display(), tail(&f, 60));
        }
    }
}

/// `herald migrate` into a fresh keyspace (RF 1).
fn migrate(
    cql: &str,
    keyspace: &str,
    log_dir: &Path,
    locked: Option<&Locked>,
) -> anyhow::Result<()> {
    let log = log_dir.join("migrate.log");
    let logf = std::fs::File::create(&log)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["migrate", "--cql", cql, "--keyspace", keyspace]);
    if let Some(l) = locked {
        l.apply(&mut cmd, None);
    }
    let mut child = cmd
        .args([
            "--replication",
            "{'class':'SimpleStrategy','replication_factor':1}",
        ])
        .env("HERALD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .spawn()
        .context("spawning herald migrate")?;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::ensure!(
                status.success(),
                "herald migrate --keyspace {keyspace} failed ({status}):\n{}",
                tail(&log, 40)
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            kill_child(&mut child);
            bail!(
                "herald migrate did not finish within 90 s:\n{}",
                tail(&log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Streams and publishers

/// A cursor naming every channel at "from the beginning", so a subscriber that connects before
/// the first publish receives everything (no race with the live attach).
pub fn from_start(channels: &[&str]) -> String {
    let mut c = Cursor::default();
    for ch in channels {
        c.set(ch, Position::default());
    }
    c.encode()
}

/// One received reliable event.
#[derive(Clone, Debug)]
pub struct Got {
    pub channel: String,
    pub epoch: u64,
    pub seq: u64,
    pub data: serde_json::Value,
    pub node: usize,
}

pub fn got(ev: &SseEvent, node: usize) -> Got {
    let e: serde_json::Value = serde_json::from_str(&ev.data).unwrap_or_default();
    Got {
        channel: e["channel"].as_str().unwrap_or_default().to_owned(),
        epoch: e["epoch"].as_u64().unwrap_or(0),
        seq: e["seq"].as_u64().unwrap_or(0),
        data: e["data"].clone(),
        node,
    }
}

/// What a background subscriber saw.
#[derive(Default, Debug)]
pub struct SubLog {
    pub events: Vec<Got>,
    /// `herald:*` events and anything else that is not a message (should stay empty).
    pub anomalies: Vec<String>,
    /// `herald:reconnect` events (a draining node moving the stream elsewhere).
    pub told_to_reconnect: u32,
    /// Streams that ended or failed and were reopened.
    pub reconnects: u32,
    pub last_error: Option<String>,
    pub connected_to: Option<usize>,
}

/// A subscriber that follows `channels` from the beginning, and whenever its stream ends or
/// fails reconnects with its last `id:` to the next node of `order` (indices into `bases`),
/// like a browser behind a load balancer.
pub struct BgSub {
    pub log: Arc<Mutex<SubLog>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl BgSub {
    pub fn spawn(
        bases: Vec<String>,
        order: Vec<usize>,
        patterns: &[&str],
        channels: &[&str],
    ) -> BgSub {
        let log: Arc<Mutex<SubLog>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let tok = token("u1", patterns);
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let (l, s) = (log.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let chans: Vec<&str> = channels.iter().map(String::as_str).collect();
            let mut last_id = from_start(&chans);
            let mut k = 0usize;
            while !s.load(Ordering::Relaxed) {
                let node = order[k % order.len()];
                let client = Client::new(&bases[node]).with_token(tok.clone());
                let sub = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.subscribe(&chans, Some(&last_id)),
                )
                .await;
                let mut sub: Subscription = match sub {
                    Ok(Ok(sub)) => sub,
                    Ok(Err(e)) => {
                        lock(&l).last_error = Some(format!("connect to node {node}: {e}"));
                        k += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        lock(&l).last_error = Some(format!("connect to node {node}: timeout"));
                        k += 1;
                        continue;
                    }
                };
                lock(&l).connected_to = Some(node);
                loop {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                        Err(_) => continue,
                        Ok(Ok(Some(ev))) => {
                            let mut g = lock(&l);
                            if ev.event == "herald:reconnect" {
                                g.told_to_reconnect += 1;
                            } else if ev.event.starts_with("herald:") {
                                g.anomalies
                                    .push(format!("node {node}: {} {}", ev.event, ev.data));
                            } else if ev.id.is_none() {
                                g.anomalies
                                    .push(format!("node {node}: event without id: {}", ev.data));
                            } else {
                                g.events.push(got(&ev, node));
                            }
                            if let Some(id) = sub.last_event_id() {
                                last_id = id.to_owned();
                            }
                        }
                        Ok(Ok(None)) | Ok(Err(_)) => {
                            let mut g = lock(&l);
                            g.reconnects += 1;
                            g.connected_to = None;
                            break;
                        }
                    }
                }
                k += 1;
            }
        });
        BgSub { log, stop, task }
    }

    pub fn count(&self) -> usize {
        lock(&self.log).events.len()
    }

    pub async fn stop(self) -> SubLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        std::mem::take(&mut *lock(&self.log))
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Acknowledged publishes: `(channel, seq) -> data`.
pub type Acked = Arc<Mutex<std::collections::BTreeMap<(String, u64), serde_json::Value>>>;

/// A publisher that publishes to `channels` round-robin, alternating `clients`, until stopped.
/// Only 2xx answers are recorded; errors are counted and the loop goes on.
pub struct BgPub {
    pub acked: Acked,
    pub attempts: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl BgPub {
    pub fn spawn(clients: Vec<Client>, channels: &[&str], worker: u64) -> BgPub {
        let acked: Acked = Arc::default();
        let attempts = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        let (a, at, er, s) = (
            acked.clone(),
            attempts.clone(),
            errors.clone(),
            stop.clone(),
        );
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let ch = &channels[(n as usize) % channels.len()];
                let client = &clients[(n as usize) % clients.len()];
                let data = serde_json::json!({ "w": worker, "n": n });
                at.fetch_add(1, Ordering::Relaxed);
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.publish(&Publish::new(ch.clone(), data.clone())),
                )
                .await;
                match r {
                    Ok(Ok(PublishResult { seq: Some(seq), .. })) => {
                        lock(&a).insert((ch.clone(), seq), data);
                    }
                    _ => {
                        er.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        BgPub {
            acked,
            attempts,
            errors,
            stop,
            task,
        }
    }

    pub fn acked_len(&self) -> usize {
        lock(&self.acked).len()
    }

    pub async fn stop(self) -> std::collections::BTreeMap<(String, u64), serde_json::Value> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        std::mem::take(&mut *lock(&self.acked))
    }
}

/// Waits until `f()` holds, polling every 50 ms; fails with `what` after `limit`.
pub async fn wait_until(
    limit: Duration,
    what: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {}", what());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Checks one subscriber's stream against the acknowledged publishes: per channel, seqs are
/// 1, 2, 3 … (in order, no gap, no duplicate) up to at least the highest acknowledged seq,
/// every acknowledged message carries the data it was published with, one epoch per channel.
pub fn check_stream(
    who: &str,
    events: &[Got],
    channels: &[&str],
    acked: &std::collections::BTreeMap<(String, u64), serde_json::Value>,
) -> anyhow::Result<()> {
    for ch in channels {
        let mine: Vec<&Got> = events.iter().filter(|g| g.channel == *ch).collect();
        let seqs: Vec<u64> = mine.iter().map(|g| g.seq).collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        if seqs != expected {
            let bad = seqs
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(seqs.len().min(expected.len()));
            bail!(
                "{who}: channel {ch} seqs are not 1..{} in order exactly once: first difference at \
                 index {bad}: got {:?} (around it: {:?})",
                seqs.len(),
                seqs.get(bad),
                &seqs[bad.saturating_sub(3)..(bad + 4).min(seqs.len())]
            );
        }
        let max_acked = acked
            .keys()
            .filter(|(c, _)| c == ch)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        anyhow::ensure!(
            seqs.len() as u64 >= max_acked,
            "{who}: channel {ch} ends at seq {} but seq {max_acked} was acknowledged",
            seqs.len()
        );
        let epochs: std::collections::BTreeSet<u64> = mine.iter().map(|g| g.epoch).collect();
        anyhow::ensure!(
            epochs.len() <= 1,
            "{who}: channel {ch} changed epoch within one run: {epochs:?}"
        );
        for ((c, seq), data) in acked.iter().filter(|((c, _), _)| c == ch) {
            let g = &mine[(*seq - 1) as usize];
            anyhow::ensure!(
                &g.data == data,
                "{who}: {c} seq {seq} carries {} but was acknowledged for {data}",
                g.data
            );
        }
    }
    Ok(())
}

/// Highest seq per channel seen by a subscriber.
pub fn heads(events: &[Got]) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for g in events {
        let e = out.entry(g.channel.clone()).or_insert(0);
        *e = (*e).max(g.seq);
    }
    out
}

/// Highest acknowledged seq per channel.
pub fn acked_heads(
    acked: &std::collections::BTreeMap<(String, u64), serde_json::Value>,
) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (c, s) in acked.keys() {
        let e = out.entry(c.clone()).or_insert(0);
        *e = (*e).max(*s);
    }
    out
}

/// Every message of `channel` in the store, by paging history (`after`, `limit`).
pub async fn full_history(
    client: &Client,
    channel: &str,
) -> anyhow::Result<Vec<herald_proto::HistoryMessage>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .history(channel, after, 200)
            .await
            .with_context(|| format!("history of {channel} after {after}"))?;
        out.extend(page.messages);
        if !page.has_more || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    Ok(out)
}

/// The stream checker itself catches gaps, duplicates, reordering, short streams and wrong
/// data (runs without Cassandra).
#[test]
fn check_stream_rejects_gaps_duplicates_and_wrong_data() {
    let g = |seq: u64, n: u64| Got {
        channel: "c:a".into(),
        epoch: 7,
        seq,
        data: serde_json::json!({ "n": n }),
        node: 0,
    };
    let acked: std::collections::BTreeMap<(String, u64), serde_json::Value> = (1..=3)
        .map(|s| (("c:a".to_owned(), s), serde_json::json!({ "n": s })))
        .collect();
    let ok = [g(1, 1), g(2, 2), g(3, 3)];
    assert!(check_stream("ok", &ok, &["c:a"], &acked).is_ok());
    for (what, events) in [
        ("gap", vec![g(1, 1), g(3, 3)]),
        ("duplicate", vec![g(1, 1), g(2, 2), g(2, 2), g(3, 3)]),
        ("reordered", vec![g(2, 2), g(1, 1), g(3, 3)]),
        ("short", vec![g(1, 1), g(2, 2)]),
        ("wrong data", vec![g(1, 1), g(2, 9), g(3, 3)]),
    ] {
        assert!(
            check_stream(what, &events, &["c:a"], &acked).is_err(),
            "{what} not detected"
        );
    }
}
