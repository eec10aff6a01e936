//! The single writer of the embedded dispatcher: takes every queued publish, assigns seqs,
//! writes them with one durable commit (group commit), answers the publishers, then hands
//! the messages to the fabric in seq order.

use crate::stats::Counters;
use crate::{now_ms, PublishError, PublishItem};
use herald_fabric::{Fabric, FabricMessage};
use herald_proto::PublishResult;
use herald_store::{AppendBatch, AppendEntry, BlockingStore, ChannelMeta, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Channels whose head is cached; past this the cache starts over (heads are re-read).
const MAX_CACHED_HEADS: usize = 200_000;

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
}

impl Sequencer {
    pub fn new(
        store: Arc<dyn Store>,
        fabric: Arc<dyn Fabric>,
        counters: Arc<Counters>,
        max_group: usize,
        idempotency_window: Duration,
        dirty: mpsc::Sender<String>,
    ) -> Self {
        Self {
            store,
            blocking: None,
            fabric,
            counters,
            max_group: max_group.max(1),
            idempotency_window,
            heads: HashMap::new(),
            dirty,
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

    async fn commit_group(&mut self, group: Vec<Job>) {
        match self.sequence(&group).await {
            Ok((batch, results)) => self.write(group, batch, results).await,
            Err(e) => {
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Assigns positions; results per job, in job order.
    async fn sequence(
        &mut self,
        group: &[Job],
    ) -> Result<(AppendBatch, Vec<Vec<(usize, PublishResult)>>), PublishError> {
        let now = now_ms();
        let expires = now.saturating_add(self.idempotency_window.as_millis() as u64);
        let mut batch = AppendBatch::default();
        let mut results = Vec::with_capacity(group.len());
        let mut seen_keys: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
        let mut duplicates = 0;
        for job in group {
            let mut out = Vec::with_capacity(job.items.len());
            for (i, item) in &job.items {
                if let Some(key) = item.idempotency_key.as_deref() {
                    let earlier = match seen_keys.get(&(item.channel.as_str(), key)) {
                        Some(pos) => Some(*pos),
                        None => self
                            .idempotency_get(&item.channel, key, now)
                            .await
                            .map_err(|e| {
                                PublishError::unavailable("store_unavailable", e.to_string())
                            })?
                            .map(|r| (r.epoch, r.seq)),
                    };
                    if let Some((epoch, seq)) = earlier {
                        duplicates += 1;
                        out.push((
                            *i,
                            PublishResult {
                                channel: item.channel.clone(),
                                epoch: Some(epoch),
                                seq: Some(seq),
                                duplicate: true,
                            },
                        ));
                        continue;
                    }
                }
                let (epoch, last) = self.head(&item.channel).await?;
                let seq = last + 1;
                self.heads.insert(item.channel.clone(), (epoch, seq));
                if let Some(key) = item.idempotency_key.as_deref() {
                    seen_keys.insert((item.channel.as_str(), key), (epoch, seq));
                }
                batch.entries.push(AppendEntry {
                    channel: item.channel.clone(),
                    epoch,
                    seq,
                    ts_ms: now,
                    event: item.event.clone().unwrap_or_else(|| "message".to_owned()),
                    data: item.data.clone(),
                    idempotency: item.idempotency_key.clone().map(|k| (k, expires)),
                });
                out.push((
                    *i,
                    PublishResult {
                        channel: item.channel.clone(),
                        epoch: Some(epoch),
                        seq: Some(seq),
                        duplicate: false,
                    },
                ));
            }
            results.push(out);
        }
        self.counters.add_duplicates(duplicates);
        Ok((batch, results))
    }

    async fn write(
        &mut self,
        group: Vec<Job>,
        batch: AppendBatch,
        results: Vec<Vec<(usize, PublishResult)>>,
    ) {
        let written = batch.entries.len() as u64;
        let messages: Vec<FabricMessage> = batch
            .entries
            .iter()
            .map(|e| FabricMessage {
                channel: Arc::from(e.channel.as_str()),
                epoch: e.epoch,
                seq: e.seq,
                ts_ms: e.ts_ms,
                event: Arc::from(e.event.as_str()),
                data: e.data.clone(),
                conflation_key: None,
            })
            .collect();
        let mut touched: Vec<String> = batch.entries.iter().map(|e| e.channel.clone()).collect();
        touched.dedup();
        if let Err(e) = self.append(batch).await {
            tracing::error!(error = %e, "durable write failed; publishes refused");
            self.counters.add_commit_failure();
            // The positions handed out above were never written: forget them so the next
            // attempt starts from what the store holds.
            for c in &touched {
                self.heads.remove(c);
            }
            let err = PublishError::unavailable("store_unavailable", e.to_string());
            for job in group {
                let _ = job.reply.send(Err(err.clone()));
            }
            return;
        }
        self.counters.add_commit();
        self.counters.add_reliable(written);
        for (job, out) in group.into_iter().zip(results) {
            let _ = job.reply.send(Ok(out));
        }
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
    }
}
