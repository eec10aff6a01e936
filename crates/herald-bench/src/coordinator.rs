//! Runs a scenario: starts worker processes holding the connections, publishes, waits for
//! the deliveries to drain, and gathers everything into a [`Report`].

use crate::measure::Meter;
use crate::publisher;
use crate::report::{Percentiles, Report, StoreReport};
use crate::target::{Kind, Target};
use crate::worker::{Command, OrderBy, WorkerReport, WorkerSpec};
use anyhow::{bail, Context};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Connections only: memory per idle connection.
    Idle,
    /// Many connections on one channel.
    Fanout,
    /// One channel per connection, many publishes.
    Channels,
    /// Durable publishes as fast as they go (batch API unless --batch 1).
    Ingest,
    /// Every client connects at once resuming `--backlog` messages behind: time until all
    /// have caught up (Herald only: the cursor is Herald's).
    Resume,
    /// One channel, single publishes as fast as `--publishers` concurrent publishers go,
    /// subscribers on every node (order checked by Herald's seq).
    Hot,
    /// A flash crowd: `--connections` follow one channel publishing `--rate` msgs/s; after
    /// `--crowd-at` seconds `--crowd` more join it as fast as they can. Reports how long the
    /// crowd took to connect and the first subscribers' p99 before and during it.
    FlashCrowd,
    /// Clients spread over a cluster's nodes (`--node-addr`) follow `--channels` publishing
    /// `--rate` msgs/s; after `--fail-at` seconds node `--victim` is killed (`kill -9`). Its
    /// clients reconnect to the other nodes after a jittered backoff and resume from their
    /// last event ID: reports how long until all were back and caught up, gap-free.
    NodeDeath,
    /// The same, but the victim is drained (SIGTERM): it tells its clients in band to
    /// reconnect elsewhere, spread over its drain window (`--drain-window`).
    Drain,
    /// The store alone: the bench inserts message rows into Cassandra (`--cql`) itself.
    StoreInsert,
    /// The same, each insert conditional (`IF NOT EXISTS`: one Paxos round).
    StoreLwt,
    /// Whatever the flags say.
    Custom,
}

