//! `herald check`: a fault-injecting checker of Herald's guarantees (G1–G9 in docs/RELIABILITY.md).
//!
//! It starts its own deployment — one `herald serve` (`--target single`) or NATS, 2
//! dispatchers and 3 nodes over a Cassandra/ScyllaDB (`--target cluster`) — and, while
//! publishers and subscribers work it hard, kills processes (`SIGKILL`, sometimes `SIGTERM`)
//! and restarts them. Clients record what they were told: every acknowledged publish, and
//! per SSE connection the cursor it presented and every event it got. At the end each
//! channel's full history is read and [`verify`] judges durability, order, gap-free resume,
//! resets, data, ephemeral ids, exactly-once publish and memory. Any violation makes the
//! run fail.
//!
//! Layout: [`args`] flags; `target` process supervision (single, cluster); `publisher` and
//! `subscriber` the clients; `sse` a raw SSE client; [`record`] what is kept; [`verify`] the
//! verifier; `sampler` memory and server counters; [`report`] the output.

pub mod args;
pub mod cql;
mod procs;
mod publisher;
pub mod record;
pub mod report;
mod sampler;
pub mod sse;
mod subscriber;
mod target;
pub mod verify;

pub use args::{Args, TargetKind};
pub use report::Report;

use anyhow::Context;
use herald_client::Client;
use herald_proto::{Claims, Position};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use record::{ChannelSpec, FinalHistory, Universe};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::{Secrets, ServerConf, Target};
use tokio::sync::watch;
use tokio::task::JoinSet;
use verify::{Histories, Kind, Violation};

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Publishing, subscribing, faults.
    Run,
    /// No new publishes or faults; publishers finish retrying the message in hand.
    Drain,
    /// Subscribers resume until they hold every channel's head.
    CatchUp,
    /// Everything ends.
    Stop,
}

/// Namespaces of the run and their retention (messages). `tiny` makes resets happen.
const NAMESPACES: [(&str, u64); 3] = [("tiny", 20), ("live", 1000), ("user", 10_000)];

fn channel_specs(n: usize) -> Vec<ChannelSpec> {
    (0..n)
        .map(|i| {
            let (ns, keep) = NAMESPACES[i % NAMESPACES.len()];
            ChannelSpec {
                name: format!("{ns}:c{i}"),
                retention_count: keep,
            }
        })
        .collect()
}

