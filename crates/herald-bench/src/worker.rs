//! A bench worker process: holds its share of the SSE connections, checks every delivery's
//! order, records latency, and answers the coordinator's commands on stdin/stdout.

use crate::parse::{Chunked, DataLines, Line};
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
    /// Reconnect when a stream ends (its node died, or asked it to go): to another node,
    /// resuming after the last `id:` received. None: an ended stream stays closed.
    #[serde(default)]
    pub reconnect: Option<Reconnect>,
}

/// How a client reconnects after its stream ended without being told when.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Reconnect {
    /// The first attempt waits a uniform random [0, backoff_ms] ms (full jitter, so the
    /// clients of a dead node do not all come back at once) …
    pub backoff_ms: u64,
    /// … and each failed attempt doubles that ceiling, up to this.
    pub max_backoff_ms: u64,
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
    #[serde(default)]
    pub failover: FailoverCounts,
}

/// What the reconnecting clients saw (all zero unless the spec says to reconnect).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FailoverCounts {
    /// Streams opened again after theirs ended.
    pub reconnects: u64,
    /// Attempts that did not get a stream (refused, timed out, an error status).
    pub reconnect_failures: u64,
    /// Connections that stopped trying (too many failed attempts).
    pub gave_up: u64,
    /// `herald:reconnect` events received.
    pub told_to_reconnect: u64,
    /// Streams that ended and have not caught up yet.
    pub recovering: u64,
    /// When the last stream to catch up did (µs since the Unix epoch; 0: none yet).
    pub last_recovered_us: u64,
    /// When the last reconnect got its stream (ms since the Unix epoch; 0: none).
    #[serde(default)]
    pub last_reconnected_ms: u64,
    /// Per node index: reconnects that landed there.
    pub reconnects_to: Vec<u64>,
    /// base64 HdrHistogram (µs): from a stream's end until it had caught up.
    #[serde(default)]
    pub recovery: String,
    /// When each successful reconnect attempt started (ms since the Unix epoch; final and
    /// window reports).
    #[serde(default)]
    pub reconnected_at_ms: Vec<u64>,
    /// When each `herald:reconnect` arrived (ms since the Unix epoch; final and window
    /// reports).
    #[serde(default)]
    pub told_at_ms: Vec<u64>,
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
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    gave_up: AtomicU64,
    told_to_reconnect: AtomicU64,
    recovering: AtomicU64,
    last_recovered_us: AtomicU64,
    last_reconnected_ms: AtomicU64,
    reconnects_to: Vec<AtomicU64>,
    recovery: parking_lot::Mutex<Hist>,
    reconnected_at_ms: parking_lot::Mutex<Vec<u64>>,
    told_at_ms: parking_lot::Mutex<Vec<u64>>,
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
        reconnects: AtomicU64::new(0),
        reconnect_failures: AtomicU64::new(0),
        gave_up: AtomicU64::new(0),
        told_to_reconnect: AtomicU64::new(0),
        recovering: AtomicU64::new(0),
        last_recovered_us: AtomicU64::new(0),
        last_reconnected_ms: AtomicU64::new(0),
        reconnects_to: (0..spec.target.node_count())
            .map(|_| AtomicU64::new(0))
            .collect(),
        recovery: parking_lot::Mutex::new(crate::new_hist()),
        reconnected_at_ms: parking_lot::Mutex::new(Vec::new()),
        told_at_ms: parking_lot::Mutex::new(Vec::new()),
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
    let (latency, connect, recovery, reconnected_at_ms, told_at_ms) = if with_hist {
        let mut all = crate::new_hist();
        for h in &shared.latency {
            all.add(&*h.lock())?;
        }
        (
            crate::encode_hist(&all)?,
            crate::encode_hist(&shared.connect.lock())?,
            crate::encode_hist(&shared.recovery.lock())?,
            shared.reconnected_at_ms.lock().clone(),
            shared.told_at_ms.lock().clone(),
        )
    } else {
        Default::default()
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
        failover: FailoverCounts {
            reconnects: shared.reconnects.load(Relaxed),
            reconnect_failures: shared.reconnect_failures.load(Relaxed),
            gave_up: shared.gave_up.load(Relaxed),
            told_to_reconnect: shared.told_to_reconnect.load(Relaxed),
            recovering: shared.recovering.load(Relaxed),
            last_recovered_us: shared.last_recovered_us.load(Relaxed),
            last_reconnected_ms: shared.last_reconnected_ms.load(Relaxed),
            reconnects_to: shared
                .reconnects_to
                .iter()
                .map(|c| c.load(Relaxed))
                .collect(),
            recovery,
            reconnected_at_ms,
            told_at_ms,
        },
    })
}

