//! A bench worker process: holds its share of the SSE connections, checks every delivery's
//! order, records latency, and answers the coordinator's commands on stdin/stdout.

use crate::parse::{Chunked, DataLines};
use crate::target::{now_us, Target};
use crate::Hist;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub target: Target,
    /// Global index of this worker's first connection.
    pub first: usize,
    pub count: usize,
    pub channels: usize,
    /// Connections are spread over 127.0.0.2 … 127.0.0.(1+source_ips) as source addresses.
    pub source_ips: u8,
    pub connect_concurrency: usize,
    /// Per channel: the `Last-Event-ID` to connect with (resume storm), if any.
    #[serde(default)]
    pub resume_from: Vec<String>,
    /// What orders a channel's deliveries.
    #[serde(default)]
    pub order: OrderBy,
    /// The connections join channels that are already publishing (a flash crowd): each one's
    /// first message sets where it started, and what came before is not counted as lost.
    #[serde(default)]
    pub joins_live: bool,
}

/// The counter a connection checks for order, loss and duplicates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderBy {
    /// The bench payload's `s`: 1, 2, 3 … per channel (one publisher per channel).
    #[default]
    Payload,
    /// The server's `seq` of Herald's envelope: consecutive from the first one received
    /// (many concurrent publishers on one channel, where only the server decides the order).
    ServerSeq,
}

/// What a worker reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub connected: u64,
    pub failed: u64,
    pub closed: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub lost: u64,
    /// Messages published before live-joining connections started (not expected by them).
    #[serde(default)]
    pub skipped: u64,
    pub cpu_seconds: f64,
    /// base64 of HdrHistogram V2 (µs)
    pub latency: String,
    pub connect: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Command {
    Report,
    /// Latency since the previous `Window` (or the start), then start a new window.
    Window,
    /// Final report; `published[c]` messages went to channel c.
    Stop {
        published: Vec<u64>,
    },
}

struct Shared {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    /// Σ unique payloads received, per channel (over this worker's connections).
    unique: Vec<AtomicU64>,
    /// Connections per channel.
    subscribers: Vec<AtomicU64>,
    /// Per channel: messages published before live-joining connections started.
    skipped: Vec<AtomicU64>,
    latency: Vec<parking_lot::Mutex<Hist>>,
    connect: parking_lot::Mutex<Hist>,
}

const SHARDS: usize = 16;

pub async fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        unique: (0..spec.channels).map(|_| AtomicU64::new(0)).collect(),
        subscribers: (0..spec.channels).map(|_| AtomicU64::new(0)).collect(),
        skipped: (0..spec.channels).map(|_| AtomicU64::new(0)).collect(),
        latency: (0..SHARDS)
            .map(|_| parking_lot::Mutex::new(crate::new_hist()))
            .collect(),
        connect: parking_lot::Mutex::new(crate::new_hist()),
    });
    let gate = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let mut conns = JoinSet::new();
    for k in 0..spec.count {
        let i = spec.first + k;
        conns.spawn(connection(i, spec.clone(), shared.clone(), gate.clone()));
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = stdin.next_line().await? {
        let cmd: Command = serde_json::from_str(&line).context("worker command")?;
        let stop = matches!(cmd, Command::Stop { .. });
        let lost = match &cmd {
            Command::Stop { published } => lost(&shared, published),
            Command::Report | Command::Window => 0,
        };
        let window = matches!(cmd, Command::Window);
        let report = snapshot(&shared, lost, stop || window)?;
        if window {
            for h in &shared.latency {
                h.lock().reset();
            }
        }
        let mut out = serde_json::to_vec(&report)?;
        out.push(b'\n');
        stdout.write_all(&out).await?;
        stdout.flush().await?;
        if stop {
            conns.abort_all();
            return Ok(());
        }
    }
    conns.abort_all();
    Ok(())
}

fn lost(shared: &Shared, published: &[u64]) -> u64 {
    let mut lost = 0;
    for (c, p) in published.iter().enumerate() {
        let Some(subs) = shared.subscribers.get(c) else {
            continue;
        };
        let want = (p * subs.load(Relaxed)).saturating_sub(shared.skipped[c].load(Relaxed));
        let got = shared.unique[c].load(Relaxed);
        lost += want.saturating_sub(got);
    }
    lost
}

