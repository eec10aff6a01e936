//! The node-death and drain scenarios: clients spread over a cluster's nodes follow their
//! channels while they publish; one node is killed (`kill -9`) or drained (SIGTERM), and its
//! clients reconnect to the others — after a jittered backoff, or when the drain tells them
//! to — resuming from their last event ID. Reports how long until every one of them was back
//! and caught up, the connect rate the other nodes saw, the store reads the resumes cost, and
//! (as every scenario) loss, duplicates and order over the whole run.

use crate::coordinator::{
    absorb, ask_all, await_deliveries, base_spec, connected, expected_deliveries, paced, progress,
    record_paced, stop_all, with_progress, Args, Resolved, Scenario,
};
use crate::measure::Meter;
use crate::report::{FailoverReport, Percentiles, Report};
use crate::target::{now_us, Target};
use crate::worker::{Command, Reconnect, WorkerReport, WorkerSpec};
use anyhow::Context;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) async fn run(
    args: &Args,
    r: &Resolved,
    target: &Target,
    mut meter: Meter,
    mut report: Report,
) -> anyhow::Result<Report> {
    let kill = args.scenario == Scenario::NodeDeath;
    let nodes = target.node_addrs.len();
    anyhow::ensure!(
        nodes >= 2,
        "node-death and drain need a cluster: give --node-addr with two or more nodes"
    );
    anyhow::ensure!(
        r.rate > 0.0,
        "the clients catch up on publishes: give --rate"
    );
    anyhow::ensure!(
        args.fail_at < r.duration.as_secs_f64(),
        "--fail-at {} s is not within the --duration of publishing ({} s): the clients catch \
         up on what is published after the failure",
        args.fail_at,
        r.duration.as_secs_f64()
    );
    anyhow::ensure!(
        args.victim < nodes,
        "--victim {} but there are {nodes} nodes",
        args.victim
    );
    let victim_addr = target.node_at(args.victim);
    let victim_pid = match args.victim_pid {
        Some(pid) => pid,
        None => {
            let dir = args
                .cluster_dir
                .as_deref()
                .context("which process is the victim node? give --victim-pid or --cluster-dir")?;
            crate::roles::pid_listening_at(dir, victim_addr)?
        }
    };
    let victim_clients = (0..r.connections)
        .filter(|i| i % nodes == args.victim)
        .count() as u64;
    let bench_cpu0 = crate::procstat::own_cpu_seconds();

    let all = WorkerSpec {
        reconnect: Some(Reconnect {
            backoff_ms: args.backoff_ms,
            max_backoff_ms: args.max_backoff_ms.max(args.backoff_ms),
        }),
        ..base_spec(args, r, target)
    };
    let mut workers = crate::coordinator::spawn_workers(&all, args.per_worker)?;
    connected(
        &mut workers,
        r.connections,
        Duration::from_secs(180),
        "subscribers",
    )
    .await?;
    meter.settle().await;
    meter.start().await;

    let sent = Arc::new(AtomicU64::new(0));
    let publishing = paced(args, r, target, sent.clone());
    let started = Instant::now();
    let fail_at = started + Duration::from_secs_f64(args.fail_at.max(0.0));
    let publishing_ends = started + r.duration;
    let failing = async {
        tokio::time::sleep_until(fail_at.into()).await;
        let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
        let failed_at_us = now_us();
        // SAFETY: kill(2) with a pid and a signal number has no memory effects here.
        let rc = unsafe { libc::kill(victim_pid as libc::pid_t, signal) };
        anyhow::ensure!(
            rc == 0,
            "signalling the victim node (pid {victim_pid}): {}",
            std::io::Error::last_os_error()
        );
        // Until every client of the victim is back and caught up, or no hope of it.
        let limit = Duration::from_secs_f64(60.0 + 3.0 * args.drain_window);
        let deadline = Instant::now() + limit;
        loop {
            let reps = ask_all(&mut workers, &Command::Report).await?;
            let sum = |f: fn(&WorkerReport) -> u64| reps.iter().map(f).sum::<u64>();
            let back = sum(|w| w.failover.reconnects);
            let recovering = sum(|w| w.failover.recovering);
            let gave_up = sum(|w| w.failover.gave_up);
            progress(&format!(
                "{} node {victim_addr}: {back}/{victim_clients} reconnected, {recovering} catching up",
                if kill { "killed" } else { "draining" }
            ));
            if back + gave_up >= victim_clients && recovering == 0 {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "\n[bench] not every client of the victim was back and caught up within {limit:?}"
                );
                break;
            }
            if Instant::now() > publishing_ends {
                eprintln!(
                    "\n[bench] publishing ended before every client had caught up (a client \
                     counts as caught up when it receives a message published after it \
                     reconnected): give a longer --duration"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(failed_at_us)
    };
    let (out, failed_at_us) = tokio::join!(with_progress(publishing, &sent, "published"), failing);
    let failed_at_us = failed_at_us?;
    record_paced(&mut report, &out);

    // Every client gets everything published to its channel, reconnect or not.
    report.expected_deliveries = expected_deliveries(r, &out.published);
    let expected = report.expected_deliveries;
    await_deliveries(&mut workers, args.drain_secs, |_| expected, |_| {}).await?;
    meter.end().await;
    let finals = stop_all(workers, &out.published).await?;
    eprintln!();
    let workers_cpu = absorb(&mut report, &finals)?;
    // A stream that ended and came back was not closed early; one that gave up was.
    report.closed_early = finals.iter().map(|w| w.failover.gave_up).sum();
    report.bench_cpu_s = crate::procstat::own_cpu_seconds() - bench_cpu0 + workers_cpu;
    report.failover = Some(failover_report(
        args,
        kill,
        victim_addr.to_string(),
        victim_clients,
        failed_at_us,
        &finals,
    )?);
    let published = report.published;
    meter.fill(&mut report, published);
    Ok(report)
}

fn failover_report(
    args: &Args,
    kill: bool,
    victim: String,
    victim_clients: u64,
    failed_at_us: u64,
    finals: &[WorkerReport],
) -> anyhow::Result<FailoverReport> {
    let mut recovery = crate::new_hist();
    let mut at_ms: Vec<u64> = Vec::new();
    let mut told_ms: Vec<u64> = Vec::new();
    let mut per_node: Vec<u64> = Vec::new();
    let mut f = FailoverReport {
        event: if kill { "kill -9" } else { "drain (SIGTERM)" }.into(),
        victim,
        victim_clients,
        ..FailoverReport::default()
    };
    let mut last_recovered_us = 0;
    let mut last_reconnected_ms = 0;
    for w in finals.iter().map(|w| &w.failover) {
        f.reconnects += w.reconnects;
        f.reconnect_failures += w.reconnect_failures;
        f.gave_up += w.gave_up;
        f.told_to_reconnect += w.told_to_reconnect;
        f.still_catching_up += w.recovering;
        last_recovered_us = last_recovered_us.max(w.last_recovered_us);
        last_reconnected_ms = last_reconnected_ms.max(w.last_reconnected_ms);
        recovery.add(crate::decode_hist(&w.recovery)?)?;
        at_ms.extend_from_slice(&w.reconnected_at_ms);
        told_ms.extend_from_slice(&w.told_at_ms);
        per_node.resize(per_node.len().max(w.reconnects_to.len()), 0);
        for (k, n) in w.reconnects_to.iter().enumerate() {
            per_node[k] += n;
        }
    }
    at_ms.sort_unstable();
    let failed_at_ms = failed_at_us / 1000;
    let secs_after = |ms: u64| ms.saturating_sub(failed_at_ms) as f64 / 1000.0;
    f.all_reconnected_s = if last_reconnected_ms > 0 {
        secs_after(last_reconnected_ms)
    } else {
        0.0
    };
    f.all_caught_up_s = if f.still_catching_up == 0 && last_recovered_us > 0 {
        last_recovered_us.saturating_sub(failed_at_us) as f64 / 1e6
    } else {
        0.0
    };
    f.recovery_ms = Percentiles::ms(&recovery);
    f.reconnects_per_node = per_node;
    f.peak_connects_per_s = peak_per_second(&at_ms);
    f.reconnects_per_s = per_second_after(&at_ms, failed_at_ms);
    f.told_per_s = per_second_after(&told_ms, failed_at_ms);
    f.mean_connects_per_s = match (at_ms.first(), at_ms.last()) {
        (Some(a), Some(b)) if b > a => at_ms.len() as f64 * 1000.0 / (b - a) as f64,
        _ => 0.0,
    };
    if !kill && args.drain_window > 0.0 {
        f.drain_window_s = args.drain_window;
        f.even_connects_per_s = victim_clients as f64 / args.drain_window;
        f.peak_vs_even = f.peak_connects_per_s as f64 / f.even_connects_per_s.max(1e-9);
    }
    Ok(f)
}

/// How many of `at_ms` fall in each second after `from_ms` (0–1 s, 1–2 s, …).
fn per_second_after(at_ms: &[u64], from_ms: u64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for &t in at_ms {
        let sec = (t.saturating_sub(from_ms) / 1000) as usize;
        if out.len() <= sec {
            out.resize(sec + 1, 0);
        }
        out[sec] += 1;
    }
    out
}

/// The most reconnects in any one-second window (`at_ms` sorted).
fn peak_per_second(at_ms: &[u64]) -> u64 {
    let mut peak = 0;
    let mut from = 0;
    for (to, &t) in at_ms.iter().enumerate() {
        while at_ms[from] + 1000 <= t {
            from += 1;
        }
        peak = peak.max((to - from + 1) as u64);
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::{peak_per_second, per_second_after};

    #[test]
    fn peak_counts_the_busiest_second() {
        assert_eq!(peak_per_second(&[]), 0);
        assert_eq!(peak_per_second(&[5]), 1);
        // 0, 400, 999 share a second; 1000 does not share one with 0.
        assert_eq!(peak_per_second(&[0, 400, 999, 1000, 2500]), 3);
        assert_eq!(peak_per_second(&[0, 1000, 1001, 1002, 1999, 2000]), 4);
    }

    #[test]
    fn per_second_buckets_from_the_failure() {
        assert_eq!(per_second_after(&[], 5), Vec::<u64>::new());
        assert_eq!(
            per_second_after(&[5000, 5999, 6000, 8500, 100], 5000),
            [3, 1, 0, 1]
        );
    }
}
