//! Resumes on the embedded store: a crowd resuming one channel at once asks the store for the
//! channel's meta once, not once per client, and still gets exactly what it missed; a
//! position newer than that read, or from another epoch, is judged on a read of its own; a
//! position past a lagging node's head waits for its live messages instead of reading the store;
//! and what a store replay read fills the ring of a channel new to the node.

mod support;

use herald_fabric::in_process;
use herald_node::{Node, NodeConfig, SseBody};
use herald_proto::{Cursor, Position};
use herald_store::{AppendBatch, FjallOptions, FjallStore, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{entry, fabric_msg, numbers, read_until, EPOCH};
use tokio::sync::{mpsc, Notify};

const WAIT: Duration = Duration::from_secs(5);
const CROWD: u64 = 50;

/// A position in the test epoch.
fn at(seq: u64) -> Position {
    Position { epoch: EPOCH, seq }
}

async fn resume(node: &Arc<Node>, channel: &str, at: Position) -> anyhow::Result<SseBody> {
    let mut cursor = Cursor::default();
    cursor.set(channel, at);
    Ok(node
        .open_stream(&[channel.to_owned()], Some(&cursor), None)
        .await?
        .into_body(Arc::new(Notify::new())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_crowd_reads_the_channel_meta_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FjallStore::open(FjallOptions::new(dir.path()))?);
    store
        .append(AppendBatch {
            entries: (1..=5).map(|s| entry("c", s)).collect(),
        })
        .await?;
    let (fabric, _unused) = in_process(16);
    let (tx, rx) = mpsc::channel(64);
    let node = Node::start(store.clone(), Arc::new(fabric), rx, NodeConfig::default());

    let started = Instant::now();
    let mut crowd = Vec::new();
    for i in 0..CROWD {
        let after = i % 5;
        let mut body = resume(&node, "c", at(after)).await?;
        let mut seen = String::new();
        read_until(&mut body, &mut seen, WAIT, |s| numbers(s).contains(&5)).await?;
        assert_eq!(
            numbers(&seen),
            (after + 1..=5).collect::<Vec<_>>(),
            "resumed after {after}: {seen:?}"
        );
        crowd.push((body, seen));
    }
    let elapsed = started.elapsed().as_secs();
    let stats = node.stats();
    // One read per second of the crowd at most (a slow machine may outlive a reused read).
    assert!(
        stats.store_meta_reads <= 1 + elapsed + 1,
        "{} meta reads for {CROWD} resumes in {elapsed} s",
        stats.store_meta_reads
    );
    assert!(stats.shared_reads >= CROWD - stats.store_meta_reads);

    // A position past what that read saw: the client has seen 6 elsewhere. It is judged on
    // a fresh read, not reset as ahead.
    store
        .append(AppendBatch {
            entries: vec![entry("c", 6)],
        })
        .await?;
    tx.send(fabric_msg("c", 6)).await?;
    for (body, seen) in &mut crowd {
        read_until(body, seen, WAIT, |s| numbers(s).contains(&6)).await?;
    }
    let before = node.stats().store_meta_reads;
    let mut ahead = resume(&node, "c", at(6)).await?;
    store
        .append(AppendBatch {
            entries: vec![entry("c", 7)],
        })
        .await?;
    tx.send(fabric_msg("c", 7)).await?;
    let mut seen = String::new();
    read_until(&mut ahead, &mut seen, WAIT, |s| numbers(s).contains(&7)).await?;
    assert!(!seen.contains("herald:reset"), "reset: {seen:?}");
    assert_eq!(numbers(&seen), vec![7]);
    assert_eq!(node.stats().store_meta_reads, before + 1);

    // A position from another epoch is reset, whatever a recent read says.
    let mut other = resume(&node, "c", Position { epoch: 99, seq: 3 }).await?;
    let mut seen = String::new();
    read_until(&mut other, &mut seen, WAIT, |s| s.contains("herald:reset")).await?;
    assert!(seen.contains("\"reason\":\"epoch\""), "{seen:?}");
    node.shutdown(WAIT).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_past_a_lagging_node_waits_for_live_rather_than_the_store() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FjallStore::open(FjallOptions::new(dir.path()))?);
    let (fabric, _unused) = in_process(16);
    let (tx, rx) = mpsc::channel(64);
    let node = Node::start(store.clone(), Arc::new(fabric), rx, NodeConfig::default());
    let mut first = node
        .open_stream(&["d".to_owned()], None, None)
        .await?
        .into_body(Arc::new(Notify::new()));
    store
        .append(AppendBatch {
            entries: (1..=5).map(|s| entry("d", s)).collect(),
        })
        .await?;
    // The store holds 1..=5; this node has fanned out 1..=3 so far.
    for s in 1..=3 {
        tx.send(fabric_msg("d", s)).await?;
    }
    let mut seen = String::new();
    read_until(&mut first, &mut seen, WAIT, |s| numbers(s).contains(&3)).await?;

    // A client that saw 4 on another node resumes here.
    let ranges = node.stats().store_range_reads;
    let mut late = resume(&node, "d", at(4)).await?;
    // Its join is done (attached live) while this node still stands at 3.
    let deadline = Instant::now() + WAIT;
    while node.stats().subscriptions < 2 {
        anyhow::ensure!(Instant::now() < deadline, "the resume never attached");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for s in 4..=5 {
        tx.send(fabric_msg("d", s)).await?;
    }
    let mut seen = String::new();
    read_until(&mut late, &mut seen, WAIT, |s| numbers(s).contains(&5)).await?;
    assert_eq!(numbers(&seen), vec![5], "after 4, nothing twice: {seen:?}");
    assert_eq!(
        node.stats().store_range_reads,
        ranges,
        "the node's own live messages served the resume"
    );
    node.shutdown(WAIT).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_replay_fills_the_ring_for_the_next_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FjallStore::open(FjallOptions::new(dir.path()))?);
    store
        .append(AppendBatch {
            entries: (1..=10).map(|s| entry("e", s)).collect(),
        })
        .await?;
    let (fabric, _unused) = in_process(16);
    let (tx, rx) = mpsc::channel(64);
    let node = Node::start(store.clone(), Arc::new(fabric), rx, NodeConfig::default());
    // The channel is new to this node (its clients came from a node that died): the first
    // resume reads the store, the later ones find what it read in the ring.
    let mut streams = Vec::new();
    for after in [2, 4, 6, 9] {
        let mut body = resume(&node, "e", at(after)).await?;
        let mut seen = String::new();
        read_until(&mut body, &mut seen, WAIT, |s| numbers(s).contains(&10)).await?;
        assert_eq!(
            numbers(&seen),
            (after + 1..=10).collect::<Vec<_>>(),
            "{seen:?}"
        );
        streams.push((body, seen));
    }
    // A join counts its replay after handing the stream its messages: the counters may
    // trail what the streams read by a moment.
    let counts = || {
        let s = node.stats();
        (s.store_range_reads, s.replays_store, s.replays_ring)
    };
    let deadline = Instant::now() + WAIT;
    while counts() != (1, 1, 3) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(counts(), (1, 1, 3), "one range read, then the ring");
    store
        .append(AppendBatch {
            entries: vec![entry("e", 11)],
        })
        .await?;
    tx.send(fabric_msg("e", 11)).await?;
    for (body, seen) in &mut streams {
        read_until(body, seen, WAIT, |s| numbers(s).contains(&11)).await?;
        assert_eq!(numbers(seen).last(), Some(&11));
    }
    node.shutdown(WAIT).await;
    Ok(())
}
