//! The publish side of Herald: validates publishes against namespace policy, assigns each
//! reliable message its `(epoch, seq)`, writes it durably (group commit) and hands it to the
//! fabric. Ephemeral messages skip the store.

#![forbid(unsafe_code)]

mod error;
mod ownership;
mod policy;
mod retention;
mod sequencer;
mod stats;

pub use error::{ErrorKind, PublishError};

/// What became of one item of a publish request.
pub type ItemResult = Result<PublishResult, PublishError>;
pub use ownership::{Ownership, Term};
pub use policy::{NamespacePolicy, Policies};
pub use stats::DispatcherStats;

use bytes::Bytes;
use herald_fabric::{Fabric, FabricMessage};
use herald_proto::PublishResult;
use herald_store::Store;
use herald_trace::{Journal, Step, TraceContext};
use sequencer::{Job, Sequencer};
use stats::Counters;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Longest idempotency or conflation key accepted.
pub const MAX_KEY_LEN: usize = 128;

/// One validated-shape publish (the HTTP layer has parsed JSON; policy checks happen here).
#[derive(Clone, Debug)]
pub struct PublishItem {
    pub channel: String,
    pub event: Option<String>,
    /// The publisher's JSON, on one line.
    pub data: Bytes,
    pub idempotency_key: Option<String>,
    pub ephemeral: bool,
    pub conflation_key: Option<String>,
    /// Set when the publish is traced.
    pub trace: Option<TraceContext>,
}

/// Tunables of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    pub policies: Policies,
    /// Most messages written by one group commit.
    pub max_group: usize,
    /// Publish requests waiting for the sequencer before publishers are pushed back.
    pub queue_jobs: usize,
    /// Longest a publish waits for its durable write.
    pub publish_timeout: Duration,
    /// How often retention is applied to recently written channels.
    pub sweep_interval: Duration,
    /// How long an idempotency key dedupes retries.
    pub idempotency_window: Duration,
    /// Where traced publishes record their hops (none: tracing is off here).
    pub journal: Option<Arc<Journal>>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            policies: Policies::default(),
            max_group: 8192,
            queue_jobs: 4096,
            publish_timeout: Duration::from_secs(10),
            sweep_interval: Duration::from_secs(5),
            idempotency_window: Duration::from_secs(24 * 3600),
            journal: None,
        }
    }
}

