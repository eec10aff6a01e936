//! The embedded backend: one fjall database in the data directory, fsync'd on every append
//! batch (the dispatcher groups concurrent publishes into one batch, so one fsync serves many).

use crate::codec;
use crate::{
    Ack, AppendBatch, AppendEntry, BlockingStore, ChannelMeta, IdempotencyRecord, Retention, Store,
    StoreError, StoredMessage, TrimOutcome,
};
use async_trait::async_trait;
use fjall::{Database, Iter, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct FjallOptions {
    pub path: PathBuf,
    /// fsync each append batch (the durable-publish guarantee). Only benchmarks of the
    /// non-durable path turn this off.
    pub fsync: bool,
    /// Block cache size in bytes.
    pub cache_bytes: u64,
}

impl FjallOptions {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            fsync: true,
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Inner {
    db: Database,
    messages: Keyspace,
    heads: Keyspace,
    lows: Keyspace,
    idempotency: Keyspace,
    acks: Keyspace,
    ack_lock: std::sync::Mutex<()>,
    fsync: bool,
}

/// Embedded [`Store`] over fjall.
#[derive(Clone)]
pub struct FjallStore {
    inner: Arc<Inner>,
}

impl FjallStore {
    /// Opens (or creates) the store in `opts.path`.
    pub fn open(opts: FjallOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&opts.path)
            .map_err(|e| StoreError::Engine(format!("create {}: {e}", opts.path.display())))?;
        let db = Database::builder(&opts.path)
            .cache_size(opts.cache_bytes)
            .open()?;
        let messages = db.keyspace("messages", KeyspaceCreateOptions::default)?;
        let heads = db.keyspace("heads", KeyspaceCreateOptions::default)?;
        let lows = db.keyspace("lows", KeyspaceCreateOptions::default)?;
        let idempotency = db.keyspace("idempotency", KeyspaceCreateOptions::default)?;
        let acks = db.keyspace("acks", KeyspaceCreateOptions::default)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                messages,
                heads,
                lows,
                idempotency,
                acks,
                ack_lock: std::sync::Mutex::new(()),
                fsync: opts.fsync,
            }),
        })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

