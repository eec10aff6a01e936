//! The single writer of the embedded dispatcher: takes every queued publish, assigns seqs,
//! writes them with one durable commit (group commit), answers the publishers, then hands
//! the messages to the fabric in seq order.

use crate::stats::Counters;
use crate::{now_ms, DispatcherConfig, Policies, PublishError, PublishItem};
use herald_fabric::{Fabric, FabricMessage};
use herald_proto::PublishResult;
use herald_store::{AppendBatch, AppendEntry, BlockingStore, ChannelMeta, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Channels whose head is cached; past this the cache starts over (heads are re-read).
const MAX_CACHED_HEADS: usize = 200_000;
/// Times a group's entries are sequenced again after losing conditional writes.
const MAX_ATTEMPTS: usize = 5;

pub(crate) type JobResult = Result<Vec<(usize, PublishResult)>, PublishError>;

/// Reliable items of one publish request, with their index in the request.
pub(crate) struct Job {
    pub items: Vec<(usize, PublishItem)>,
    pub reply: oneshot::Sender<JobResult>,
}

pub(crate) struct Sequencer {
    store: Arc<dyn Store>,
    /// Set when the sequencer runs on a thread of its own: store calls block it directly.
    blocking: Option<Arc<dyn BlockingStore>>,
    fabric: Arc<dyn Fabric>,
    counters: Arc<Counters>,
    max_group: usize,
    idempotency_window: Duration,
    /// channel → (epoch, last seq)
    heads: HashMap<String, (u64, u64)>,
    dirty: mpsc::Sender<String>,
    policies: Policies,
    /// Set when channel ownership may have moved: cached heads are re-read from the store.
    forget_heads: Arc<AtomicBool>,
}

impl Sequencer {
    pub fn new(
        store: Arc<dyn Store>,
        fabric: Arc<dyn Fabric>,
        counters: Arc<Counters>,
        config: &DispatcherConfig,
        dirty: mpsc::Sender<String>,
        forget_heads: Arc<AtomicBool>,
    ) -> Self {
        Self {
            store,
            blocking: None,
            fabric,
            counters,
            max_group: config.max_group.max(1),
            idempotency_window: config.idempotency_window,
            heads: HashMap::new(),
            dirty,
            policies: config.policies.clone(),
            forget_heads,
        }
    }

    /// Makes store calls synchronous (for a sequencer on a dedicated thread).
    pub fn with_blocking(mut self, blocking: Arc<dyn BlockingStore>) -> Self {
        self.blocking = Some(blocking);
        self
    }

    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        match &self.blocking {
            Some(b) => b.channel_meta(channel),
            None => self.store.channel_meta(channel).await,
        }
    }

    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now: u64,
    ) -> Result<Option<herald_store::IdempotencyRecord>, StoreError> {
        match &self.blocking {
            Some(b) => b.idempotency_get(channel, key, now),
            None => self.store.idempotency_get(channel, key, now).await,
        }
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        match &self.blocking {
            Some(b) => b.append(&batch),
            None => self.store.append(batch).await,
        }
    }

    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        loop {
            let first = tokio::select! {
                biased;
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
                _ = stop.changed() => {
                    // Finish what publishers are already waiting for, then end.
                    jobs.close();
                    while let Some(job) = jobs.recv().await {
                        self.commit_group(vec![job]).await;
                    }
                    return;
                }
            };
            let mut group = vec![first];
            let mut count = group[0].items.len();
            while count < self.max_group {
                match jobs.try_recv() {
                    Ok(job) => {
                        count += job.items.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            self.commit_group(group).await;
        }
    }

    async fn head(&mut self, channel: &str) -> Result<(u64, u64), PublishError> {
        if let Some(h) = self.heads.get(channel) {
            return Ok(*h);
        }
        let meta = self
            .channel_meta(channel)
            .await
            .map_err(|e| PublishError::unavailable("store_unavailable", e.to_string()))?;
        let head = match meta {
            Some(m) => (m.epoch, m.last_seq),
            // A new log: its epoch is its creation time, so a log recreated after data loss
            // gets a different epoch and old cursors are reset instead of misread.
            None => (now_ms().max(1), 0),
        };
        if self.heads.len() >= MAX_CACHED_HEADS {
            self.heads.clear();
        }
        self.heads.insert(channel.to_owned(), head);
        Ok(head)
    }

    /// Sequences and writes a group. Entries that lose a conditional write (another
    /// dispatcher wrote those positions: ownership moved) are sequenced again from the
    /// store's head and retried; everything written is answered and handed to the fabric.
    async fn commit_group(&mut self, group: Vec<Job>) {
        if self.forget_heads.swap(false, Ordering::AcqRel) {
            self.heads.clear();
        }
        let mut results: Vec<Vec<Option<PublishResult>>> =
            group.iter().map(|j| vec![None; j.items.len()]).collect();
        let mut pending: Vec<(usize, usize)> = group
            .iter()
            .enumerate()
            .flat_map(|(j, job)| (0..job.items.len()).map(move |i| (j, i)))
            .collect();
        let mut failure = None;
        for _ in 0..MAX_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let (batch, owners) = match self.sequence(&group, &pending, &mut results).await {
                Ok(x) => x,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            pending.clear();
            if batch.entries.is_empty() {
                break;
            }
            match self.write(batch, &owners, &mut results).await {
                Ok(lost) => pending = lost,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let failure = failure.unwrap_or_else(|| {
            PublishError::unavailable(
                "write_conflict",
                "another dispatcher kept writing this channel; retry",
            )
        });
        for (job, out) in group.into_iter().zip(results) {
            let answer = out
                .into_iter()
                .zip(&job.items)
                .map(|(r, (i, _))| r.map(|r| (*i, r)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| failure.clone());
            let _ = job.reply.send(answer);
        }
    }

    /// Assigns positions to the `pending` items (`(job, item)` indices). Duplicates of an
    /// earlier publish are answered in `results` directly; the rest become the batch, with
    /// the `(job, item)` of each entry.
    async fn sequence(
        &mut self,
        group: &[Job],
        pending: &[(usize, usize)],
        results: &mut [Vec<Option<PublishResult>>],
    ) -> Result<(AppendBatch, Vec<(usize, usize)>), PublishError> {
        let now = now_ms();
        let expires = now.saturating_add(self.idempotency_window.as_millis() as u64);
        let mut batch = AppendBatch::default();
        let mut owners = Vec::with_capacity(pending.len());
        let mut seen_keys: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
        let mut duplicates = 0;
        for &(j, k) in pending {
            let item = &group[j].items[k].1;
            if let Some(key) = item.idempotency_key.as_deref() {
                let earlier = match seen_keys.get(&(item.channel.as_str(), key)) {
                    Some(pos) => Some(*pos),
                    None => self
                        .idempotency_get(&item.channel, key, now)
                        .await
                        .map_err(|e| PublishError::unavailable("store_unavailable", e.to_string()))?
                        .map(|r| (r.epoch, r.seq)),
                };
                if let Some((epoch, seq)) = earlier {
                    duplicates += 1;
                    results[j][k] = Some(PublishResult {
                        channel: item.channel.clone(),
                        epoch: Some(epoch),
                        seq: Some(seq),
                        duplicate: true,
                    });
                    continue;
                }
            }
            let (epoch, last) = self.head(&item.channel).await?;
            let seq = last + 1;
            self.heads.insert(item.channel.clone(), (epoch, seq));
            if let Some(key) = item.idempotency_key.as_deref() {
                seen_keys.insert((item.channel.as_str(), key), (epoch, seq));
            }
            let ttl = self.policies.for_channel(&item.channel).retention.max_age;
            batch.entries.push(AppendEntry {
                channel: item.channel.clone(),
                epoch,
                seq,
                ts_ms: now,
                event: item.event.clone().unwrap_or_else(|| "message".to_owned()),
                data: item.data.clone(),
                idempotency: item.idempotency_key.clone().map(|k| (k, expires)),
                ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            });
            owners.push((j, k));
        }
        self.counters.add_duplicates(duplicates);
        Ok((batch, owners))
    }

    /// Writes the batch; on success (full or partial) records the results of what was
    /// written and hands it to the fabric. Returns the `(job, item)`s that lost a
    /// conditional write and must be sequenced again.
    async fn write(
        &mut self,
        batch: AppendBatch,
        owners: &[(usize, usize)],
        results: &mut [Vec<Option<PublishResult>>],
    ) -> Result<Vec<(usize, usize)>, PublishError> {
        let mut touched: Vec<String> = batch.entries.iter().map(|e| e.channel.clone()).collect();
        touched.sort_unstable();
        touched.dedup();
        let mut lost_from: Vec<(String, u64)> = Vec::new();
        let entries = batch.entries.clone();
        match self.append(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict { detail, lost }) => {
                tracing::info!(%detail, "positions taken by another writer; re-sequencing");
                self.counters.add_conflict();
                lost_from = lost;
            }
            Err(e) => {
                tracing::error!(error = %e, "durable write failed; publishes refused");
                self.counters.add_commit_failure();
                // The positions handed out were not (all) written: forget them so the next
                // attempt starts from what the store holds.
                for c in &touched {
                    self.heads.remove(c);
                }
                return Err(PublishError::unavailable(
                    "store_unavailable",
                    e.to_string(),
                ));
            }
        }
        for (c, _) in &lost_from {
            self.heads.remove(c);
        }
        let is_lost = |e: &AppendEntry| {
            lost_from
                .iter()
                .any(|(c, from)| *c == e.channel && e.seq >= *from)
        };
        let mut retry = Vec::new();
        let mut messages = Vec::with_capacity(entries.len());
        for (e, &(j, k)) in entries.iter().zip(owners) {
            if is_lost(e) {
                retry.push((j, k));
                continue;
            }
            results[j][k] = Some(PublishResult {
                channel: e.channel.clone(),
                epoch: Some(e.epoch),
                seq: Some(e.seq),
                duplicate: false,
            });
            messages.push(FabricMessage {
                channel: Arc::from(e.channel.as_str()),
                epoch: e.epoch,
                seq: e.seq,
                ts_ms: e.ts_ms,
                event: Arc::from(e.event.as_str()),
                data: e.data.clone(),
                conflation_key: None,
            });
        }
        self.counters.add_commit();
        self.counters.add_reliable(messages.len() as u64);
        for c in touched {
            // Retention is best-effort bookkeeping: if the sweeper is behind, the periodic
            // full sweep catches the channel.
            let _ = self.dirty.try_send(c);
        }
        if !messages.is_empty() {
            if let Err(e) = self.fabric.publish(messages).await {
                tracing::warn!(error = %e, "fabric publish failed; nodes repair from the store");
            }
        }
        Ok(retry)
    }
}
