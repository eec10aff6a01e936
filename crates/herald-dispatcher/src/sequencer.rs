//! The single writer of a dispatcher: takes every queued publish, assigns seqs, writes them
//! with one durable commit (group commit), answers the publishers, then hands the messages
//! to the fabric in seq order.
//!
//! In a cluster it writes only channels whose partition lease it holds: it claims a channel
//! (seal, then read its head) the first time it writes it under a fence, and acknowledges a
//! write only if the lease was still valid when the write returned.

use crate::ownership::{Ownership, Term};
use crate::retention::Written;
use crate::stats::Counters;
use crate::{now_ms, DispatcherConfig, Policies, PublishError, PublishItem};
use herald_fabric::{Fabric, FabricMessage};
use herald_proto::PublishResult;
use herald_store::{
    AppendBatch, AppendEntry, BlockingStore, ChannelMeta, IdempotencyRecord, Store, StoreError,
};
use herald_trace::{Journal, Step, TraceContext};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// Channels whose head is cached; past this the cache starts over (heads are re-read).
const MAX_CACHED_HEADS: usize = 200_000;
/// Writes of `landed` marks in flight; past this a commit waits for one to finish.
const MAX_MARKS_IN_FLIGHT: usize = 64;

/// What became of each item of a job, by its index in the request.
pub(crate) type JobResult = Vec<(usize, Result<PublishResult, PublishError>)>;

/// Reliable items of one publish request, with their index in the request.
pub(crate) struct Job {
    pub items: Vec<(usize, PublishItem)>,
    pub reply: oneshot::Sender<JobResult>,
    /// When the publish was handed to the sequencer.
    pub queued: std::time::Instant,
}

/// A channel's head as this writer knows it, and the fence it was claimed under.
#[derive(Clone, Copy, Debug)]
struct Head {
    epoch: u64,
    last: u64,
    fence: u64,
}

/// What became of one item of the group.
type Outcome = Option<Result<PublishResult, PublishError>>;

pub(crate) struct Sequencer {
    store: Arc<dyn Store>,
    /// Set when the sequencer runs on a thread of its own: store calls block it directly.
    blocking: Option<Arc<dyn BlockingStore>>,
    fabric: Arc<dyn Fabric>,
    counters: Arc<Counters>,
    max_group: usize,
    idempotency_window: Duration,
    heads: HashMap<String, Head>,
    /// Channels written, with their last seq, for the retention sweeper.
    written: Arc<Written>,
    policies: Policies,
    ownership: Option<Arc<dyn Ownership>>,
    /// Acknowledged entries with idempotency keys, to mark `landed` after the answers
    /// (only on stores that need the marks).
    landed: Vec<AppendEntry>,
    marks_landed: bool,
    /// Those marks being written; they end with the sequencer.
    marks: JoinSet<()>,
    journal: Option<Arc<Journal>>,
}

impl Sequencer {
    pub fn new(
        store: Arc<dyn Store>,
        fabric: Arc<dyn Fabric>,
        counters: Arc<Counters>,
        config: &DispatcherConfig,
        written: Arc<Written>,
        ownership: Option<Arc<dyn Ownership>>,
    ) -> Self {
        Self {
            marks_landed: store.marks_landed_records(),
            store,
            blocking: None,
            fabric,
            counters,
            max_group: config.max_group.max(1),
            idempotency_window: config.idempotency_window,
            heads: HashMap::new(),
            written,
            policies: config.policies.clone(),
            ownership,
            landed: Vec::new(),
            marks: JoinSet::new(),
            journal: config.journal.clone(),
        }
    }