async fn connection(i: usize, spec: WorkerSpec, shared: Arc<Shared>, gate: Arc<Semaphore>) {
    let channel = i % spec.channels.max(1);
    let mut node = i % spec.target.node_count();
    let permit = gate.acquire().await;
    let started = Instant::now();
    let resume = spec.resume_from.get(channel).cloned();
    let opened = tokio::time::timeout(
        Duration::from_secs(30),
        open(i, &spec, node, channel, resume.as_deref()),
    )
    .await;
    drop(permit);
    let Ok(Ok(mut stream)) = opened else {
        shared.failed.fetch_add(1, Relaxed);
        return;
    };
    let _ = shared
        .connect
        .lock()
        .record(started.elapsed().as_micros().max(1) as u64);
    shared.subscribers[channel].fetch_add(1, Relaxed);
    shared.connected.fetch_add(1, Relaxed);
    let mut rx = Receiver {
        shared: &shared,
        channel,
        shard: i % SHARDS,
        order: spec.order,
        joining: spec.joins_live,
        last: 0,
        started_at: None,
        cursor: resume.unwrap_or_default(),
        recovery: None,
        told: None,
    };
    loop {
        rx.read(&mut stream).await;
        shared.closed.fetch_add(1, Relaxed);
        let Some(policy) = spec.reconnect else {
            return;
        };
        rx.dropped();
        let Some((s, to)) = reconnect(i, &spec, policy, node, &rx).await else {
            shared.gave_up.fetch_add(1, Relaxed);
            return;
        };
        stream = s;
        node = to;
        rx.reconnected();
    }
}

/// Opens the stream again at another node, resuming after the receiver's cursor: after the
/// delay the server asked for, or a jittered backoff that doubles per failed attempt.
async fn reconnect(
    i: usize,
    spec: &WorkerSpec,
    policy: Reconnect,
    from: usize,
    rx: &Receiver<'_>,
) -> Option<(Stream, usize)> {
    let nodes = spec.target.node_count();
    let mut seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ now_us();
    let mut ceiling = policy.backoff_ms.max(1);
    let mut wait = match rx.told {
        Some(after_ms) => after_ms,
        None => jitter(&mut seed, ceiling),
    };
    let cursor = (!rx.cursor.is_empty()).then_some(rx.cursor.as_str());
    for attempt in 0..MAX_RECONNECT_ATTEMPTS {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let to = next_node(from, i, attempt, nodes);
        let attempted_at_ms = now_us() / 1000;
        let opened = tokio::time::timeout(
            Duration::from_secs(10),
            open(i, spec, to, rx.channel, cursor),
        )
        .await;
        if let Ok(Ok(stream)) = opened {
            rx.shared.reconnects.fetch_add(1, Relaxed);
            rx.shared.reconnects_to[to].fetch_add(1, Relaxed);
            rx.shared.reconnected_at_ms.lock().push(attempted_at_ms);
            rx.shared
                .last_reconnected_ms
                .fetch_max(now_us() / 1000, Relaxed);
            return Some((stream, to));
        }
        rx.shared.reconnect_failures.fetch_add(1, Relaxed);
        ceiling = (ceiling * 2).min(policy.max_backoff_ms.max(1));
        wait = jitter(&mut seed, ceiling);
    }
    None
}

const MAX_RECONNECT_ATTEMPTS: usize = 30;

/// Where a client of node `from` goes next: one of the other nodes, clients of one node
/// spread evenly over them (a load balancer's job in production).
fn next_node(from: usize, i: usize, attempt: usize, nodes: usize) -> usize {
    if nodes <= 1 {
        return 0;
    }
    (from + 1 + (i / nodes + attempt) % (nodes - 1)) % nodes
}

/// Uniform in [0, ceiling] ms (full jitter), from a xorshift state.
fn jitter(seed: &mut u64, ceiling: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed % (ceiling + 1)
}

/// One connection's view of its channel, kept across reconnects: the order and loss check,
/// the resume cursor, and how long a reconnect took to catch up.
struct Receiver<'a> {
    shared: &'a Shared,
    channel: usize,
    shard: usize,
    order: OrderBy,
    joining: bool,
    last: u64,
    started_at: Option<u64>,
    /// The last `id:` received: where a reconnect resumes.
    cursor: String,
    recovery: Option<Recovery>,
    /// The server asked this stream to reconnect after this many ms.
    told: Option<u64>,
}

/// A stream that ended and has not caught up yet. It has caught up when it receives a message
/// published after it reconnected: everything published before then (the replay) has arrived,
/// in order, by the time of the last of those.
struct Recovery {
    dropped_at: u64,
    reconnected_at: Option<u64>,
    /// When the last message published before the reconnect arrived.
    replayed_until: u64,
}

