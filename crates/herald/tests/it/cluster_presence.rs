//! Presence on the cluster: subscriber counts summed over 3 nodes, seen by a dispatcher
//! within a tick of joins and leaves; a 10k-subscriber channel costs each node at most one
//! report a tick, however fast they join; small channels list their users.

use crate::cluster_support::*;
use crate::common::token;
use anyhow::ensure;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TICK: Duration = Duration::from_millis(250);
/// Subscribers of the big channel on each node: 10,000 in all.
const BIG: [usize; 3] = [3000, 3000, 4000];

/// Opens an SSE stream on a raw socket and waits for its 200.
async fn open(addr: &str, channel: &str, token: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET /v1/sse?channel={channel}&token={token} HTTP/1.1\r\nhost: t\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await??;
        ensure!(n > 0, "closed before the head");
        head.extend_from_slice(&buf[..n]);
    }
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

/// Opens `n` streams of `channel` on `addr` as `user`, a few hundred at a time.
async fn open_many(
    addr: &str,
    channel: &str,
    user: &str,
    n: usize,
) -> anyhow::Result<Vec<TcpStream>> {
    let tok = token(user, &["pres:*"]);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(250);
        let opened =
            futures_util::future::join_all((0..batch).map(|_| open(addr, channel, &tok))).await;
        for s in opened {
            out.push(s?);
        }
    }
    Ok(out)
}

async fn presence(via: &Proc, channel: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::Client::new()
        .get(format!("{}/v1/channels/{channel}/presence", via.base))
        .bearer_auth(crate::common::API_KEY)
        .send()
        .await?
        .json()
        .await?)
}

/// Polls `via` until `channel` counts `want`; returns how long it took.
async fn until_count(via: &Proc, channel: &str, want: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let p = presence(via, channel).await?;
        if p["count"] == want {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "{channel} never counted {want}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn reports(cluster: &Cluster) -> f64 {
    let mut sum = 0.0;
    for n in &cluster.nodes {
        sum += n.metric("herald_presence_reports_total").await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_presence_counts_across_nodes_within_a_tick() -> anyhow::Result<()> {
    let test = "cluster_presence_counts_across_nodes_within_a_tick";
    let spec = Spec {
        dispatchers: 1,
        nodes: 3,
        env: vec![(
            "HERALD_PRESENCE_TICK_MS".into(),
            TICK.as_millis().to_string(),
        )],
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.base.trim_start_matches("http://").to_owned())
        .collect();
    let dispatcher = &cluster.dispatchers[0];

    // A small channel names its users: two on n0, one on n2.
    let mut small = Vec::new();
    small.extend(open_many(&addrs[0], "pres:small", "ann", 1).await?);
    small.extend(open_many(&addrs[0], "pres:small", "ben", 1).await?);
    small.extend(open_many(&addrs[2], "pres:small", "cat", 1).await?);
    until_count(dispatcher, "pres:small", 3).await?;
    let p = presence(dispatcher, "pres:small").await?;
    assert_eq!(p["users"], serde_json::json!(["ann", "ben", "cat"]), "{p}");
    assert_eq!(p["nodes"], 2, "{p}");

    // 10k subscribers of one channel over the three nodes.
    let before = reports(&cluster).await;
    let joining = Instant::now();
    let mut big: Vec<Vec<TcpStream>> = Vec::new();
    for (i, n) in BIG.iter().enumerate() {
        big.push(open_many(&addrs[i], "pres:big", &format!("viewer{i}"), *n).await?);
    }
    let joined = joining.elapsed();
    let seen = until_count(dispatcher, "pres:big", 10_000).await?;
    let p = presence(dispatcher, "pres:big").await?;
    ensure!(p.get("users").is_none(), "a 10k channel listed users: {p}");
    // What the joins cost: at most one report per node per tick while they came in.
    let elapsed = joining.elapsed();
    let sent = reports(&cluster).await - before;
    let ticks = (elapsed.as_secs_f64() / TICK.as_secs_f64()).ceil() + 1.0;
    println!(
        "10k joins took {joined:?}; the dispatcher counted them {seen:?} after the last; \
         {sent} presence reports from 3 nodes over {ticks} ticks"
    );
    ensure!(
        sent <= 3.0 * ticks,
        "{sent} reports from 3 nodes in {ticks} ticks: more than one a tick each"
    );
    ensure!(
        seen <= 2 * TICK,
        "the dispatcher saw the count {seen:?} after the last join (tick {TICK:?})"
    );

    // Leaves: n1's streams go.
    let leaving = big.remove(1);
    drop(leaving);
    let seen = until_count(dispatcher, "pres:big", 7_000).await?;
    ensure!(seen <= 2 * TICK, "leaves counted after {seen:?}");
    drop(small.pop());
    until_count(dispatcher, "pres:small", 2).await?;
    let p = presence(&cluster.nodes[1], "pres:small").await?;
    assert_eq!(
        p["users"],
        serde_json::json!(["ann", "ben"]),
        "any process answers: {p}"
    );
    drop(big);
    cluster.passed();
    Ok(())
}