impl Inner {
    fn meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        let Some(head) = self.heads.get(channel.as_bytes())? else {
            return Ok(None);
        };
        let low = self.lows.get(channel.as_bytes())?;
        meta_of(&head, low.as_deref()).map(Some)
    }

    fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let start = codec::message_key(channel, from)?;
        let end = codec::message_key(channel, u64::MAX)?;
        page_of(channel, self.messages.range(start..=end), limit)
    }

    /// The meta and a page of messages read at one snapshot. A trim deletes rows and moves
    /// the channel's low in one batch, which a snapshot sees whole or not at all, so the page
    /// starts at `first_seq` (or after `after`). Separate reads do not: a trim committing
    /// between them leaves a `first_seq` whose messages are gone (and plain keyspace reads
    /// even see a batch that is still being applied).
    fn read_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Option<ChannelMeta>, Vec<StoredMessage>), StoreError> {
        let snap = self.db.snapshot();
        let Some(head) = snap.get(&self.heads, channel.as_bytes())? else {
            return Ok((None, Vec::new()));
        };
        let low = snap.get(&self.lows, channel.as_bytes())?;
        let meta = meta_of(&head, low.as_deref())?;
        let Some(from) = after.checked_add(1) else {
            return Ok((Some(meta), Vec::new()));
        };
        let start = codec::message_key(channel, from)?;
        let end = codec::message_key(channel, u64::MAX)?;
        let page = page_of(channel, snap.range(&self.messages, start..=end), limit)?;
        Ok((Some(meta), page))
    }

    fn idempotency(&self, k: &[u8], now_ms: u64) -> Result<Option<IdempotencyRecord>, StoreError> {
        let Some(raw) = self.idempotency.get(k)? else {
            return Ok(None);
        };
        let [epoch, seq, expires_at_ms] = codec::decode_u64s::<3>("idempotency", &raw)?;
        Ok((expires_at_ms > now_ms).then_some(IdempotencyRecord {
            epoch,
            seq,
            expires_at_ms,
        }))
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        if batch.entries.is_empty() {
            return Ok(());
        }
        let mut wb = self.db.batch();
        if self.fsync {
            wb = wb.durability(Some(PersistMode::SyncAll));
        }
        let mut heads: HashMap<&str, (u64, u64)> = HashMap::new();
        for e in &batch.entries {
            wb.insert(
                &self.messages,
                codec::message_key(&e.channel, e.seq)?,
                codec::encode_message(e.epoch, e.ts_ms, &e.event, &e.data)?,
            );
            if let Some((key, expires)) = &e.idempotency {
                wb.insert(
                    &self.idempotency,
                    codec::idempotency_key(&e.channel, key)?,
                    codec::encode_u64s([e.epoch, e.seq, *expires]),
                );
            }
            let head = heads.entry(e.channel.as_str()).or_insert((e.epoch, e.seq));
            if e.seq >= head.1 {
                *head = (e.epoch, e.seq);
            }
        }
        for (channel, (epoch, seq)) in heads {
            wb.insert(
                &self.heads,
                channel.as_bytes(),
                codec::encode_u64s([epoch, seq]),
            );
        }
        wb.commit()?;
        Ok(())
    }

    fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        let Some(meta) = self.meta(channel)? else {
            return Ok(TrimOutcome::default());
        };
        let mut new_first = retention.first_by_count(&meta);
        let age_ms = retention.max_age_ms();
        let cutoff = now_ms.saturating_sub(age_ms);
        // Age: walk forward from the first kept message while it is too old (usually it is
        // not, and this reads one message).
        let prefix_len = codec::channel_prefix(channel)?.len();
        let from = codec::message_key(channel, new_first)?;
        let to = codec::message_key(channel, u64::MAX)?;
        for guard in self.messages.range(from..=to) {
            let (key, value) = guard.into_inner()?;
            let (_, ts_ms, _, _) = codec::decode_message(&value)?;
            if ts_ms >= cutoff {
                break;
            }
            new_first = codec::seq_of_key(&key, prefix_len)? + 1;
        }
        if new_first <= meta.first_seq {
            return Ok(TrimOutcome {
                removed: 0,
                first_seq: meta.first_seq,
            });
        }
        let start = codec::message_key(channel, 0)?;
        let end = codec::message_key(channel, new_first)?;
        let mut wb = self.db.batch();
        let mut removed = 0u64;
        for guard in self.messages.range(start..end) {
            let (key, _) = guard.into_inner()?;
            wb.remove(&self.messages, key);
            removed += 1;
        }
        wb.insert(
            &self.lows,
            channel.as_bytes(),
            codec::encode_u64s([new_first]),
        );
        wb.commit()?;
        Ok(TrimOutcome {
            removed,
            first_seq: new_first,
        })
    }
}

/// A channel's meta from its head row and its low row (absent: nothing trimmed yet).
fn meta_of(head: &[u8], low: Option<&[u8]>) -> Result<ChannelMeta, StoreError> {
    let [epoch, last_seq] = codec::decode_u64s::<2>("channel head", head)?;
    let first_seq = match low {
        Some(raw) => codec::decode_u64s::<1>("channel low", raw)?[0],
        None => 1,
    };
    Ok(ChannelMeta {
        epoch,
        last_seq,
        first_seq: first_seq.min(last_seq + 1),
    })
}

/// Decodes at most `limit` messages of `channel` from a range over its message keys.
fn page_of(channel: &str, range: Iter, limit: usize) -> Result<Vec<StoredMessage>, StoreError> {
    let prefix_len = codec::channel_prefix(channel)?.len();
    let mut out = Vec::with_capacity(limit.min(1024));
    for guard in range.take(limit) {
        let (key, value) = guard.into_inner()?;
        let seq = codec::seq_of_key(&key, prefix_len)?;
        let (epoch, ts_ms, event, data) = codec::decode_message(&value)?;
        out.push(StoredMessage {
            seq,
            epoch,
            ts_ms,
            event,
            data,
        });
    }
    Ok(out)
}

impl BlockingStore for Inner {
    fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        self.meta(channel)
    }

    fn append(&self, batch: &AppendBatch) -> Result<(), StoreError> {
        Inner::append(self, batch)
    }

    fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.idempotency(&codec::idempotency_key(channel, key)?, now_ms)
    }
}