impl Receiver<'_> {
    async fn read(&mut self, stream: &mut Stream) {
        let mut decoder = Chunked::default();
        let mut lines = DataLines::default();
        self.told = None;
        let mut on_line = |l: Line<'_>| match l {
            Line::Payload { s, t, seq } => self.payload(s, t, seq),
            Line::Id(id) => {
                self.cursor.clear();
                self.cursor.push_str(&String::from_utf8_lossy(id));
            }
            Line::Reconnect { after_ms } => {
                self.told = Some(after_ms);
                self.shared.told_to_reconnect.fetch_add(1, Relaxed);
                self.shared.told_at_ms.lock().push(now_us() / 1000);
            }
        };
        let mut feed = |bytes: &[u8]| {
            if stream.chunked {
                decoder.feed(bytes, &mut |b| lines.feed(b, &mut on_line))
            } else {
                lines.feed(bytes, &mut on_line);
                true
            }
        };
        let mut open = feed(&stream.rest);
        let mut buf = vec![0u8; 4096];
        while open {
            match stream.tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => open = feed(&buf[..n]),
            }
        }
    }

    fn payload(&mut self, s: u64, t: u64, seq: Option<u64>) {
        let shared = self.shared;
        shared.deliveries.fetch_add(1, Relaxed);
        let now = now_us();
        let _ = shared.latency[self.shard]
            .lock()
            .record(now.saturating_sub(t).max(1));
        self.recovery_progress(t, now);
        let s = match self.order {
            OrderBy::Payload => {
                if self.joining {
                    // Joined a channel already publishing: it starts here.
                    self.joining = false;
                    self.last = s.saturating_sub(1);
                    shared.skipped[self.channel].fetch_add(self.last, Relaxed);
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
                let base = *self.started_at.get_or_insert(seq.saturating_sub(1));
                seq.saturating_sub(base)
            }
        };
        if s > self.last {
            if s != self.last + 1 {
                shared.out_of_order.fetch_add(1, Relaxed);
            }
            self.last = s;
            shared.unique[self.channel].fetch_add(1, Relaxed);
        } else {
            shared.duplicates.fetch_add(1, Relaxed);
        }
    }

    fn dropped(&mut self) {
        match &mut self.recovery {
            // Dropped again before catching up: the first drop still counts.
            Some(r) => r.reconnected_at = None,
            None => {
                self.recovery = Some(Recovery {
                    dropped_at: now_us(),
                    reconnected_at: None,
                    replayed_until: 0,
                });
                self.shared.recovering.fetch_add(1, Relaxed);
            }
        }
    }

    fn reconnected(&mut self) {
        if let Some(r) = &mut self.recovery {
            r.reconnected_at = Some(now_us());
        }
    }

    fn recovery_progress(&mut self, sent_at: u64, now: u64) {
        let Some(r) = &mut self.recovery else {
            return;
        };
        let Some(reconnected_at) = r.reconnected_at else {
            return;
        };
        if sent_at < reconnected_at {
            r.replayed_until = now;
            return;
        }
        let caught_up = r.replayed_until.max(reconnected_at);
        let _ = self
            .shared
            .recovery
            .lock()
            .record(caught_up.saturating_sub(r.dropped_at).max(1));
        self.shared.last_recovered_us.fetch_max(caught_up, Relaxed);
        self.shared.recovering.fetch_sub(1, Relaxed);
        self.recovery = None;
    }
}

/// An open SSE response: the socket, body bytes read past the head, and whether the body
/// is chunked.
struct Stream {
    tcp: tokio::net::TcpStream,
    rest: Vec<u8>,
    chunked: bool,
}

/// Lets the kernel pick the source port at connect time, from the whole 4-tuple. Without it
/// `bind(ip, 0)` must find a port no other socket of that address holds, a search that
/// grows with every connection open (with 50k it took most of a worker's CPU during a
/// reconnect storm). Best effort: a kernel without it binds the old way.
fn bind_port_at_connect(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function borrows, with a c_int option value of the
    // size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Connects to node `node` from a spread source address, sends the request and reads the
/// response head.
async fn open(
    i: usize,
    spec: &WorkerSpec,
    node: usize,
    channel: usize,
    last_event_id: Option<&str>,
) -> anyhow::Result<Stream> {
    let octet = 2 + (i % spec.source_ips.max(1) as usize) as u8;
    let sock = TcpSocket::new_v4()?;
    bind_port_at_connect(&sock);
    sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, octet), 0)))?;
    let addr = spec.target.node_at(node);
    let mut stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            spec.target
                .subscribe_request(addr, channel, last_event_id)
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
            return Ok(Stream {
                tcp: stream,
                rest: head[end + 4..].to_vec(),
                chunked,
            });
        }
        anyhow::ensure!(head.len() < 16 * 1024, "response head too large");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_nodes_clients_spread_over_the_others() {
        let nodes = 4;
        let mut to = [0usize; 4];
        for i in (0..400).filter(|i| i % nodes == 0) {
            to[next_node(0, i, 0, nodes)] += 1;
        }
        assert_eq!(to, [0, 34, 33, 33]);
        // A failed attempt tries another node, never the one it came from.
        for attempt in 0..6 {
            assert_ne!(next_node(2, 6, attempt, nodes), 2);
        }
        assert_eq!(next_node(0, 5, 0, 1), 0);
    }

    #[test]
    fn jitter_stays_under_its_ceiling_and_varies() {
        let mut seed = 0x1234_5678;
        let draws: Vec<u64> = (0..1000).map(|_| jitter(&mut seed, 100)).collect();
        assert!(draws.iter().all(|d| *d <= 100));
        assert!(draws.iter().any(|d| *d < 20) && draws.iter().any(|d| *d > 80));
    }
}
