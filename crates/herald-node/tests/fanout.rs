//! The fan-out loop under trouble, on the embedded store: a hole in one channel is repaired
//! without holding up the others (the repair read of one channel is held back until the
//! test lets it go), and a node that is behind drops ephemeral messages first.

mod support;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use herald_fabric::{in_process, FabricMessage, Incoming};
use herald_node::{Node, NodeConfig};
use herald_store::{
    Ack, AppendBatch, AppendEntry, ChannelMeta, FjallOptions, FjallStore, IdempotencyRecord,
    Retention, Store, StoreError, StoredMessage, TrimOutcome,
};
use http_body::Body;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use support::{entry, fabric_msg, numbers, read_until};
use tokio::sync::{mpsc, Notify};

/// The embedded store, except that `read_range` of `held` waits for `release`.
struct HeldReads {
    inner: FjallStore,
    held: &'static str,
    release: Arc<Notify>,
}

#[async_trait]
impl Store for HeldReads {
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        self.inner.channel_meta(channel).await
    }
    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.inner.append(batch).await
    }
    async fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if channel == self.held {
            self.release.notified().await;
        }
        self.inner.read_range(channel, after, limit).await
    }
    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency_get(channel, key, now_ms).await
    }
    async fn idempotency_landed(
        &self,
        entries: &[herald_store::AppendEntry],
    ) -> Result<(), StoreError> {
        self.inner.idempotency_landed(entries).await
    }
    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        self.inner.trim(channel, retention, now_ms).await
    }
    async fn list_channels(&self) -> Result<Vec<String>, StoreError> {
        self.inner.list_channels().await
    }
    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError> {
        self.inner.ack_set(channel, user, ack).await
    }
    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError> {
        self.inner.ack_get(channel, user).await
    }
    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        self.inner.acks(channel, after_user, limit).await
    }
    async fn expire_idempotency(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.expire_idempotency(now_ms).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_waiting_for_its_repair_does_not_hold_up_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fjall = FjallStore::open(FjallOptions::new(dir.path()))?;
    let write = |entries: Vec<AppendEntry>| fjall.append(AppendBatch { entries });
    write(vec![
        entry("a", 1),
        entry("a", 2),
        entry("a", 3),
        entry("b", 1),
        entry("b", 2),
    ])
    .await?;
    let release = Arc::new(Notify::new());
    let store = Arc::new(HeldReads {
        inner: fjall.clone(),
        held: "a",
        release: release.clone(),
    });
    let (fabric, _unused) = in_process(16);
    let (tx, rx) = mpsc::channel(64);
    let node = Node::start(store, Arc::new(fabric), rx, NodeConfig::default());

    // Each stream starts at its channel's head in the store: a after 3, b after 2.
    let (ca, cb) = (["a".to_owned()], ["b".to_owned()]);
    let mut a = node
        .open_stream(&ca, None, None)
        .await?
        .into_body(Arc::new(Notify::new()));
    let mut b = node
        .open_stream(&cb, None, None)
        .await?
        .into_body(Arc::new(Notify::new()));
    let (mut seen_a, mut seen_b) = (String::new(), String::new());

    // The fabric loses a:4: a:5 reveals the hole, and a's repair read is held.
    write(vec![
        entry("a", 4),
        entry("a", 5),
        entry("a", 6),
        entry("b", 3),
    ])
    .await?;
    tx.send(fabric_msg("a", 5)).await?;
    tx.send(fabric_msg("b", 3)).await?;
    tx.send(fabric_msg("a", 6)).await?;
    read_until(&mut b, &mut seen_b, Duration::from_secs(5), |s| {
        numbers(s).contains(&3)
    })
    .await
    .context("b's message while a's repair read is held")?;
    assert_eq!(numbers(&seen_b), vec![3]);
    // a has nothing to show yet: nothing may overtake its hole.
    let early = tokio::time::timeout(
        Duration::from_millis(200),
        std::future::poll_fn(|cx| Pin::new(&mut a).poll_frame(cx)),
    )
    .await;
    if let Ok(Some(Ok(f))) = early {
        if let Ok(data) = f.into_data() {
            seen_a.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(
        numbers(&seen_a).is_empty(),
        "a delivered past its hole before the repair: {seen_a:?}"
    );

    release.notify_one();
    read_until(&mut a, &mut seen_a, Duration::from_secs(5), |s| {
        numbers(s).contains(&6)
    })
    .await
    .context("a after its repair")?;
    assert_eq!(numbers(&seen_a), vec![4, 5, 6], "a in order, none skipped");
    let stats = node.stats();
    assert_eq!((stats.gap_repairs, stats.gap_skips), (1, 0));
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn ephemeral_msg(channel: &str) -> Incoming {
    Incoming::Message(FabricMessage {
        channel: Arc::from(channel),
        epoch: 0,
        seq: 0,
        ts_ms: 1,
        event: Arc::from("reaction"),
        data: Bytes::from_static(b"{}"),
        conflation_key: None,
        trace: None,
        sent_us: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_drops_ephemeral_messages_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(FjallStore::open(FjallOptions::new(dir.path()))?);
    let (fabric, _unused) = in_process(16);
    // 600 messages wait before the fan-out loop starts: the node is behind.
    let (tx, rx) = mpsc::channel(1024);
    for seq in 1..=300 {
        tx.send(ephemeral_msg("a")).await?;
        tx.send(fabric_msg("a", seq)).await?;
    }
    let node = Node::start(store, Arc::new(fabric), rx, NodeConfig::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tx.capacity() < tx.max_capacity() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the fan-out loop did not take the queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A batch is sorted as it is taken off the queue, so with the queue empty the count is
    // final: the first, long batch shed its ephemeral messages, the short rest kept them.
    let shed = node.stats().ephemeral_shed;
    assert!(
        shed > 0 && shed < 300,
        "ephemeral messages shed while behind, not after: {shed}"
    );
    node.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
