//! Publishing load: paced (a set total rate, each channel's messages strictly in order) or
//! as fast as possible (ingest).

use crate::target::{payload, Target};
use crate::Hist;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub struct Paced {
    /// Messages acknowledged per channel (the payload counter `s` reached).
    pub published: Vec<u64>,
    pub errors: u64,
    /// Publish request latency, µs.
    pub latency: Hist,
    pub elapsed: Duration,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// Publishes at `rate` msgs/s in total for `duration`, spread over `publishers` tasks that
/// each own every `publishers`-th channel and publish one message at a time, so a channel's
/// messages are sent in order.
pub async fn paced(
    target: &Target,
    channels: usize,
    rate: f64,
    duration: Duration,
    payload_bytes: usize,
    publishers: usize,
    sent: Arc<AtomicU64>,
) -> Paced {
    let publishers = publishers.clamp(1, channels.max(1));
    let http = client();
    let pad: Arc<str> = Arc::from("x".repeat(payload_bytes.saturating_sub(40)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..publishers {
        let target = target.publisher(k);
        let http = http.clone();
        let pad = pad.clone();
        let sent = sent.clone();
        let period = Duration::from_secs_f64(publishers as f64 / rate.max(0.001));
        tasks.spawn(async move {
            let mine: Vec<usize> = (k..channels).step_by(publishers).collect();
            let mut counts = vec![0u64; mine.len()];
            let mut errors = 0u64;
            let mut latency = crate::new_hist();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next = 0usize;
            while started.elapsed() < duration && !mine.is_empty() {
                tick.tick().await;
                let slot = next % mine.len();
                next += 1;
                let s = counts[slot] + 1;
                let body = payload(s, &pad);
                let t0 = Instant::now();
                match target.publish(&http, mine[slot], &body).send().await {
                    Ok(r) if r.status().is_success() => {
                        counts[slot] = s;
                        sent.fetch_add(1, Relaxed);
                        let _ = latency.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    _ => errors += 1,
                }
            }
            (mine, counts, errors, latency)
        });
    }
    let mut published = vec![0u64; channels];
    let mut errors = 0;
    let mut latency = crate::new_hist();
    while let Some(res) = tasks.join_next().await {
        if let Ok((mine, counts, e, h)) = res {
            for (c, n) in mine.into_iter().zip(counts) {
                published[c] = n;
            }
            errors += e;
            let _ = latency.add(&h);
        }
    }
    Paced {
        published,
        errors,
        latency,
        elapsed: started.elapsed(),
    }
}

pub struct Ingest {
    pub messages: u64,
    /// Acknowledged messages per channel.
    pub per_channel: Vec<u64>,
    pub errors: u64,
    pub requests: u64,
    pub latency: Hist,
    pub elapsed: Duration,
}

/// Publishes as fast as `publishers` concurrent keep-alive connections allow, `batch`
/// messages per request (1 = single publishes).
pub async fn ingest(
    target: &Target,
    channels: usize,
    duration: Duration,
    payload_bytes: usize,
    publishers: usize,
    batch: usize,
    sent: Arc<AtomicU64>,
) -> Ingest {
    let http = client();
    let pad: Arc<str> = Arc::from("x".repeat(payload_bytes.saturating_sub(40)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..publishers.max(1) {
        let target = target.publisher(k);
        let http = http.clone();
        let pad = pad.clone();
        let sent = sent.clone();
        tasks.spawn(async move {
            let (mut messages, mut errors, mut requests) = (0u64, 0u64, 0u64);
            let mut per_channel = vec![0u64; channels.max(1)];
            let mut latency = crate::new_hist();
            let mut n = 0u64;
            while started.elapsed() < duration {
                let t0 = Instant::now();
                let first = n;
                let channel_of = |n: u64| (k + n as usize) % channels.max(1);
                let rb = if batch <= 1 {
                    n += 1;
                    target.publish(&http, channel_of(n), &payload(n, &pad))
                } else {
                    let items: Vec<(usize, String)> = (0..batch)
                        .map(|_| {
                            n += 1;
                            (channel_of(n), payload(n, &pad))
                        })
                        .collect();
                    target.publish_batch(&http, &items)
                };
                requests += 1;
                match rb.send().await {
                    // 207 (some items of a batch failed) counts as an error: the bench's
                    // delivery accounting expects every message of a request.
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        let m = batch.max(1) as u64;
                        messages += m;
                        for i in first + 1..=n {
                            per_channel[channel_of(i)] += 1;
                        }
                        sent.fetch_add(m, Relaxed);
                        let _ = latency.record(t0.elapsed().as_micros().max(1) as u64);
                    }
                    _ => errors += 1,
                }
            }
            (messages, per_channel, errors, requests, latency)
        });
    }
    let mut out = Ingest {
        messages: 0,
        per_channel: vec![0; channels.max(1)],
        errors: 0,
        requests: 0,
        latency: crate::new_hist(),
        elapsed: Duration::ZERO,
    };
    while let Some(res) = tasks.join_next().await {
        if let Ok((m, per_channel, e, r, h)) = res {
            out.messages += m;
            for (total, mine) in out.per_channel.iter_mut().zip(per_channel) {
                *total += mine;
            }
            out.errors += e;
            out.requests += r;
            let _ = out.latency.add(&h);
        }
    }
    out.elapsed = started.elapsed();
    out
}

/// Publishes `per_channel` messages (payload counters 1..=per_channel) to every channel with
/// the batch API (channel c through publish address c % n, `concurrency` channels at a time),
/// and returns per channel the Herald cursor just before the first of them.
pub async fn backlog(
    target: &Target,
    channels: usize,
    per_channel: u64,
    payload_bytes: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<String>> {
    let http = client();
    let pad: Arc<str> = Arc::from("x".repeat(payload_bytes.saturating_sub(40)));
    let concurrency = concurrency.clamp(1, channels.max(1));
    let mut tasks = JoinSet::new();
    for k in 0..concurrency {
        let (target, http, pad) = (target.clone(), http.clone(), pad.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for c in (k..channels).step_by(concurrency) {
                let cursor = channel_backlog(&target.publisher(c), &http, c, per_channel, &pad)
                    .await
                    .map_err(|e| e.context(format!("backlog of channel {c}")))?;
                out.push((c, cursor));
            }
            anyhow::Ok(out)
        });
    }
    let mut cursors = vec![String::new(); channels];
    while let Some(res) = tasks.join_next().await {
        for (c, cursor) in res?? {
            cursors[c] = cursor;
        }
    }
    Ok(cursors)
}

async fn channel_backlog(
    target: &Target,
    http: &reqwest::Client,
    c: usize,
    per_channel: u64,
    pad: &str,
) -> anyhow::Result<String> {
    let mut first: Option<(u64, u64)> = None;
    let mut s = 0u64;
    while s < per_channel {
        let n = (per_channel - s).min(1000);
        let items: Vec<(usize, String)> = (1..=n).map(|k| (c, payload(s + k, pad))).collect();
        let resp = target.publish_batch(http, &items).send().await?;
        // 207: some items failed (their errors are in the body); the backlog must be whole.
        anyhow::ensure!(
            resp.status() == reqwest::StatusCode::OK,
            "backlog publish: {}",
            resp.status()
        );
        let body: herald_proto::PublishBatchResponse = resp.json().await?;
        if first.is_none() {
            let r = body
                .results
                .first()
                .ok_or_else(|| anyhow::anyhow!("empty batch answer"))?;
            first = Some((r.epoch.unwrap_or(0), r.seq.unwrap_or(1)));
        }
        s += n;
    }
    let (epoch, seq) = first.unwrap_or((0, 1));
    let mut cursor = herald_proto::Cursor::default();
    cursor.set(
        &crate::target::channel_name(c),
        herald_proto::Position {
            epoch,
            seq: seq.saturating_sub(1),
        },
    );
    Ok(cursor.encode())
}