/// Flags of `herald bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Preset; explicit flags override its numbers.
    #[arg(long, value_enum, default_value = "custom")]
    pub scenario: Scenario,
    /// Server address (publishes and subscriptions, unless the two below are given).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub addr: SocketAddr,
    /// Cluster: where to publish (dispatchers), comma-separated; publisher task k uses the
    /// (k mod n)-th.
    #[arg(long, value_delimiter = ',')]
    pub publish_addr: Vec<SocketAddr>,
    /// Cluster: where to subscribe (nodes), comma-separated; connection i uses the
    /// (i mod n)-th.
    #[arg(long, value_delimiter = ',')]
    pub node_addr: Vec<SocketAddr>,
    /// Role accounting: NAME=PID[,PID…], repeatable (CPU and RSS of those processes).
    #[arg(long = "role", value_name = "NAME=PID[,PID...]")]
    pub roles: Vec<String>,
    /// Role accounting from the pid files of scripts/cluster-up in DIR (dispatcher, node,
    /// nats, cassandra).
    #[arg(long)]
    pub cluster_dir: Option<PathBuf>,
    /// nats-server monitoring address (host:port) for its /varz counters.
    #[arg(long)]
    pub nats_monitor: Option<String>,
    /// Cassandra contact points (host:port,…): its own counters, and the store scenarios.
    #[arg(long)]
    pub cql: Option<String>,
    /// Herald's keyspace (Cassandra's per-table counts).
    #[arg(long, default_value = "herald")]
    pub keyspace: String,
    /// Keyspace the store scenarios write to (created with replication factor 1).
    #[arg(long, default_value = "herald_price")]
    pub price_keyspace: String,
    #[arg(long, value_enum, default_value = "herald")]
    pub target: Kind,
    /// Herald publisher key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Herald subscriber token; or give --jwt-secret to mint one.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// SSE connections to open.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Channels; connection i follows channel i % channels.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Total publishes per second (store-insert / store-lwt: rows per second, paced over
    /// the writers; without it they go as fast as they can).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing (idle: seconds connections are held).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Bytes of each message's data.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Concurrent publishing tasks.
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Messages per ingest request (1 = single publishes).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Connections per worker process (each process may hold ~20000 files).
    #[arg(long, default_value_t = 12_000)]
    pub per_worker: usize,
    /// Source addresses 127.0.0.2… to spread connections over (ports per address are limited).
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// The server's pid, for its memory and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Longest wait for deliveries after publishing stops.
    #[arg(long, default_value_t = 15.0)]
    pub drain_secs: f64,
    /// Resume scenario: messages per channel the clients are behind.
    #[arg(long, default_value_t = 1000)]
    pub backlog: u64,
    /// Flash crowd: connections that join at once.
    #[arg(long, default_value_t = 15_000)]
    pub crowd: usize,
    /// Flash crowd: seconds of steady publishing before the crowd joins.
    #[arg(long, default_value_t = 4.0)]
    pub crowd_at: f64,
    /// Flash crowd: the crowd's connects in flight per worker process (the first subscribers
    /// use --connect-concurrency). 1,024 lets 15k in within 2 s on a 2-CPU box.
    #[arg(long, default_value_t = 1024)]
    pub crowd_concurrency: usize,
    /// Node death / drain: the index in --node-addr of the node that fails.
    #[arg(long, default_value_t = 0)]
    pub victim: usize,
    /// Node death / drain: the victim's pid (default: found in --cluster-dir by its
    /// --listen address).
    #[arg(long)]
    pub victim_pid: Option<u32>,
    /// Node death / drain: seconds of publishing before the victim fails.
    #[arg(long, default_value_t = 5.0)]
    pub fail_at: f64,
    /// Reconnecting clients (node death): the first attempt waits a random 0..=this many
    /// ms; each failed attempt doubles the ceiling.
    #[arg(long, default_value_t = 1000)]
    pub backoff_ms: u64,
    #[arg(long, default_value_t = 8000)]
    pub max_backoff_ms: u64,
    /// Drain: the victim's drain window (its HERALD_DRAIN_SECS; nodes default to 10), the
    /// even connect rate at the other nodes is its clients ÷ this.
    #[arg(long, default_value_t = 10.0)]
    pub drain_window: f64,
}

pub(crate) struct Resolved {
    pub connections: usize,
    pub channels: usize,
    pub rate: f64,
    pub duration: Duration,
    pub publishers: usize,
    pub batch: usize,
}

fn resolve(a: &Args) -> Resolved {
    let (conns, chans, rate, dur, pubs, batch) = match a.scenario {
        Scenario::Idle => (10_000, 100, 0.0, 5.0, 1, 1),
        Scenario::Fanout => (10_000, 1, 100.0, 10.0, 1, 1),
        Scenario::Channels => (10_000, 10_000, 2_000.0, 10.0, 32, 1),
        Scenario::Ingest => (0, 100, 0.0, 10.0, 4, 1000),
        Scenario::Resume => (10_000, 100, 0.0, 0.0, 4, 1000),
        Scenario::Hot => (30, 1, 0.0, 10.0, 32, 1),
        Scenario::FlashCrowd => (1_000, 1, 50.0, 12.0, 1, 1),
        Scenario::NodeDeath | Scenario::Drain => (3_000, 100, 200.0, 25.0, 4, 1),
        Scenario::StoreInsert | Scenario::StoreLwt => (0, 100, 0.0, 10.0, 32, 1),
        Scenario::Custom => (100, 10, 100.0, 5.0, 4, 1),
    };
    Resolved {
        connections: a.connections.unwrap_or(conns),
        channels: a.channels.unwrap_or(chans).max(1),
        rate: a.rate.unwrap_or(rate),
        duration: Duration::from_secs_f64(a.duration.unwrap_or(dur).max(0.0)),
        publishers: a.publishers.unwrap_or(pubs).max(1),
        batch: a.batch.unwrap_or(batch).max(1),
    }
}

