//! The cluster store as a process sees it from its first second: until ScyllaDB /
//! Cassandra answers, every call fails with a clear "not connected" error (publishes get a
//! 503, `/readyz` says false) while a background task keeps trying with backoff. No crash
//! loop, and nothing is accepted that was not stored.

use async_trait::async_trait;
use herald_store::{
    Ack, AppendBatch, AppendEntry, ChannelMeta, CqlCounts, IdempotencyRecord, Retention,
    ScyllaOptions, ScyllaStore, Store, StoreError, StoredMessage, TrimOutcome,
};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::watch;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

pub struct ConnectingStore {
    store: OnceLock<ScyllaStore>,
    last_error: Mutex<String>,
    points: String,
}

impl ConnectingStore {
    /// Starts connecting in the background; the task ends once connected or at `stop`.
    pub fn start(
        opts: ScyllaOptions,
        mut stop: watch::Receiver<bool>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let this = Arc::new(Self {
            store: OnceLock::new(),
            last_error: Mutex::new("connecting".to_owned()),
            points: opts.contact_points.join(","),
        });
        let me = this.clone();
        let task = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                match ScyllaStore::connect(opts.clone()).await {
                    Ok(store) => {
                        tracing::info!(contact_points = %me.points, keyspace = %opts.keyspace, "store connected");
                        let _ = me.store.set(store);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(
                            contact_points = %me.points,
                            keyspace = %opts.keyspace,
                            error = %e,
                            retry_in_ms = backoff.as_millis() as u64,
                            "cannot use the ScyllaDB/Cassandra store yet; publishes and streams are refused until it answers"
                        );
                        *me.last_error.lock() = e.to_string();
                    }
                }
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        });
        (this, task)
    }

    /// The connected store, if it is.
    pub fn connected(&self) -> Option<&ScyllaStore> {
        self.store.get()
    }

    fn get(&self) -> Result<&ScyllaStore, StoreError> {
        self.store.get().ok_or_else(|| {
            StoreError::Engine(format!(
                "store at {} not connected: {}",
                self.points,
                self.last_error.lock()
            ))
        })
    }
}

#[async_trait]
impl Store for ConnectingStore {
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        self.get()?.channel_meta(channel).await
    }

    async fn claim(&self, channel: &str, fence: u64) -> Result<Option<ChannelMeta>, StoreError> {
        self.get()?.claim(channel, fence).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.get()?.append(batch).await
    }

    async fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.get()?.read_range(channel, after, limit).await
    }

    async fn read_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Option<ChannelMeta>, Vec<StoredMessage>), StoreError> {
        self.get()?.read_page(channel, after, limit).await
    }

    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.get()?.idempotency_get(channel, key, now_ms).await
    }

    async fn idempotency_landed(&self, entries: &[AppendEntry]) -> Result<(), StoreError> {
        self.get()?.idempotency_landed(entries).await
    }

    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        self.get()?.trim(channel, retention, now_ms).await
    }

    async fn list_channels(&self) -> Result<Vec<String>, StoreError> {
        self.get()?.list_channels().await
    }

    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError> {
        self.get()?.ack_set(channel, user, ack).await
    }

    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError> {
        self.get()?.ack_get(channel, user).await
    }

    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        self.get()?.acks(channel, after_user, limit).await
    }

    async fn expire_idempotency(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.get()?.expire_idempotency(now_ms).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        match self.store.get() {
            Some(s) => s.flush().await,
            None => Ok(()),
        }
    }

    /// Known before the store answers: the sweeper decides its mode at start.
    fn expires_by_ttl(&self) -> bool {
        true
    }

    fn cql_counts(&self) -> Option<CqlCounts> {
        Some(
            self.store
                .get()
                .map(|s| s.cql_counts().unwrap_or_default())
                .unwrap_or_default(),
        )
    }
}