#[async_trait]
impl Store for FjallStore {
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        let channel = channel.to_owned();
        self.blocking(move |s| s.meta(&channel)).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.blocking(move |s| s.append(&batch)).await
    }

    async fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let channel = channel.to_owned();
        self.blocking(move |s| s.read_range(&channel, after, limit))
            .await
    }

    async fn read_page(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Option<ChannelMeta>, Vec<StoredMessage>), StoreError> {
        let channel = channel.to_owned();
        self.blocking(move |s| s.read_page(&channel, after, limit))
            .await
    }

    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let k = codec::idempotency_key(channel, key)?;
        self.blocking(move |s| s.idempotency(&k, now_ms)).await
    }

    /// Nothing to do: a record here is written with its message, in one atomic batch, so
    /// it stands on its own from the start.
    async fn idempotency_landed(&self, _entries: &[AppendEntry]) -> Result<(), StoreError> {
        Ok(())
    }

    fn marks_landed_records(&self) -> bool {
        false
    }

    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        let channel = channel.to_owned();
        self.blocking(move |s| s.trim(&channel, retention, now_ms))
            .await
    }

    async fn trim_many(
        &self,
        channels: Vec<(String, Retention)>,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        self.blocking(move |s| {
            let mut removed = 0;
            for (c, r) in &channels {
                removed += s.trim(c, *r, now_ms)?.removed;
            }
            Ok(removed)
        })
        .await
    }

    async fn list_channels(&self) -> Result<Vec<String>, StoreError> {
        self.blocking(|s| {
            let mut out = Vec::new();
            for guard in s.heads.iter() {
                let (key, _) = guard.into_inner()?;
                let name = std::str::from_utf8(&key).map_err(|_| StoreError::Corrupt {
                    what: "channel head",
                    detail: "name not utf-8".into(),
                })?;
                out.push(name.to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError> {
        let key = codec::ack_key(channel, user)?;
        self.blocking(move |s| {
            // One sequencer thread does not serialize acks: a lock per store keeps the
            // read-compare-write of concurrent acks of one user in order.
            let _g = s
                .ack_lock
                .lock()
                .map_err(|_| StoreError::Task("ack lock poisoned".into()))?;
            if let Some(raw) = s.acks.get(&key)? {
                let [epoch, seq, ts_ms] = codec::decode_u64s::<3>("ack", &raw)?;
                let current = Ack { epoch, seq, ts_ms };
                if !ack.is_after(&current) {
                    return Ok(current);
                }
            }
            s.acks
                .insert(&key, codec::encode_u64s([ack.epoch, ack.seq, ack.ts_ms]))?;
            if s.fsync {
                s.db.persist(PersistMode::SyncAll)?;
            }
            Ok(ack)
        })
        .await
    }

    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError> {
        let key = codec::ack_key(channel, user)?;
        self.blocking(move |s| {
            let Some(raw) = s.acks.get(&key)? else {
                return Ok(None);
            };
            let [epoch, seq, ts_ms] = codec::decode_u64s::<3>("ack", &raw)?;
            Ok(Some(Ack { epoch, seq, ts_ms }))
        })
        .await
    }

    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        let prefix = codec::channel_prefix(channel)?;
        let mut start = codec::ack_key(channel, after_user)?;
        // Strictly after `after_user`: the smallest key greater than it.
        start.push(0);
        self.blocking(move |s| {
            let mut out = Vec::new();
            for guard in s.acks.range(start..) {
                if out.len() >= limit {
                    break;
                }
                let (key, value) = guard.into_inner()?;
                if !key.starts_with(&prefix) {
                    break;
                }
                let user =
                    std::str::from_utf8(&key[prefix.len()..]).map_err(|_| StoreError::Corrupt {
                        what: "ack",
                        detail: "user not utf-8".into(),
                    })?;
                let [epoch, seq, ts_ms] = codec::decode_u64s::<3>("ack", &value)?;
                out.push((user.to_owned(), Ack { epoch, seq, ts_ms }));
            }
            Ok(out)
        })
        .await
    }

    async fn expire_idempotency(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.blocking(move |s| {
            let mut wb = s.db.batch();
            let mut removed = 0;
            for guard in s.idempotency.iter() {
                let (key, value) = guard.into_inner()?;
                let [_, _, expires] = codec::decode_u64s::<3>("idempotency", &value)?;
                if expires <= now_ms {
                    wb.remove(&s.idempotency, key);
                    removed += 1;
                }
            }
            wb.commit()?;
            Ok(removed)
        })
        .await
    }

    fn blocking_access(&self) -> Option<Arc<dyn BlockingStore>> {
        Some(self.inner.clone())
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.blocking(|s| Ok(s.db.persist(PersistMode::SyncAll)?))
            .await
    }
}