/// The publish side: shared by all request handlers.
pub struct Dispatcher {
    jobs: mpsc::Sender<Job>,
    fabric: Arc<dyn Fabric>,
    store: Arc<dyn Store>,
    config: DispatcherConfig,
    counters: Arc<Counters>,
    closed: AtomicBool,
    ownership: Option<Arc<dyn Ownership>>,
    stop: watch::Sender<bool>,
    tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Dispatcher {
    /// Starts the sequencer and the retention sweeper. Must be called inside a tokio runtime.
    /// `ownership`: the leases this process writes under when it shares the store with
    /// other dispatchers; `None` for the sole writer of its store.
    pub fn start(
        store: Arc<dyn Store>,
        fabric: Arc<dyn Fabric>,
        config: DispatcherConfig,
        ownership: Option<Arc<dyn Ownership>>,
    ) -> Arc<Self> {
        let (jobs_tx, jobs_rx) = mpsc::channel(config.queue_jobs.max(1));
        let (stop, stop_rx) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let written = Arc::new(retention::Written::default());
        let sequencer = Sequencer::new(
            store.clone(),
            fabric.clone(),
            counters.clone(),
            &config,
            written.clone(),
            ownership.clone(),
        );
        // An embedded store blocks for its fsync anyway: give the sequencer a thread of its
        // own that calls it directly, instead of hopping to the blocking pool and back for
        // every group commit. Other stores run it as a task.
        let mut thread = None;
        let seq_task = match store.blocking_access() {
            Some(blocking) => {
                let sequencer = sequencer.with_blocking(blocking);
                let stop = stop_rx.clone();
                let spawned = std::thread::Builder::new()
                    .name("herald-sequencer".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt.block_on(sequencer.run(jobs_rx, stop)),
                            Err(e) => {
                                tracing::error!(error = %e, "sequencer runtime failed to start")
                            }
                        }
                    });
                match spawned {
                    Ok(handle) => thread = Some(handle),
                    Err(e) => tracing::error!(error = %e, "sequencer thread failed to start"),
                }
                None
            }
            None => Some(tokio::spawn(sequencer.run(jobs_rx, stop_rx.clone()))),
        };
        let sweeper = retention::Sweeper::new(
            store.clone(),
            config.policies.clone(),
            config.sweep_interval,
            counters.clone(),
        );
        let sweep_task = tokio::spawn(sweeper.run(written, stop_rx));
        Arc::new(Self {
            jobs: jobs_tx,
            fabric,
            store,
            config,
            counters,
            closed: AtomicBool::new(false),
            ownership,
            stop,
            tasks: parking_lot::Mutex::new(seq_task.into_iter().chain([sweep_task]).collect()),
            thread: parking_lot::Mutex::new(thread),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policies(&self) -> &Policies {
        &self.config.policies
    }

    /// Checks every item against its namespace's policy; nothing is published unless all pass.
    pub fn validate(&self, publisher: &str, items: &[PublishItem]) -> Result<(), PublishError> {
        for item in items {
            herald_proto::validate_channel(&item.channel)
                .map_err(|e| PublishError::bad_request("invalid_channel", e.to_string()))?;
            let policy = self.config.policies.for_channel(&item.channel);
            if !policy.may_publish(publisher) {
                return Err(PublishError::new(
                    ErrorKind::Forbidden,
                    "publisher_not_allowed",
                    format!(
                        "this API key may not publish to namespace '{}'",
                        herald_proto::namespace_of(&item.channel)
                    ),
                ));
            }
            if let Some(event) = &item.event {
                herald_proto::validate_event_name(event)
                    .map_err(|e| PublishError::bad_request("invalid_event", e.to_string()))?;
            }
            if item.data.is_empty() {
                return Err(PublishError::bad_request(
                    "empty_data",
                    "`data` is required and must not be null",
                ));
            }
            if item.data.len() > policy.max_payload {
                return Err(PublishError::new(
                    ErrorKind::TooLarge,
                    "payload_too_large",
                    format!(
                        "data is {} bytes; namespace limit is {}",
                        item.data.len(),
                        policy.max_payload
                    ),
                ));
            }
            if policy.ephemeral_only && !item.ephemeral {
                return Err(PublishError::bad_request(
                    "ephemeral_only",
                    "this namespace only takes ephemeral messages (set \"ephemeral\": true)",
                ));
            }
            check_key("idempotency_key", item.idempotency_key.as_deref())?;
            check_key("conflation_key", item.conflation_key.as_deref())?;
            if item.conflation_key.is_some() && !item.ephemeral {
                return Err(PublishError::bad_request(
                    "invalid_conflation_key",
                    "conflation_key is only allowed on ephemeral messages",
                ));
            }
            if item.idempotency_key.is_some() && item.ephemeral {
                return Err(PublishError::bad_request(
                    "invalid_idempotency_key",
                    "idempotency_key is only allowed on reliable messages",
                ));
            }
        }
        Ok(())
    }

    /// Publishes items: the outcome of each, in input order, once every reliable one is
    /// durably stored or has failed. An `Err` refuses the request as a whole: nothing of it
    /// was stored or sent.
    pub async fn publish(
        &self,
        publisher: &str,
        items: Vec<PublishItem>,
    ) -> Result<Vec<ItemResult>, PublishError> {
        self.validate(publisher, &items)?;
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::unavailable(
                "shutting_down",
                "server is shutting down",
            ));
        }
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut reliable = Vec::new();
        let mut ephemeral = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if item.ephemeral {
                ephemeral.push((i, item));
            } else {
                reliable.push((i, item));
            }
        }
        // The reliable part first: a request refused as a whole (shutting down, leases not
        // ready, the queue full) has then sent nothing, ephemeral items included.
        if !reliable.is_empty() {
            if let Some(o) = &self.ownership {
                let channels: Vec<&str> =
                    reliable.iter().map(|(_, i)| i.channel.as_str()).collect();
                o.ready(&channels, self.config.publish_timeout).await?;
            }
            let indexes: Vec<usize> = reliable.iter().map(|(i, _)| *i).collect();
            let (reply, done) = oneshot::channel();
            let job = Job {
                items: reliable,
                reply,
                queued: std::time::Instant::now(),
            };
            let deadline = self.config.publish_timeout;
            let sent = tokio::time::timeout(deadline, self.jobs.send(job)).await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(PublishError::unavailable(
                        "shutting_down",
                        "server is shutting down",
                    ))
                }
                Err(_) => {
                    return Err(PublishError::unavailable(
                        "overloaded",
                        "the sequencer queue stayed full",
                    ))
                }
            }
            match tokio::time::timeout(deadline, done).await {
                Ok(Ok(outcome)) => {
                    for (i, r) in outcome {
                        results[i] = Some(r);
                    }
                }
                // The job was taken: its write may land after this answer.
                Ok(Err(_)) | Err(_) => {
                    let e = PublishError::unavailable(
                        "store_timeout",
                        "the durable write did not finish in time; it may have been stored: \
                         retry with the same idempotency key",
                    )
                    .maybe_stored();
                    for i in indexes {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        if !ephemeral.is_empty() {
            let now = now_ms();
            // Each item's channel is kept for its answer; the messages themselves go to the
            // fabric without a copy.
            let mut answered = Vec::with_capacity(ephemeral.len());
            let mut messages = Vec::with_capacity(ephemeral.len());
            for (i, item) in ephemeral {
                messages.push(FabricMessage {
                    channel: Arc::from(item.channel.as_str()),
                    epoch: 0,
                    seq: 0,
                    ts_ms: now,
                    event: Arc::from(item.event.as_deref().unwrap_or("message")),
                    data: item.data,
                    conflation_key: item.conflation_key.as_deref().map(Arc::from),
                    trace: item.trace,
                    sent_us: 0,
                });
                answered.push((i, item.channel));
            }
            let count = messages.len() as u64;
            let traced: Vec<(TraceContext, Arc<str>)> = match &self.config.journal {
                Some(_) => messages
                    .iter()
                    .filter_map(|m| Some((m.trace?, m.channel.clone())))
                    .collect(),
                None => Vec::new(),
            };
            let handed = herald_trace::now_us();
            for m in &mut messages {
                m.sent_us = handed;
            }
            let sent = self.fabric.publish(messages).await;
            if let (Some(j), true) = (&self.config.journal, sent.is_ok()) {
                for (ctx, channel) in &traced {
                    j.record_at(ctx, channel, None, Step::Fabric, handed, None);
                }
            }
            if sent.is_ok() {
                self.counters.add_ephemeral(count);
            }
            for (i, channel) in answered {
                results[i] = Some(match &sent {
                    Ok(()) => Ok(PublishResult {
                        channel,
                        ..PublishResult::default()
                    }),
                    Err(e) => Err(PublishError::unavailable(
                        "fabric_unavailable",
                        e.to_string(),
                    )),
                });
            }
        }
        Ok(PublishError::fill(results))
    }

    /// Whether publishes are taken without waiting for leases (always, for a sole writer).
    pub fn started(&self) -> bool {
        self.ownership.as_ref().is_none_or(|o| o.started())
    }

    pub fn stats(&self) -> DispatcherStats {
        self.counters.snapshot()
    }

    /// Stops taking publishes, lets queued ones finish, stops background tasks and flushes the
    /// store, all within `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.closed.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut *self.tasks.lock());
        // The sequencer finishes the jobs already queued, then both tasks end.
        let deadline = tokio::time::Instant::now() + timeout;
        for t in tasks {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, t).await.is_err() {
                tracing::warn!("dispatcher task did not stop in time");
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let thread = self.thread.lock().take();
        if let Some(t) = thread {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let joined =
                tokio::time::timeout(left, tokio::task::spawn_blocking(move || t.join())).await;
            if joined.is_err() {
                tracing::warn!("sequencer thread did not stop in time");
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "store flush at shutdown failed");
        }
    }
}

fn check_key(field: &'static str, key: Option<&str>) -> Result<(), PublishError> {
    let Some(key) = key else { return Ok(()) };
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(PublishError::bad_request(
            if field == "idempotency_key" {
                "invalid_idempotency_key"
            } else {
                "invalid_conflation_key"
            },
            format!("{field} must be 1..={MAX_KEY_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