fn snapshot(shared: &Shared, lost: u64, with_hist: bool) -> anyhow::Result<WorkerReport> {
    let (latency, connect) = if with_hist {
        let mut all = crate::new_hist();
        for h in &shared.latency {
            all.add(&*h.lock())?;
        }
        (
            crate::encode_hist(&all)?,
            crate::encode_hist(&shared.connect.lock())?,
        )
    } else {
        (String::new(), String::new())
    };
    Ok(WorkerReport {
        connected: shared.connected.load(Relaxed),
        failed: shared.failed.load(Relaxed),
        closed: shared.closed.load(Relaxed),
        deliveries: shared.deliveries.load(Relaxed),
        duplicates: shared.duplicates.load(Relaxed),
        out_of_order: shared.out_of_order.load(Relaxed),
        lost,
        skipped: shared.skipped.iter().map(|s| s.load(Relaxed)).sum(),
        cpu_seconds: crate::procstat::own_cpu_seconds(),
        latency,
        connect,
    })
}

async fn connection(i: usize, spec: WorkerSpec, shared: Arc<Shared>, gate: Arc<Semaphore>) {
    let channel = i % spec.channels.max(1);
    let permit = gate.acquire().await;
    let started = Instant::now();
    let opened = tokio::time::timeout(Duration::from_secs(30), open(i, &spec, channel)).await;
    drop(permit);
    let (mut stream, rest, chunked) = match opened {
        Ok(Ok(s)) => s,
        _ => {
            shared.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    let _ = shared
        .connect
        .lock()
        .record(started.elapsed().as_micros().max(1) as u64);
    shared.subscribers[channel].fetch_add(1, Relaxed);
    shared.connected.fetch_add(1, Relaxed);
    let mut decoder = Chunked::default();
    let mut lines = DataLines::default();
    let mut last = 0u64;
    let mut started_at: Option<u64> = None;
    let shard = i % SHARDS;
    let order = spec.order;
    let mut joining = spec.joins_live;
    let mut on_payload = |s: u64, t: u64, seq: Option<u64>| {
        shared.deliveries.fetch_add(1, Relaxed);
        let lat = now_us().saturating_sub(t).max(1);
        let _ = shared.latency[shard].lock().record(lat);
        let s = match order {
            OrderBy::Payload => {
                if joining {
                    // Joined a channel already publishing: it starts here.
                    joining = false;
                    last = s.saturating_sub(1);
                    shared.skipped[channel].fetch_add(last, Relaxed);
                }
                s
            }
            OrderBy::ServerSeq => {
                let Some(seq) = seq else {
                    // Not a sequenced (reliable) delivery: order cannot be checked.
                    shared.out_of_order.fetch_add(1, Relaxed);
                    return;
                };
                // The first seq received is this stream's start (it subscribed live).
                let base = *started_at.get_or_insert(seq.saturating_sub(1));
                seq.saturating_sub(base)
            }
        };
        if s > last {
            if s != last + 1 {
                shared.out_of_order.fetch_add(1, Relaxed);
            }
            last = s;
            shared.unique[channel].fetch_add(1, Relaxed);
        } else {
            shared.duplicates.fetch_add(1, Relaxed);
        }
    };
    let mut feed = |bytes: &[u8]| {
        if chunked {
            decoder.feed(bytes, &mut |b| lines.feed(b, &mut on_payload))
        } else {
            lines.feed(bytes, &mut on_payload);
            true
        }
    };
    let mut open = feed(&rest);
    let mut buf = vec![0u8; 4096];
    while open {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => open = feed(&buf[..n]),
        }
    }
    shared.closed.fetch_add(1, Relaxed);
}

/// Connects from a spread source address, sends the request and reads the response head.
/// Returns the stream, body bytes read past the head, and whether the body is chunked.
async fn open(
    i: usize,
    spec: &WorkerSpec,
    channel: usize,
) -> anyhow::Result<(tokio::net::TcpStream, Vec<u8>, bool)> {
    let octet = 2 + (i % spec.source_ips.max(1) as usize) as u8;
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, octet), 0)))?;
    let node = spec.target.node_addr(i);
    let mut stream = sock.connect(node).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            spec.target
                .subscribe_request(
                    node,
                    channel,
                    spec.resume_from.get(channel).map(String::as_str),
                )
                .as_bytes(),
        )
        .await?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the response head");
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            anyhow::ensure!(
                text.starts_with("http/1.1 200"),
                "status: {}",
                text.lines().next().unwrap_or("")
            );
            let chunked = text.contains("transfer-encoding: chunked");
            return Ok((stream, head[end + 4..].to_vec(), chunked));
        }
        anyhow::ensure!(head.len() < 16 * 1024, "response head too large");
    }
}