    /// Makes store calls synchronous (for a sequencer on a dedicated thread).
    pub fn with_blocking(mut self, blocking: Arc<dyn BlockingStore>) -> Self {
        self.blocking = Some(blocking);
        self
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

    /// Sequences and writes a group, then answers every job with the outcome of each of its
    /// items: one item's failure says nothing of the others, which may have been written.
    async fn commit_group(&mut self, group: Vec<Job>) {
        let mut out: Vec<Vec<Outcome>> = group.iter().map(|j| vec![None; j.items.len()]).collect();
        self.process(&group, &mut out).await;
        if let Some(j) = &self.journal {
            for job in &group {
                j.latency.publish_to_commit.observe(job.queued.elapsed());
            }
        }
        for (job, outcomes) in group.into_iter().zip(out) {
            let answer = job
                .items
                .iter()
                .zip(outcomes)
                .map(|((i, _), o)| {
                    let o = o.unwrap_or_else(|| Err(PublishError::lost_result()));
                    (*i, o)
                })
                .collect();
            let _ = job.reply.send(answer);
        }
        self.mark_landed().await;
    }

    /// Marks the idempotency records of what was just acknowledged, off the publish path: a
    /// mark that fails or never happens leaves a record that still counts while its message
    /// row lives.
    async fn mark_landed(&mut self) {
        while self.marks.try_join_next().is_some() {}
        if self.landed.is_empty() {
            return;
        }
        while self.marks.len() >= MAX_MARKS_IN_FLIGHT {
            self.marks.join_next().await;
        }
        let entries = std::mem::take(&mut self.landed);
        let store = self.store.clone();
        self.marks.spawn(async move {
            if let Err(e) = store.idempotency_landed(&entries).await {
                tracing::warn!(error = %e, "marking idempotency records landed failed");
            }
        });
    }

    fn term_of(&self, channel: &str) -> Option<Term> {
        match &self.ownership {
            None => Some(Term::SOLE),
            Some(o) => o.term(channel),
        }
    }

    async fn process(&mut self, group: &[Job], out: &mut [Vec<Outcome>]) {
        // Only channels whose partition this process holds are written.
        let mut pending: Vec<(usize, usize, Term)> = Vec::new();
        for (j, job) in group.iter().enumerate() {
            for (k, (_, item)) in job.items.iter().enumerate() {
                match self.term_of(&item.channel) {
                    Some(t) => pending.push((j, k, t)),
                    None => out[j][k] = Some(Err(not_owner(&item.channel))),
                }
            }
        }
        let item = |j: usize, k: usize| &group[j].items[k].1;

        // Channels first written under this fence: claim them (all at once).
        let mut to_claim: Vec<(&str, Term)> = Vec::new();
        let mut seen = HashSet::new();
        for &(j, k, t) in &pending {
            let c = item(j, k).channel.as_str();
            if self.heads.get(c).map(|h| h.fence) != Some(t.fence) && seen.insert(c) {
                to_claim.push((c, t));
            }
        }
        let claimed = self.claim_all(&to_claim).await;
        let mut failed: HashMap<&str, PublishError> = HashMap::new();
        for ((c, t), res) in to_claim.iter().zip(claimed) {
            match res {
                Ok(meta) => self.remember(c, meta, t.fence),
                Err(e) => {
                    self.heads.remove(*c);
                    failed.insert(c, store_error(&e));
                }
            }
        }
        pending.retain(|&(j, k, _)| match failed.get(item(j, k).channel.as_str()) {
            Some(e) => {
                out[j][k] = Some(Err(e.clone()));
                false
            }
            None => true,
        });

        // Earlier publishes with the same idempotency keys.
        let now = now_ms();
        let mut keys: Vec<(&str, &str)> = pending
            .iter()
            .filter_map(|&(j, k, _)| {
                let it = item(j, k);
                Some((it.channel.as_str(), it.idempotency_key.as_deref()?))
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let found = self.lookup_keys(&keys, now).await;
        let earlier: HashMap<(&str, &str), Result<Option<IdempotencyRecord>, StoreError>> =
            keys.into_iter().zip(found).collect();

        // Positions.
        let expires = now.saturating_add(self.idempotency_window.as_millis() as u64);
        let mut batch = AppendBatch::default();
        let mut owners: Vec<(usize, usize, Term)> = Vec::with_capacity(pending.len());
        let mut traces: Vec<(usize, TraceContext)> = Vec::new();
        let mut in_group: HashMap<(&str, &str), (u64, u64)> = HashMap::new();
        let mut duplicates = 0;
        for &(j, k, t) in &pending {
            let it = item(j, k);
            if let Some(key) = it.idempotency_key.as_deref() {
                let id = (it.channel.as_str(), key);
                let before = match in_group.get(&id) {
                    Some(pos) => Ok(Some(*pos)),
                    None => match earlier.get(&id) {
                        Some(Ok(r)) => Ok(r.map(|r| (r.epoch, r.seq))),
                        Some(Err(e)) => Err(store_error(e)),
                        None => Ok(None),
                    },
                };
                match before {
                    Ok(Some((epoch, seq))) => {
                        duplicates += 1;
                        out[j][k] = Some(Ok(PublishResult {
                            channel: it.channel.clone(),
                            epoch: Some(epoch),
                            seq: Some(seq),
                            duplicate: true,
                            ..PublishResult::default()
                        }));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        out[j][k] = Some(Err(e));
                        continue;
                    }
                }
            }
            let Some(head) = self.heads.get_mut(&it.channel) else {
                out[j][k] = Some(Err(PublishError::unavailable(
                    "internal",
                    "channel head missing after its claim",
                )));
                continue;
            };
            head.last += 1;
            let (epoch, seq) = (head.epoch, head.last);
            if let Some(key) = it.idempotency_key.as_deref() {
                in_group.insert((it.channel.as_str(), key), (epoch, seq));
            }
            let ttl = self.policies.for_channel(&it.channel).retention.max_age;
            batch.entries.push(AppendEntry {
                channel: it.channel.clone(),
                epoch,
                seq,
                ts_ms: now,
                event: it.event.clone().unwrap_or_else(|| "message".to_owned()),
                data: it.data.clone(),
                idempotency: it.idempotency_key.clone().map(|k| (k, expires)),
                ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
                fence: t.fence,
            });
            if let Some(ctx) = it.trace {
                traces.push((batch.entries.len() - 1, ctx));
            }
            owners.push((j, k, t));
        }
        self.counters.add_duplicates(duplicates);
        if !batch.entries.is_empty() {
            self.write(batch, &owners, &traces, out).await;
        }
    }

    /// Writes the batch, then answers each entry: written under a term still valid, or not
    /// acknowledged (it may have been stored; an idempotent retry settles it).
    async fn write(
        &mut self,
        batch: AppendBatch,
        owners: &[(usize, usize, Term)],
        traces: &[(usize, TraceContext)],
        out: &mut [Vec<Outcome>],
    ) {
        let mut partitions: Vec<u32> = owners.iter().map(|(_, _, t)| t.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        if let Some(o) = &self.ownership {
            for p in &partitions {
                o.enter(*p);
            }
        }
        let entries = batch.entries.clone();
        let written = self.append(batch).await;
        let stored_at = herald_trace::now_us();
        let mut messages = Vec::with_capacity(entries.len());
        let mut trace_of = traces.iter().peekable();
        let mut last: HashMap<&str, u64> = HashMap::new();
        match written {
            Ok(()) => {
                self.counters.add_commit();
                for (n, (e, &(j, k, t))) in entries.iter().zip(owners).enumerate() {
                    let trace = trace_of.next_if(|(at, _)| *at == n).map(|(_, c)| *c);
                    if !self.still_valid(t) {
                        self.counters.add_fenced();
                        self.heads.remove(&e.channel);
                        out[j][k] = Some(Err(PublishError::unavailable(
                            "lease_lost",
                            format!(
                                "this dispatcher's lease on {} ended during the write; it may \
                                 have been stored: retry with the same idempotency key",
                                e.channel
                            ),
                        )
                        .maybe_stored()));
                        continue;
                    }
                    out[j][k] = Some(Ok(PublishResult {
                        channel: e.channel.clone(),
                        epoch: Some(e.epoch),
                        seq: Some(e.seq),
                        ..PublishResult::default()
                    }));
                    if self.marks_landed && e.idempotency.is_some() {
                        self.landed.push(e.clone());
                    }
                    last.insert(e.channel.as_str(), e.seq);
                    messages.push(FabricMessage {
                        channel: Arc::from(e.channel.as_str()),
                        epoch: e.epoch,
                        seq: e.seq,
                        ts_ms: e.ts_ms,
                        event: Arc::from(e.event.as_str()),
                        data: e.data.clone(),
                        conflation_key: None,
                        trace,
                        sent_us: 0,
                    });
                    if let (Some(ctx), Some(j)) = (&trace, &self.journal) {
                        j.record_at(ctx, &e.channel, Some(e.seq), Step::Stored, stored_at, None);
                    }
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "durable write failed; publishes refused");
                self.counters.add_commit_failure();
                let failure = store_error(&err).maybe_stored();
                for (e, &(j, k, _)) in entries.iter().zip(owners) {
                    // Some of it may have landed: the next write re-reads where the log is.
                    self.heads.remove(&e.channel);
                    out[j][k] = Some(Err(failure.clone()));
                }
            }
        }
        if let Some(o) = &self.ownership {
            for p in &partitions {
                o.leave(*p);
            }
        }
        self.counters.add_reliable(messages.len() as u64);
        self.written.note(last);
        if !messages.is_empty() {
            let traced: Vec<(TraceContext, Arc<str>, u64)> = match &self.journal {
                Some(_) if !traces.is_empty() => messages
                    .iter()
                    .filter_map(|m| Some((m.trace?, m.channel.clone(), m.seq)))
                    .collect(),
                _ => Vec::new(),
            };
            let handed = herald_trace::now_us();
            for m in &mut messages {
                m.sent_us = handed;
            }
            match self.fabric.publish(messages).await {
                Ok(()) => {
                    if let Some(j) = &self.journal {
                        let done = herald_trace::now_us();
                        let took = herald_trace::between_us(stored_at, done);
                        j.latency.commit_to_fabric.observe(took);
                        for (ctx, channel, seq) in &traced {
                            j.record_at(ctx, channel, Some(*seq), Step::Fabric, handed, None);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fabric publish failed; nodes repair from the store")
                }
            }
        }
    }

    fn still_valid(&self, t: Term) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.still_valid(t))
    }

    fn remember(&mut self, channel: &str, meta: Option<ChannelMeta>, fence: u64) {
        if self.heads.len() >= MAX_CACHED_HEADS {
            self.heads.clear();
        }
        let head = match meta {
            Some(m) => Head {
                epoch: m.epoch,
                last: m.last_seq,
                fence,
            },
            // A new log: its epoch is its creation time, so a log recreated after data loss
            // (or after everything in it expired) gets a different epoch and old cursors are
            // reset instead of misread.
            None => Head {
                epoch: now_ms().max(1),
                last: 0,
                fence,
            },
        };
        self.heads.insert(channel.to_owned(), head);
    }

    async fn claim_all(
        &self,
        channels: &[(&str, Term)],
    ) -> Vec<Result<Option<ChannelMeta>, StoreError>> {
        if let Some(b) = &self.blocking {
            return channels.iter().map(|(c, _)| b.channel_meta(c)).collect();
        }
        self.counters.add_claims(channels.len() as u64);
        futures_util::future::join_all(channels.iter().map(|(c, t)| self.store.claim(c, t.fence)))
            .await
    }

    async fn lookup_keys(
        &self,
        keys: &[(&str, &str)],
        now: u64,
    ) -> Vec<Result<Option<IdempotencyRecord>, StoreError>> {
        if let Some(b) = &self.blocking {
            return keys
                .iter()
                .map(|(c, k)| b.idempotency_get(c, k, now))
                .collect();
        }
        futures_util::future::join_all(
            keys.iter()
                .map(|(c, k)| self.store.idempotency_get(c, k, now)),
        )
        .await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        match &self.blocking {
            Some(b) => b.append(&batch),
            None => self.store.append(batch).await,
        }
    }
}

/// The lease moved between the publish's admission and its sequencing; nothing of this
/// item was written, so routing may send it to the new owner.
fn not_owner(channel: &str) -> PublishError {
    PublishError::unavailable(
        "not_owner",
        format!("this dispatcher no longer holds the lease of {channel}'s partition; retry"),
    )
}

fn store_error(e: &StoreError) -> PublishError {
    match e {
        StoreError::Fenced(m) => PublishError::unavailable("lease_lost", m.clone()),
        other => PublishError::unavailable("store_unavailable", other.to_string()),
    }
}
