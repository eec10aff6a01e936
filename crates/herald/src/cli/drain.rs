//! `herald drain`: moves a node's (or a `herald serve`'s) clients off before it stops, for
//! deploy scripts. It sends the process SIGTERM, which starts its drain (the stream count
//! falls to zero over its `HERALD_DRAIN_SECS`, each client told in band to reconnect
//! elsewhere), follows the open streams on its /metrics, and returns once it has exited.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The process to drain.
    #[arg(
        long,
        required_unless_present = "pid_file",
        conflicts_with = "pid_file"
    )]
    pub pid: Option<u32>,
    /// A file holding the pid (as scripts/cluster-up writes them).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Its listen address, to report its open streams (from /metrics) while it drains.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// What its /metrics takes: the metrics token or a publisher API key.
    #[arg(long, env = "HERALD_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Longest wait for it to exit; past it `herald drain` fails and leaves the process be.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let pid = match (args.pid, &args.pid_file) {
        (Some(pid), _) => pid,
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .parse()
            .with_context(|| format!("{}: not a pid", file.display()))?,
        (None, None) => bail!("give --pid or --pid-file"),
    };
    anyhow::ensure!(pid > 1, "pid {pid} is not a server's");
    let pid = rustix::process::Pid::from_raw(pid as i32).context("pid out of range")?;
    // The listener closes when the drain is over, before the last in-flight work ends: read
    // /metrics once before the signal, and the pooled connection answers to the end.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(600))
        .build()?;
    if let Some(addr) = args.addr {
        match open_streams(&http, addr, args.metrics_token.as_deref()).await {
            Some(open) => eprintln!("herald drain: {open} streams open at {addr}"),
            None => eprintln!("herald drain: no herald /metrics at {addr}; draining anyway"),
        }
    }
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)
        .with_context(|| format!("signalling pid {}", pid.as_raw_nonzero()))?;
    eprintln!("herald drain: sent SIGTERM to pid {}", pid.as_raw_nonzero());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut last_report = None;
    while alive(pid) {
        if Instant::now() > deadline {
            bail!(
                "pid {} still running after {} s (left running)",
                pid.as_raw_nonzero(),
                args.timeout_secs
            );
        }
        if let Some(addr) = args.addr {
            if let Some(open) = open_streams(&http, addr, args.metrics_token.as_deref()).await {
                if last_report != Some(open) {
                    eprintln!(
                        "herald drain: {:>5.1} s  {open} streams open",
                        started.elapsed().as_secs_f64()
                    );
                    last_report = Some(open);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "herald drain: pid {} exited after {:.1} s",
        pid.as_raw_nonzero(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the process is still running: it exists (signal 0 tests without signalling) and
/// is not a zombie waiting for its parent to reap it (it has exited then).
fn alive(pid: rustix::process::Pid) -> bool {
    if rustix::process::test_kill_process(pid).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()));
    // The state follows the parenthesised command name, which may itself hold spaces.
    !stat.is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// `herald_connections` of the server's /metrics; None when it does not answer.
async fn open_streams(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: Option<&str>,
) -> Option<u64> {
    let mut req = http.get(format!("http://{addr}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let text = req
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("herald_connections "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