fn config_toml() -> String {
    NAMESPACES
        .iter()
        .map(|(ns, keep)| format!("[namespaces.{ns}]\nretention_count = {keep}\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn elapsed(t0: Instant) -> String {
    format!("{:7.1}s", t0.elapsed().as_secs_f64())
}

/// Runs a check; the report says whether any guarantee was violated.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    anyhow::ensure!(args.publishers > 0, "--publishers must be at least 1");
    anyhow::ensure!(args.channels > 0, "--channels must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be positive"
    );
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let run_dir = tempfile::Builder::new()
        .prefix("herald-check-")
        .tempdir()
        .context("creating the run directory")?;
    let specs = channel_specs(args.channels);
    let universe = Arc::new(Universe::new(specs.clone()).with_t0(record::now_ms()));
    let names: Arc<Vec<String>> = Arc::new(specs.iter().map(|c| c.name.clone()).collect());
    let config_path = run_dir.path().join("herald.toml");
    std::fs::write(&config_path, config_toml())?;
    let secrets = Secrets::random(&mut rng);
    let conf = ServerConf {
        args: &args,
        secrets: &secrets,
        config_path: &config_path,
        run_dir: run_dir.path(),
    };
    eprintln!(
        "herald check: seed {seed}, starting the {:?} target (logs in {})",
        args.target,
        run_dir.path().display()
    );
    let mut target = Target::start(&conf).await?;
    let topo = target.topology();
    eprintln!("{} all processes ready", elapsed(t0));

    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let sampler = tokio::spawn(sampler::run(
        topo.clone(),
        secrets.api_key.clone(),
        phase_rx.clone(),
    ));

    let sub_shared = Arc::new(subscriber::SubShared::new(
        universe.clone(),
        args.selftest_violation,
    ));
    let mut subs = JoinSet::new();
    for idx in 0..args.subscribers {
        let k = rng.gen_range(1..=3usize.min(names.len()));
        let channels: Vec<String> = names.choose_multiple(&mut rng, k).cloned().collect();
        let token = herald_proto::sign_hs256(
            &Claims {
                sub: format!("s{idx}"),
                channels: channels.clone(),
                exp: Some(record::now_ms() / 1000 + args.duration.as_secs() + 86_400),
                nbf: None,
                iat: None,
            },
            secrets.jwt_secret.as_bytes(),
        );
        let cfg = subscriber::SubCfg {
            idx,
            seed: rng.gen(),
            channels,
            token,
        };
        subs.spawn(subscriber::run(
            cfg,
            topo.clone(),
            phase_rx.clone(),
            sub_shared.clone(),
        ));
    }

    let pub_shared = Arc::new(publisher::PubShared::default());
    let clients: Arc<Vec<Client>> = Arc::new(
        topo.dispatchers
            .iter()
            .map(|d| Client::new(target::Topology::base(d)).with_api_key(&secrets.api_key))
            .collect(),
    );
    let run_tag = format!("{:x}", seed & 0xffff_ffff);
    let mut pubs = JoinSet::new();
    for idx in 0..args.publishers {
        let cfg = publisher::PubCfg {
            idx,
            seed: rng.gen(),
            run_tag: run_tag.clone(),
            channels: names.clone(),
            interval: Duration::from_secs_f64(args.publishers as f64 / args.rate),
            clients: clients.clone(),
        };
        pubs.spawn(publisher::run(
            cfg,
            topo.clone(),
            phase_rx.clone(),
            pub_shared.clone(),
        ));
    }

    // Faults until the end of --duration.
    let mut violations: Vec<Violation> = Vec::new();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut fault_log: Vec<String> = Vec::new();
    let end = tokio::time::Instant::now() + args.duration;
    loop {
        let next = if args.kill_every.is_zero() {
            end
        } else {
            tokio::time::Instant::now() + args.kill_every.mul_f64(rng.gen_range(0.5..1.5))
        };
        if next >= end {
            tokio::time::sleep_until(end).await;
            break;
        }
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        let at = elapsed(t0);
        let o = target.inject_fault(&mut rng).await;
        let line = format!(
            "t={}s {} {} (back in {:.1?}){}",
            at.trim().trim_end_matches('s'),
            o.kind.split(' ').next().unwrap_or(""),
            o.victim,
            started.elapsed(),
            o.note
                .as_deref()
                .map(|n| format!(" — {n}"))
                .unwrap_or_default()
        );
        eprintln!("{at} fault: {line}");
        fault_log.push(line);
        *faults.entry(o.kind).or_insert(0) += 1;
        notes.extend(o.note);
        violations.extend(o.violations);
    }

    // Drain: no new messages or faults; the messages in hand are retried until acknowledged.
    let _ = phase_tx.send(Phase::Drain);
    violations.extend(target.ensure_up().await);
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pubs.is_empty() {
        match tokio::time::timeout_at(drain_deadline, pubs.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                notes.push(format!(
                    "{} publisher(s) were still retrying 30 s after publishing stopped",
                    pubs.len()
                ));
                pubs.abort_all();
                break;
            }
        }
    }
    eprintln!(
        "{} publishing stopped; reading every channel's history",
        elapsed(t0)
    );

    // The final record: every channel's full history.
    let mut histories: Histories = Vec::with_capacity(names.len());
    for ch in names.iter() {
        match fetch_history(&clients, ch).await {
            Ok(h) => histories.push(Some(h)),
            Err(e) => {
                violations.push(Violation::new(
                    Kind::Availability,
                    format!("could not read the history of {ch}: {e:#}"),
                ));
                histories.push(None);
            }
        }
    }
    let heads: HashMap<usize, Position> = histories
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            h.as_ref().map(|h| {
                (
                    i,
                    Position {
                        epoch: h.epoch,
                        seq: h.last_seq,
                    },
                )
            })
        })
        .collect();
    let _ = sub_shared.heads.set(heads);

    // Catch-up: subscribers resume until they hold every head.
    let _ = phase_tx.send(Phase::CatchUp);
    let mut outcomes = Vec::new();
    let catch_deadline = tokio::time::Instant::now() + args.catch_up;
    while !subs.is_empty() {
        match tokio::time::timeout_at(catch_deadline, subs.join_next()).await {
            Ok(Some(Ok(o))) => outcomes.push(o),
            Ok(Some(Err(e))) => violations.push(Violation::new(
                Kind::Availability,
                format!("a subscriber task failed: {e}"),
            )),
            Ok(None) | Err(_) => break,
        }
    }
    let _ = phase_tx.send(Phase::Stop);
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(10), subs.join_next()).await {
        if let Ok(o) = r {
            outcomes.push(o);
        }
    }
    subs.abort_all();
    let caught_up = outcomes.iter().filter(|o| o.behind.is_none()).count();
    for o in &outcomes {
        if let Some(b) = &o.behind {
            violations.push(Violation::new(
                Kind::Stuck,
                format!(
                    "s{} did not reach the head within {:?} of publishing stopping: {b}",
                    o.idx, args.catch_up
                ),
            ));
        }
    }
    if outcomes.len() < args.subscribers {
        violations.push(Violation::new(
            Kind::Stuck,
            format!(
                "{} subscriber(s) did not stop within 10 s",
                args.subscribers - outcomes.len()
            ),
        ));
    }
    eprintln!(
        "{} {caught_up}/{} subscribers caught up; verifying",
        elapsed(t0),
        args.subscribers
    );
    let sampled = tokio::time::timeout(Duration::from_secs(10), sampler)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    notes.extend(target.shutdown().await);

    // Verification.
    let acks = std::mem::take(&mut *pub_shared.acks.lock());
    violations.extend(std::mem::take(&mut *pub_shared.violations.lock()));
    let obs = std::mem::take(&mut *sub_shared.obs.lock());
    let (found, summary) = verify::verify_final(&universe, &acks, &histories, &obs);
    violations.extend(obs.violations.iter().cloned());
    violations.extend(found);
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    for (name, &rss) in &sampled.max_rss {
        if rss > args.max_rss_mb * 1024 * 1024 {
            violations.push(Violation::new(
                Kind::Memory,
                format!(
                    "{name} reached {:.1} MiB RSS (limit --max-rss-mb {})",
                    mb(rss),
                    args.max_rss_mb
                ),
            ));
        }
    }
    let mut resets_by_reason = BTreeMap::new();
    for r in &obs.resets {
        *resets_by_reason.entry(r.reason.clone()).or_insert(0) += 1;
    }
    let (counts, details) = Report::new_violations(&violations);
    let ok = violations.is_empty();
    let run_dir = if !ok || args.keep {
        Some(run_dir.keep().display().to_string())
    } else {
        None
    };
    let kills = faults
        .iter()
        .filter(|(k, _)| k.starts_with("sigkill") || k.starts_with("sigterm"))
        .map(|(_, n)| n)
        .sum();
    Ok(Report {
        ok,
        target: args.target,
        seed,
        duration_s: args.duration.as_secs_f64(),
        wall_s: t0.elapsed().as_secs_f64(),
        publishers: args.publishers,
        subscribers: args.subscribers,
        clients: args.publishers + args.subscribers,
        channels: names.to_vec(),
        publish: pub_shared.stats(),
        subscribe: sub_shared.stats(),
        events: obs.stats.clone(),
        resets_by_reason,
        faults,
        kills,
        fault_notes: notes,
        fault_log,
        verification: summary,
        server_metrics: sampled.metrics,
        max_rss_mb: mb(sampled.max_rss.values().copied().max().unwrap_or(0)),
        max_rss_mb_by_process: sampled
            .max_rss
            .iter()
            .map(|(k, &v)| (k.clone(), (mb(v) * 10.0).round() / 10.0))
            .collect(),
        subscribers_caught_up: caught_up,
        violation_count: violations.len() as u64,
        violations: counts,
        violation_details: details,
        run_dir,
    })
}

