//! The flash-crowd scenario: a channel publishing steadily to its first subscribers, then a
//! crowd joining it at once. What matters is that the whole crowd gets in, nothing is lost,
//! and the first subscribers barely notice (their p99 during the crowd against before it).

use crate::coordinator::{
    absorb, ask_all, await_deliveries, base_spec, connected, paced, record_paced, server_cpu,
    spawn_workers, stop_all, with_progress, Args, Resolved, Worker,
};
use crate::measure::Meter;
use crate::report::{FlashReport, Percentiles, Report};
use crate::target::Target;
use crate::worker::{Command, WorkerSpec};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latency taken before the steady window starts (connections warming up).
const WARM_UP: Duration = Duration::from_secs(1);
/// After the crowd is in: a pause, then the window of the channel's settled latency.
const SETTLE: Duration = Duration::from_secs(1);
const SETTLED_WINDOW: Duration = Duration::from_secs(3);

pub(crate) async fn run(
    args: &Args,
    r: &Resolved,
    target: &Target,
    mut meter: Meter,
    mut report: Report,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        r.rate > 0.0,
        "the flash crowd needs a publish rate (--rate)"
    );
    let bench_cpu0 = crate::procstat::own_cpu_seconds();
    if let Some(pid) = args.server_pid {
        report.server_rss_before = crate::procstat::rss_bytes(pid)?;
    }
    let spawn = |first: usize, count: usize, joins_live: bool, connect_concurrency: usize| {
        let all = WorkerSpec {
            first,
            count,
            joins_live,
            connect_concurrency,
            ..base_spec(args, r, target)
        };
        spawn_workers(&all, args.per_worker)
    };
    let mut base = spawn(0, r.connections, false, args.connect_concurrency)?;
    connected(
        &mut base,
        r.connections,
        Duration::from_secs(180),
        "first subscribers",
    )
    .await?;
    meter.settle().await;
    meter.start().await;
    let cpu0 = server_cpu(args.server_pid);

    let sent = Arc::new(AtomicU64::new(0));
    let publishing = paced(args, r, target, sent.clone());
    let started = Instant::now();
    let crowd_at = Duration::from_secs_f64(args.crowd_at.max(WARM_UP.as_secs_f64() + 1.0));
    let joining = async {
        tokio::time::sleep(WARM_UP).await;
        ask_all(&mut base, &Command::Window).await?;
        tokio::time::sleep_until((started + crowd_at).into()).await;
        let before = window(&mut base).await?;
        let crowd_started = Instant::now();
        let mut crowd = spawn(r.connections, args.crowd, true, args.crowd_concurrency)?;
        let (ok, failed) =
            connected(&mut crowd, args.crowd, Duration::from_secs(60), "the crowd").await?;
        let connect_s = crowd_started.elapsed().as_secs_f64();
        let joining = window(&mut base).await?;
        tokio::time::sleep(SETTLE).await;
        ask_all(&mut base, &Command::Window).await?;
        tokio::time::sleep(SETTLED_WINDOW).await;
        let settled = window(&mut base).await?;
        anyhow::Ok((crowd, [before, joining, settled], connect_s, ok, failed))
    };
    let (out, joined) = tokio::join!(with_progress(publishing, &sent, "published"), joining);
    let (crowd, windows, connect_s, crowd_ok, crowd_failed) = joined?;
    if out.elapsed < crowd_at + Duration::from_secs_f64(connect_s) + SETTLE + SETTLED_WINDOW {
        eprintln!(
            "\n[bench] publishing ended ({:.1} s) before the settled window did (the crowd took \
             {connect_s:.1} s to connect): the settled figures are partial, and a crowd connection \
             that received nothing counts every message as lost; give a longer --duration",
            out.elapsed.as_secs_f64()
        );
    }
    record_paced(&mut report, &out);

    // Every first subscriber gets everything; a crowd connection everything after it joined.
    let mut all: Vec<Worker> = base.into_iter().chain(crowd).collect();
    let published = report.published;
    report.expected_deliveries = await_deliveries(
        &mut all,
        args.drain_secs,
        |reps| {
            let skipped: u64 = reps.iter().map(|w| w.skipped).sum();
            let subscribers: u64 = reps.iter().map(|w| w.connected).sum();
            (published * subscribers).saturating_sub(skipped)
        },
        |_| {},
    )
    .await?;
    report.server_cpu_s = server_cpu(args.server_pid) - cpu0;
    meter.end().await;
    let finals = stop_all(all, &out.published).await?;
    eprintln!();
    let workers_cpu = absorb(&mut report, &finals)?;
    report.connections = (r.connections + args.crowd) as u64;
    if report.server_cpu_s > 0.0 {
        report.deliveries_per_server_cpu_s = report.deliveries as f64 / report.server_cpu_s;
    }
    report.bench_cpu_s = crate::procstat::own_cpu_seconds() - bench_cpu0 + workers_cpu;
    let [before, joining, settled] = windows.map(|h| Percentiles::ms(&h));
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    report.flash = Some(FlashReport {
        crowd: args.crowd as u64,
        crowd_connected: crowd_ok,
        crowd_failed,
        crowd_connect_s: connect_s,
        joining_vs_settled_p99: ratio(joining.p99, settled.p99),
        joining_vs_before_p99: ratio(joining.p99, before.p99),
        before_ms: before,
        joining_ms: joining,
        settled_ms: settled,
    });
    let published = report.published;
    meter.fill(&mut report, published);
    Ok(report)
}

/// The workers' latency since their previous window, merged.
async fn window(workers: &mut [Worker]) -> anyhow::Result<crate::Hist> {
    let mut all = crate::new_hist();
    for w in ask_all(workers, &Command::Window).await? {
        all.add(crate::decode_hist(&w.latency)?)?;
    }
    Ok(all)
}
