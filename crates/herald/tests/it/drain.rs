//! Moving clients off a server: a drain on SIGTERM spreads `herald:reconnect` over
//! `HERALD_DRAIN_SECS`, and `HERALD_MAX_CONN_LIFETIME_SECS` asks old streams to reconnect.

use crate::common::*;
use anyhow::{bail, ensure, Context};
use herald_client::Subscription;
use std::time::{Duration, Instant};

/// What one stream saw up to its `herald:reconnect`.
struct Told {
    at: Instant,
    seqs: Vec<u64>,
    data: serde_json::Value,
    ended: bool,
}

/// Reads `sub` until `herald:reconnect`, then checks that the stream ends.
async fn until_reconnect(mut sub: Subscription, limit: Duration) -> anyhow::Result<Told> {
    let deadline = Instant::now() + limit;
    let mut seqs = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(&mut sub, left).await?;
        if ev.event == "herald:reconnect" {
            let at = Instant::now();
            let data = serde_json::from_str(&ev.data).context("reconnect data is JSON")?;
            let ended = matches!(
                tokio::time::timeout(WAIT, sub.next()).await,
                Ok(Ok(None)) | Ok(Err(_))
            );
            return Ok(Told {
                at,
                seqs,
                data,
                ended,
            });
        }
        if ev.event.starts_with("herald:") {
            bail!("unexpected {}: {}", ev.event, ev.data);
        }
        seqs.push(pos(&ev).1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_evenly_over_the_window() -> anyhow::Result<()> {
    const STREAMS: usize = 300;
    const WINDOW_SECS: u64 = 3;
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(
        dir.path(),
        &Opts::default()
            .env("HERALD_DRAIN_SECS", WINDOW_SECS.to_string())
            .env("HERALD_RETRY_JITTER_MS", "500"),
    )?;
    let sc = server.subscriber(&["live:*"]);
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let sub = sc.subscribe(&["live:d"], None).await?;
        tasks.push(tokio::spawn(until_reconnect(sub, Duration::from_secs(30))));
    }
    let sent = publish_n(&server.publisher(), "live:d", 5).await?;
    // Every stream has the messages before the drain starts (so the test checks they are
    // not cut off, rather than racing the publish).
    eventually(WAIT, "deliveries to every stream", || async {
        server
            .metric("herald_deliveries_total")
            .await
            .unwrap_or(0.0)
            >= (STREAMS * 5) as f64
    })
    .await?;
    let sigterm = Instant::now();
    // SAFETY: plain kill(2) on the child we started.
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGTERM);
    }
    // While streams move off, the listener still answers: /readyz says 503, /metrics is
    // read over a new connection, and a new stream is sent elsewhere with a 503.
    let http = reqwest::Client::new();
    eventually(WAIT, "/readyz turns 503 when the drain starts", || async {
        matches!(http.get(server.url("/readyz")).send().await, Ok(r) if r.status() == 503)
    })
    .await?;
    let open = server.metric("herald_connections").await?;
    ensure!(open > 0.0, "streams still open early in the drain: {open}");
    let refused = sc.subscribe(&["live:d"], None).await;
    let refused = refused
        .err()
        .context("a new stream during the drain was taken")?;
    ensure!(
        format!("{refused:#}").contains("shutting_down"),
        "refusal: {refused:#}"
    );
    let mut times = Vec::with_capacity(STREAMS);
    for t in tasks {
        let told = t.await??;
        ensure!(told.seqs == sent, "a stream lost messages: {:?}", told.seqs);
        ensure!(told.ended, "the stream did not end after herald:reconnect");
        ensure!(told.data["reason"] == "drain", "reason: {}", told.data);
        let after = told.data["after_ms"].as_u64().context("after_ms")?;
        ensure!(after <= 500, "after_ms {after} beyond the retry jitter");
        times.push(told.at.duration_since(sigterm).as_secs_f64());
    }
    let (status_took, status) = server.terminate(Duration::from_secs(20))?;
    ensure!(status.success(), "exit after the drain: {status}");
    times.sort_by(f64::total_cmp);
    let window = WINDOW_SECS as f64;
    let (first, last) = (times[0], times[STREAMS - 1]);
    ensure!(
        last <= window + 1.5,
        "the last stream was told at {last:.2}s, window {window}s"
    );
    ensure!(
        last - first >= 0.7 * window,
        "reconnects bunched together: {first:.2}s..{last:.2}s"
    );
    // The connect rate the other nodes would see, per second of the window.
    let per_sec = STREAMS as f64 / window;
    let mut buckets = vec![0usize; WINDOW_SECS as usize + 2];
    let top = buckets.len() - 1;
    for t in &times {
        buckets[(*t as usize).min(top)] += 1;
    }
    let peak = *buckets.iter().max().unwrap_or(&0) as f64;
    ensure!(
        peak <= 1.5 * per_sec,
        "peak {peak} reconnects in one second, over 1.5× the even rate {per_sec}: {buckets:?}"
    );
    eprintln!(
        "drain: {STREAMS} streams told from {first:.2}s to {last:.2}s, per second {buckets:?}; exit {status_took:?} after SIGTERM"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_asked_to_reconnect_at_their_max_lifetime() -> anyhow::Result<()> {
    const STREAMS: usize = 20;
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_CONN_LIFETIME_SECS", "2"),
    )?;
    let sc = server.subscriber(&["live:*"]);
    let opened = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let sub = sc.subscribe(&["live:l"], None).await?;
        tasks.push(tokio::spawn(until_reconnect(sub, Duration::from_secs(15))));
    }
    let sent = publish_n(&server.publisher(), "live:l", 3).await?;
    for t in tasks {
        let told = t.await??;
        let age = told.at.duration_since(opened).as_secs_f64();
        // 80–100 % of the lifetime, checked every second.
        ensure!(
            (1.5..=3.5).contains(&age),
            "asked to reconnect at {age:.2}s, lifetime 2s"
        );
        ensure!(told.data["reason"] == "lifetime", "reason: {}", told.data);
        ensure!(told.seqs == sent, "a stream lost messages: {:?}", told.seqs);
        ensure!(told.ended, "the stream did not end after herald:reconnect");
    }
    assert_eq!(
        server.metric("herald_lifetime_reconnects_total").await?,
        STREAMS as f64
    );
    // A new stream is welcome: the lifetime is per stream, not a refusal.
    let mut again = sc.subscribe(&["live:l"], None).await?;
    publish_n(&server.publisher(), "live:l", 1).await?;
    ensure!(pos(&next_event(&mut again, WAIT).await?).1 == 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_drain_moves_streams_off_and_waits_for_the_exit() -> anyhow::Result<()> {
    const STREAMS: usize = 10;
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(
        dir.path(),
        &Opts::default()
            .env("HERALD_DRAIN_SECS", "1")
            .env("HERALD_RETRY_JITTER_MS", "100"),
    )?;
    let sc = server.subscriber(&["live:*"]);
    let mut tasks = Vec::new();
    for _ in 0..STREAMS {
        let sub = sc.subscribe(&["live:c"], None).await?;
        tasks.push(tokio::spawn(until_reconnect(sub, Duration::from_secs(20))));
    }
    let sent = publish_n(&server.publisher(), "live:c", 3).await?;
    eventually(WAIT, "deliveries to every stream", || async {
        server
            .metric("herald_deliveries_total")
            .await
            .unwrap_or(0.0)
            >= (STREAMS * 3) as f64
    })
    .await?;
    let pid = server.pid().to_string();
    let addr = format!("127.0.0.1:{}", server.port);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "drain",
                "--pid",
                &pid,
                "--addr",
                &addr,
                "--timeout-secs",
                "20",
            ])
            .env("HERALD_METRICS_TOKEN", crate::common::API_KEY)
            .output(),
    )
    .await
    .context("herald drain did not return")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "herald drain failed: {stderr}");
    ensure!(
        stderr.contains("exited after") && stderr.contains("streams open at"),
        "herald drain output: {stderr}"
    );
    for t in tasks {
        let told = t.await??;
        ensure!(told.data["reason"] == "drain", "reason: {}", told.data);
        ensure!(told.seqs == sent, "a stream lost messages: {:?}", told.seqs);
        ensure!(told.ended, "the stream did not end after herald:reconnect");
    }
    let (_, status) = server.terminate(Duration::from_secs(5))?;
    ensure!(status.success(), "exit after the drain: {status}");

    // Refusals: no such pid file, a pid file without a pid.
    let missing = dir.path().join("missing.pid");
    let garbage = dir.path().join("garbage.pid");
    std::fs::write(&garbage, "not a pid\n")?;
    for (file, says) in [(&missing, "reading"), (&garbage, "not a pid")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("drain")
            .arg("--pid-file")
            .arg(file)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(says),
            "herald drain --pid-file {}: {stderr}",
            file.display()
        );
    }
    Ok(())
}
