//! Child processes the checker starts, kills (`SIGKILL` or `SIGTERM`) and restarts with the
//! same command line. A child is killed when its [`Managed`] is dropped, and (Linux) when the
//! checker itself dies (`PR_SET_PDEATHSIG`).

use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a process is, for picking endpoints and reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Dispatcher,
    Node,
    Nats,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Dispatcher => "dispatcher",
            Role::Node => "node",
            Role::Nats => "nats",
        }
    }
}

/// The part of a process other tasks read: where it listens, its pid, whether it is ready.
#[derive(Debug)]
pub struct ProcShared {
    pub name: String,
    pub role: Role,
    /// `http://127.0.0.1:PORT` for Herald processes.
    pub base: Option<String>,
    pid: AtomicU32,
    ready: AtomicBool,
}

impl ProcShared {
    pub fn pid(&self) -> Option<u32> {
        match self.pid.load(Relaxed) {
            0 => None,
            p => Some(p),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }
}

/// How to tell that a started process serves.
#[derive(Clone, Debug)]
pub enum Ready {
    /// `GET {base}/readyz` answers 200.
    Http(String),
    /// The port accepts TCP connections.
    Tcp(u16),
}

/// A process the checker runs.
pub struct Managed {
    pub shared: Arc<ProcShared>,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    ready: Ready,
    child: Option<tokio::process::Child>,
    starts: u32,
    http: reqwest::Client,
}

impl Managed {
    pub fn new(
        name: &str,
        role: Role,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: &Path,
        ready: Ready,
    ) -> Self {
        let base = match &ready {
            Ready::Http(b) => Some(b.clone()),
            Ready::Tcp(_) => None,
        };
        Self {
            shared: Arc::new(ProcShared {
                name: name.to_owned(),
                role,
                base,
                pid: AtomicU32::new(0),
                ready: AtomicBool::new(false),
            }),
            program: program.to_owned(),
            args,
            env,
            log: log_dir.join(format!("{name}.log")),
            ready,
            child: None,
            starts: 0,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits (at most `limit`) until it is ready. Returns how long that
    /// took. A process that exits meanwhile is an error carrying the tail of its log.
    pub async fn start(&mut self, limit: Duration) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name());
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            log,
            "===== herald check: start #{} of {} at {} ms",
            self.starts,
            self.name(),
            crate::record::now_ms()
        )?;
        let mut cmd = tokio::process::Command::new(&self.program);
        for (k, _) in std::env::vars() {
            if k.starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches only the new process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.program.display()))?;
        self.shared.pid.store(child.id().unwrap_or(0), Relaxed);
        let deadline = started + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.shared.pid.store(0, Relaxed);
                bail!(
                    "{} exited while starting ({status}); log:\n{}",
                    self.name(),
                    tail(&self.log, 30)
                );
            }
            if self.probe().await {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                self.shared.pid.store(0, Relaxed);
                bail!(
                    "{} not ready within {limit:?}; log:\n{}",
                    self.name(),
                    tail(&self.log, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        self.shared.ready.store(true, Relaxed);
        Ok(started.elapsed())
    }

    async fn probe(&self) -> bool {
        match &self.ready {
            Ready::Http(base) => matches!(
                self.http.get(format!("{base}/readyz")).send().await,
                Ok(r) if r.status().as_u16() == 200
            ),
            Ready::Tcp(port) => tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(("127.0.0.1", *port)),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
        }
    }

    /// `SIGKILL` and reap.
    pub async fn kill9(&mut self) {
        self.shared.ready.store(false, Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
        self.shared.pid.store(0, Relaxed);
    }

    /// `SIGTERM`, then waits up to `limit` for the exit. `Ok(took)` on a graceful exit; on
    /// timeout the process is killed and `Err(limit)` returned.
    pub async fn terminate(&mut self, limit: Duration) -> Result<Duration, Duration> {
        self.shared.ready.store(false, Relaxed);
        let Some(mut c) = self.child.take() else {
            return Ok(Duration::ZERO);
        };
        let started = Instant::now();
        if let Some(pid) = c.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let out = match tokio::time::timeout(limit, c.wait()).await {
            Ok(_) => Ok(started.elapsed()),
            Err(_) => {
                let _ = c.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
                Err(limit)
            }
        };
        self.shared.pid.store(0, Relaxed);
        out
    }

    /// Whether the process has exited by itself (it is then reaped and marked down).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        self.shared.ready.store(false, Relaxed);
        self.shared.pid.store(0, Relaxed);
        Some(status)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Resident set size of `pid` in bytes (/proc/PID/status VmRSS).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// `--herald-bin`, else this executable.
pub fn herald_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(p) => Ok(p.to_owned()),
        None => std::env::current_exe().context("locating the herald executable"),
    }
}

/// `--nats-server`, else `$NATS_SERVER`, else `nats-server` on PATH, else /usr/sbin's.
pub fn nats_bin(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_owned();
    }
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let c = d.join("nats-server");
            if c.is_file() {
                return c;
            }
        }
    }
    for p in ["/usr/sbin/nats-server", "/usr/local/sbin/nats-server"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nats-server")
}
