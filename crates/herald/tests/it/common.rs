//! Shared helpers: start the real `herald` binary on 127.0.0.1:0 and talk to it.

use anyhow::{bail, Context};
use herald_client::{Client, Publish, Subscription};
use herald_proto::{Claims, SseEvent};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const API_KEY: &str = "test-publisher-key";
pub const SECRET: &str = "test-secret-0123456789abcdef";

/// How a test server starts.
#[derive(Clone, Default)]
pub struct Opts {
    pub dev: bool,
    pub listen: Option<String>,
    pub env: Vec<(String, String)>,
    pub config: Option<String>,
}

impl Opts {
    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }
}

/// A running `herald serve` process; killed when dropped.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub port: u16,
}

impl Server {
    pub fn start(data_dir: &Path, opts: &Opts) -> anyhow::Result<Server> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("HERALD_CORS_ORIGINS")
            .env("HERALD_API_KEYS", API_KEY)
            .env("HERALD_JWT_SECRET", SECRET)
            .env("HERALD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if opts.dev {
            cmd.arg("--dev");
        }
        if let Some(toml) = &opts.config {
            let path = data_dir.with_extension("toml");
            std::fs::write(&path, toml)?;
            cmd.arg("--config").arg(path);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning herald")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("herald listening on ") {
                        let base = url.trim().to_owned();
                        let port = base
                            .rsplit(':')
                            .next()
                            .and_then(|p| p.parse().ok())
                            .context("port in listening line")?;
                        return Ok(Server {
                            child: Some(child),
                            base,
                            port,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    bail!("herald did not report listening (exit: {status})");
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: a crash, nothing flushed by the process itself.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for the exit; returns how long it took and the exit status.
    pub fn terminate(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<(Duration, std::process::ExitStatus)> {
        let mut c = self.child.take().context("not running")?;
        let started = Instant::now();
        // SAFETY: plain kill(2) on a child pid we own.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok((started.elapsed(), status));
            }
            if started.elapsed() > limit {
                let _ = c.kill();
                bail!("herald did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn publisher(&self) -> Client {
        Client::new(&self.base).with_api_key(API_KEY)
    }

    pub fn subscriber(&self, channels: &[&str]) -> Client {
        Client::new(&self.base).with_token(token("u1", channels))
    }

    pub fn anonymous(&self) -> Client {
        Client::new(&self.base)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Reads one metric value from /metrics.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(API_KEY)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .context(format!("metric {name} missing"))?
            .trim()
            .parse()
            .context("metric value")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A subscriber token for `sub` allowing `channels` patterns.
pub fn token(sub: &str, channels: &[&str]) -> String {
    herald_proto::sign_hs256(
        &Claims {
            sub: sub.to_owned(),
            channels: channels.iter().map(|c| (*c).to_owned()).collect(),
            exp: Some(now_secs() + 3600),
            nbf: None,
            iat: None,
        },
        SECRET.as_bytes(),
    )
}

pub fn msg(channel: &str, n: u64) -> Publish {
    Publish::new(channel, serde_json::json!({ "n": n }))
}

/// Publishes `count` messages to `channel`, returning their seqs.
pub async fn publish_n(c: &Client, channel: &str, count: u64) -> anyhow::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for n in 0..count {
        let r = c.publish(&msg(channel, n)).await?;
        seqs.push(r.seq.context("reliable publish has a seq")?);
    }
    Ok(seqs)
}

/// Next event other than heartbeats, within `limit`.
pub async fn next_event(sub: &mut Subscription, limit: Duration) -> anyhow::Result<SseEvent> {
    match tokio::time::timeout(limit, sub.next()).await {
        Ok(Ok(Some(ev))) => Ok(ev),
        Ok(Ok(None)) => bail!("stream ended"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no event within {limit:?}"),
    }
}

/// Collects `n` events within `limit` overall.
pub async fn take(
    sub: &mut Subscription,
    n: usize,
    limit: Duration,
) -> anyhow::Result<Vec<SseEvent>> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        out.push(
            next_event(sub, left)
                .await
                .with_context(|| format!("after {} of {n} events", out.len()))?,
        );
    }
    Ok(out)
}

/// The JSON envelope of an event.
pub fn envelope(ev: &SseEvent) -> serde_json::Value {
    serde_json::from_str(&ev.data).unwrap_or(serde_json::Value::Null)
}

/// `(channel, seq)` of a reliable event.
pub fn pos(ev: &SseEvent) -> (String, u64) {
    let e = envelope(ev);
    (
        e["channel"].as_str().unwrap_or_default().to_owned(),
        e["seq"].as_u64().unwrap_or(0),
    )
}

/// Polls `f` until it returns true or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("timed out waiting for: {what}")
}

pub const WAIT: Duration = Duration::from_secs(10);