pub(crate) struct Worker {
    pub child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// Starts a `herald bench-worker` process holding `spec`'s connections.
    pub fn spawn(spec: &WorkerSpec) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("locating the herald binary")?;
        let mut child = tokio::process::Command::new(&exe)
            .arg("bench-worker")
            .arg("--spec")
            .arg(serde_json::to_string(spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a bench worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    async fn ask(&mut self, cmd: &Command) -> anyhow::Result<WorkerReport> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        let reply = tokio::time::timeout(Duration::from_secs(60), self.stdout.next_line())
            .await
            .context("worker did not answer in time")??
            .context("worker exited")?;
        Ok(serde_json::from_str(&reply)?)
    }
}

/// The workers' spec of a run: its connections and channels, every connection fresh (no
/// resume), ordered by the bench payload, staying closed when its stream ends. Scenarios
/// change what differs.
pub(crate) fn base_spec(args: &Args, r: &Resolved, target: &Target) -> WorkerSpec {
    WorkerSpec {
        target: target.clone(),
        first: 0,
        count: r.connections,
        channels: r.channels,
        source_ips: args.source_ips,
        connect_concurrency: args.connect_concurrency,
        resume_from: Vec::new(),
        order: OrderBy::Payload,
        joins_live: false,
        reconnect: None,
    }
}

/// `--rate` msgs/s over the run's channels for `--duration`.
pub(crate) async fn paced(
    args: &Args,
    r: &Resolved,
    target: &Target,
    sent: Arc<AtomicU64>,
) -> publisher::Paced {
    publisher::paced(
        target,
        r.channels,
        r.rate,
        r.duration,
        args.payload,
        r.publishers,
        sent,
    )
    .await
}

/// Every connection of channel c (connection i follows channel i % channels) should get
/// `published[c]` messages.
pub(crate) fn expected_deliveries(r: &Resolved, published: &[u64]) -> u64 {
    let subscribers_of = |c: usize| -> u64 {
        let full = (r.connections / r.channels) as u64;
        full + u64::from(c < r.connections % r.channels)
    };
    published
        .iter()
        .enumerate()
        .map(|(c, p)| p * subscribers_of(c))
        .sum()
}

/// Puts what the paced publishers did into the report.
pub(crate) fn record_paced(report: &mut Report, out: &publisher::Paced) {
    report.published = out.published.iter().sum();
    report.publish_errors = out.errors;
    report.duration_s = out.elapsed.as_secs_f64();
    report.publish_ms = Percentiles::ms(&out.latency);
    report.publish_rate = report.published as f64 / report.duration_s.max(1e-9);
}

/// Starts worker processes for the connections `all.first .. all.first + all.count`, at most
/// `per_worker` each.
pub(crate) fn spawn_workers(all: &WorkerSpec, per_worker: usize) -> anyhow::Result<Vec<Worker>> {
    let per = per_worker.max(1);
    let end = all.first + all.count;
    let mut out = Vec::new();
    let mut first = all.first;
    while first < end {
        let count = per.min(end - first);
        out.push(Worker::spawn(&WorkerSpec {
            first,
            count,
            ..all.clone()
        })?);
        first += count;
    }
    Ok(out)
}

/// Asks the workers for their counts every 100 ms until they have delivered what
/// `expected` makes of their reports, or `drain_secs` have passed; `seen` gets each total
/// delivered. Returns the last expected count.
pub(crate) async fn await_deliveries(
    workers: &mut [Worker],
    drain_secs: f64,
    mut expected: impl FnMut(&[WorkerReport]) -> u64,
    mut seen: impl FnMut(u64),
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs_f64(drain_secs);
    loop {
        let reps = ask_all(workers, &Command::Report).await?;
        let delivered: u64 = reps.iter().map(|w| w.deliveries).sum();
        let want = expected(&reps);
        seen(delivered);
        progress(&format!("draining {delivered}/{want}"));
        if delivered >= want || Instant::now() > deadline {
            return Ok(want);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The workers' final reports (`published[c]`: messages that went to channel c); then
/// they exit.
pub(crate) async fn stop_all(
    mut workers: Vec<Worker>,
    published: &[u64],
) -> anyhow::Result<Vec<WorkerReport>> {
    let stop = Command::Stop {
        published: published.to_vec(),
    };
    let finals = ask_all(&mut workers, &stop).await?;
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        let _ = w.child.start_kill();
    }
    Ok(finals)
}

pub(crate) async fn ask_all(
    workers: &mut [Worker],
    cmd: &Command,
) -> anyhow::Result<Vec<WorkerReport>> {
    let mut out = Vec::with_capacity(workers.len());
    for w in workers.iter_mut() {
        out.push(w.ask(cmd).await?);
    }
    Ok(out)
}

/// Waits until `want` connections are open or failed; returns (open, failed).
pub(crate) async fn connected(
    workers: &mut [Worker],
    want: usize,
    limit: Duration,
    who: &str,
) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        let reps = ask_all(workers, &Command::Report).await?;
        let (ok, failed) = reps
            .iter()
            .fold((0, 0), |a, w| (a.0 + w.connected, a.1 + w.failed));
        progress(&format!("{who}: connecting {ok}/{want} ({failed} failed)"));
        if ok + failed >= want as u64 {
            return Ok((ok, failed));
        }
        if Instant::now() > deadline {
            bail!("{who}: not connected within {limit:?} ({ok} ok, {failed} failed)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn progress(text: &str) {
    let mut e = std::io::stderr().lock();
    let _ = write!(e, "\r[bench] {text:<100}");
    let _ = e.flush();
}

pub(crate) fn server_cpu(pid: Option<u32>) -> f64 {
    pid.and_then(|p| crate::procstat::cpu_seconds(p).ok())
        .unwrap_or(0.0)
}

fn scenario_name(s: Scenario) -> String {
    use clap::ValueEnum;
    s.to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

fn subscriber_token(args: &Args) -> Option<String> {
    match (&args.token, &args.jwt_secret) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(secret)) => Some(herald_proto::sign_hs256(
            &herald_proto::Claims {
                sub: "bench".into(),
                channels: vec!["*".into()],
                exp: Some(crate::target::now_us() / 1_000_000 + 24 * 3600),
                nbf: None,
                iat: None,
            },
            secret.as_bytes(),
        )),
        (None, None) => None,
    }
}

/// Runs the benchmark and returns its report (also printed by the caller).
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let r = resolve(&args);
    let target = Target {
        kind: args.target,
        addr: args.publish_addr.first().copied().unwrap_or(args.addr),
        publish_addrs: args.publish_addr.clone(),
        node_addrs: args.node_addr.clone(),
        api_key: args.api_key.clone(),
        token: subscriber_token(&args),
    };
    let store = matches!(args.scenario, Scenario::StoreInsert | Scenario::StoreLwt);
    let keyspace = if store {
        &args.price_keyspace
    } else {
        &args.keyspace
    };
    let mut meter = Meter::new(&args, &target, keyspace).await?;
    let mut report = Report {
        scenario: scenario_name(args.scenario),
        target: target.describe(),
        connections: r.connections as u64,
        channels: r.channels as u64,
        rate_target: r.rate,
        payload_bytes: args.payload,
        server_pid: args.server_pid,
        ..Report::default()
    };
    if store {
        return run_store(&args, &r, meter, report).await;
    }
    if args.scenario == Scenario::FlashCrowd {
        return crate::flash::run(&args, &r, &target, meter, report).await;
    }
    if matches!(args.scenario, Scenario::NodeDeath | Scenario::Drain) {
        return crate::failover::run(&args, &r, &target, meter, report).await;
    }
    let bench_cpu0 = crate::procstat::own_cpu_seconds();
    if let Some(pid) = args.server_pid {
        report.server_rss_before = crate::procstat::rss_bytes(pid)?;
    }

    // Resume storm: publish the backlog first, and point every client just before it.
    let mut resume_from = Vec::new();
    let mut published = vec![0u64; r.channels];
    if args.scenario == Scenario::Resume {
        anyhow::ensure!(
            args.target == Kind::Herald,
            "the resume scenario uses Herald cursors"
        );
        resume_from = publisher::backlog(
            &target,
            r.channels,
            args.backlog,
            args.payload,
            r.publishers,
        )
        .await?;
        published = vec![args.backlog; r.channels];
        report.published = args.backlog * r.channels as u64;
        // The storm's window starts before the clients connect.
        meter.start().await;
    }
    let storm_started = Instant::now();
    let storm_cpu0 = server_cpu(args.server_pid);
    let storm_target = if args.scenario == Scenario::Resume {
        args.backlog * r.connections as u64
    } else {
        0
    };
    let mut storm_done: Option<Duration> = None;

    // Concurrent publishers on one channel: only the server's seq orders its messages.
    let order = if matches!(args.scenario, Scenario::Hot | Scenario::Ingest) {
        OrderBy::ServerSeq
    } else {
        OrderBy::Payload
    };
    anyhow::ensure!(
        order == OrderBy::Payload || r.connections == 0 || args.target == Kind::Herald,
        "subscribers of concurrent publishers are checked by Herald's seq"
    );

    // Connections, held by worker processes.
    let all = WorkerSpec {
        resume_from: resume_from.clone(),
        order,
        ..base_spec(&args, &r, &target)
    };
    let mut workers = spawn_workers(&all, args.per_worker)?;
    let connect_deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let reps = ask_all(&mut workers, &Command::Report).await?;
        let (ok, failed): (u64, u64) = reps
            .iter()
            .fold((0, 0), |a, w| (a.0 + w.connected, a.1 + w.failed));
        progress(&format!(
            "connecting {ok}/{} ({failed} failed)",
            r.connections
        ));
        let delivered: u64 = reps.iter().map(|w| w.deliveries).sum();
        if storm_target > 0 && delivered >= storm_target && storm_done.is_none() {
            storm_done = Some(storm_started.elapsed());
        }
        if ok + failed >= r.connections as u64 {
            break;
        }
        if Instant::now() > connect_deadline {
            bail!("connections not established within 180 s ({ok} ok, {failed} failed)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let (Some(pid), false) = (args.server_pid, args.scenario == Scenario::Resume) {
        // Let the server settle (allocator, lazily created channel state) before reading RSS.
        let mut last = crate::procstat::rss_bytes(pid)?;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = crate::procstat::rss_bytes(pid)?;
            let stable = now.abs_diff(last) < 64 * 1024;
            last = now;
            if stable {
                break;
            }
        }
        report.server_rss_connected = last;
    }

    // A resume storm's server work happens while clients connect.
    let cpu0 = if args.scenario == Scenario::Resume {
        storm_cpu0
    } else {
        meter.settle().await;
        meter.start().await;
        server_cpu(args.server_pid)
    };
    let sent = Arc::new(AtomicU64::new(0));
    match args.scenario {
        Scenario::Resume | Scenario::StoreInsert | Scenario::StoreLwt => {}
        Scenario::Ingest | Scenario::Hot => {
            let job = publisher::ingest(
                &target,
                r.channels,
                r.duration,
                args.payload,
                r.publishers,
                r.batch,
                sent.clone(),
            );
            let out = with_progress(job, &sent, "published").await;
            report.published = out.messages;
            report.publish_errors = out.errors;
            report.duration_s = out.elapsed.as_secs_f64();
            report.publish_ms = Percentiles::ms(&out.latency);
            report.ingest_msgs_per_s = out.messages as f64 / out.elapsed.as_secs_f64().max(1e-9);
            report.publish_rate = report.ingest_msgs_per_s;
            published = out.per_channel;
        }
        _ if r.rate > 0.0 => {
            let job = paced(&args, &r, &target, sent.clone());
            let out = with_progress(job, &sent, "published").await;
            record_paced(&mut report, &out);
            published = out.published;
        }
        _ => {
            progress("holding connections");
            tokio::time::sleep(r.duration).await;
            report.duration_s = r.duration.as_secs_f64();
        }
    }

    report.expected_deliveries = expected_deliveries(&r, &published);
    if !workers.is_empty() {
        let expected = report.expected_deliveries;
        await_deliveries(
            &mut workers,
            args.drain_secs,
            |_| expected,
            |delivered| {
                if storm_target > 0 && delivered >= storm_target && storm_done.is_none() {
                    storm_done = Some(storm_started.elapsed());
                }
            },
        )
        .await?;
    }
    if let Some(d) = storm_done {
        report.resume_caught_up_s = d.as_secs_f64();
    }
    report.server_cpu_s = server_cpu(args.server_pid) - cpu0;
    meter.end().await;

    let finals = stop_all(workers, &published).await?;
    eprintln!();
    let workers_cpu = absorb(&mut report, &finals)?;
    if report.connected > 0 && report.server_rss_connected > 0 {
        report.server_rss_per_connection = (report.server_rss_connected as f64
            - report.server_rss_before as f64)
            / report.connected as f64;
    }
    if report.server_cpu_s > 0.0 {
        report.deliveries_per_server_cpu_s = report.deliveries as f64 / report.server_cpu_s;
        report.publishes_per_server_cpu_s = report.published as f64 / report.server_cpu_s;
    }
    report.bench_cpu_s = crate::procstat::own_cpu_seconds() - bench_cpu0 + workers_cpu;
    // The resume storm's messages were published before its window.
    let window_publishes = if args.scenario == Scenario::Resume {
        0
    } else {
        report.published
    };
    meter.fill(&mut report, window_publishes);
    Ok(report)
}

/// Adds the workers' final reports to `report` (counts, latency and connect percentiles);
/// returns the CPU the workers used.
pub(crate) fn absorb(report: &mut Report, finals: &[WorkerReport]) -> anyhow::Result<f64> {
    let mut latency = crate::new_hist();
    let mut connect = crate::new_hist();
    let mut workers_cpu = 0.0;
    for f in finals {
        report.connected += f.connected;
        report.failed += f.failed;
        report.closed_early += f.closed;
        report.deliveries += f.deliveries;
        report.duplicates += f.duplicates;
        report.out_of_order += f.out_of_order;
        report.lost += f.lost;
        workers_cpu += f.cpu_seconds;
        latency.add(crate::decode_hist(&f.latency)?)?;
        connect.add(crate::decode_hist(&f.connect)?)?;
    }
    report.latency_ms = Percentiles::ms(&latency);
    report.connect_ms = Percentiles::ms(&connect);
    Ok(workers_cpu)
}

/// store-insert / store-lwt: rows straight into Cassandra, no Herald.
async fn run_store(
    args: &Args,
    r: &Resolved,
    mut meter: Meter,
    mut report: Report,
) -> anyhow::Result<Report> {
    let session = meter
        .session()
        .context("the store scenarios write to Cassandra: give --cql HOST:PORT")?;
    let lwt = args.scenario == Scenario::StoreLwt;
    let insert = crate::store_price::prepare(&session, &args.price_keyspace, lwt).await?;
    report.target = format!(
        "cassandra at {} (no herald)",
        args.cql.as_deref().unwrap_or("")
    );
    report.connections = 0;
    report.channels = 100;
    let bench_cpu0 = crate::procstat::own_cpu_seconds();
    meter.start().await;
    let sent = Arc::new(AtomicU64::new(0));
    let job = crate::store_price::run(
        session,
        insert,
        lwt,
        r.publishers,
        r.rate,
        r.duration,
        args.payload,
        sent.clone(),
    );
    let out = with_progress(job, &sent, "rows").await;
    meter.end().await;
    eprintln!();
    let secs = out.elapsed.as_secs_f64().max(1e-9);
    report.published = out.rows;
    report.publish_errors = out.errors;
    report.duration_s = out.elapsed.as_secs_f64();
    report.publish_ms = Percentiles::ms(&out.latency);
    report.publish_rate = out.rows as f64 / secs;
    if r.rate > 0.0 && report.publish_rate < 0.95 * r.rate {
        eprintln!(
            "[bench] the writers fell behind: {:.0} rows/s achieved of {:.0} asked for",
            report.publish_rate, r.rate
        );
    }
    report.store = Some(StoreReport {
        keyspace: args.price_keyspace.clone(),
        conditional: lwt,
        writers: r.publishers.min(100) as u64,
        rows: out.rows,
        errors: out.errors,
        not_applied: out.not_applied,
        rows_per_s: out.rows as f64 / secs,
        write_ms: Percentiles::ms(&out.latency),
    });
    report.bench_cpu_s = crate::procstat::own_cpu_seconds() - bench_cpu0;
    meter.fill(&mut report, out.rows);
    Ok(report)
}

pub(crate) async fn with_progress<T>(
    job: impl std::future::Future<Output = T>,
    sent: &AtomicU64,
    what: &str,
) -> T {
    tokio::pin!(job);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            out = &mut job => return out,
            _ = tick.tick() => progress(&format!("{what} {}", sent.load(Relaxed))),
        }
    }
}