/// A channel's whole history (paged), from the first dispatcher that answers.
async fn fetch_history(clients: &[Client], channel: &str) -> anyhow::Result<FinalHistory> {
    let mut last_err = None;
    for attempt in 0..10 {
        let client = &clients[attempt % clients.len()];
        match read_history(client, channel).await {
            Ok(h) => return Ok(h),
            Err(e) => last_err = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no dispatcher")))
}

async fn read_history(client: &Client, channel: &str) -> anyhow::Result<FinalHistory> {
    let mut out = FinalHistory::default();
    let mut after = 0;
    let mut first = true;
    loop {
        let page = tokio::time::timeout(
            Duration::from_secs(15),
            client.history(channel, after, 1000),
        )
        .await
        .context("history request timed out")??;
        if first {
            out.epoch = page.epoch;
            out.first_seq = page.first_seq;
            first = false;
        } else {
            anyhow::ensure!(
                page.epoch == out.epoch,
                "epoch changed while paging ({} then {})",
                out.epoch,
                page.epoch
            );
        }
        out.last_seq = out.last_seq.max(page.last_seq);
        for m in &page.messages {
            let data: serde_json::Value =
                serde_json::from_str(m.data.get()).unwrap_or(serde_json::Value::Null);
            out.messages.push(FinalHistory::message(m.seq, &data, m.ts));
        }
        if !page.has_more || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    Ok(out)
}
