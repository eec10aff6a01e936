//! Store reads shared between callers that want the same thing at the same time
//! (single-flight): a reconnect storm on a hot channel asks the store once per page, not
//! once per client. A resume may also use a channel's meta read that completed moments ago
//! (see [`META_REUSE`]).

use crate::ReadError;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use herald_store::{ChannelMeta, Store, StoreError, StoredMessage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a completed meta read may answer a resume that it fits (see
/// [`Reads::resume_meta`]).
pub(crate) const META_REUSE: Duration = Duration::from_secs(1);

/// A read's value, when it started and when it completed.
type Timed<V> = (V, Instant, Instant);
type SharedRead<V> = Shared<BoxFuture<'static, Result<Timed<V>, Arc<StoreError>>>>;

/// In-flight reads by key, with when each started; the entry goes when the read completes
/// (or its first caller gives up and nobody else waits).
struct Flights<K, V: Clone> {
    inflight: Mutex<HashMap<K, (Instant, SharedRead<V>)>>,
}

impl<K: Hash + Eq + Clone, V: Clone + Send + Sync + 'static> Flights<K, V> {
    fn new() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the read of `key` in flight if it started at or after `not_before` (so it sees
    /// every write the caller must see), or starts `read`. Returns the value, when its read
    /// started and completed, and whether it joined.
    async fn run(
        &self,
        key: K,
        not_before: Instant,
        read: impl FnOnce() -> BoxFuture<'static, Result<V, Arc<StoreError>>>,
    ) -> (Result<Timed<V>, Arc<StoreError>>, bool) {
        let (fut, joined, registered) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some((started, f)) if *started >= not_before => {
                    // Not needed: let go of what it holds now, not when the read ends.
                    drop(read);
                    (f.clone(), true, false)
                }
                // Too old for this caller: read afresh, leaving the other flight in place.
                Some(_) => (Self::timed(read()).1, false, false),
                None => {
                    let (started, f) = Self::timed(read());
                    map.insert(key.clone(), (started, f.clone()));
                    (f, false, true)
                }
            }
        };
        // Whoever registered the read removes it, also when cancelled, so a later caller
        // starts afresh instead of joining a read nobody polls.
        let _remove = registered.then(|| Remove {
            map: &self.inflight,
            key: key.clone(),
        });
        (fut.await, joined)
    }

    /// The read, stamped with when it started (no later than its first poll, so the stamp
    /// never claims the read saw more than it did) and when it completed.
    fn timed(read: BoxFuture<'static, Result<V, Arc<StoreError>>>) -> (Instant, SharedRead<V>) {
        let started = Instant::now();
        let f = async move { read.await.map(|v| (v, started, Instant::now())) }
            .boxed()
            .shared();
        (started, f)
    }
}

struct Remove<'a, K: Hash + Eq, V: Clone> {
    map: &'a Mutex<HashMap<K, (Instant, SharedRead<V>)>>,
    key: K,
}

impl<K: Hash + Eq, V: Clone> Drop for Remove<'_, K, V> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.key);
    }
}

/// The channel's meta as a completed read found it.
#[derive(Clone, Copy)]
struct RecentMeta {
    meta: ChannelMeta,
    started: Instant,
    completed: Instant,
}

/// The newest completed meta read of each channel read within [`META_REUSE`]; older ones
/// are dropped whenever the map has doubled since it was last pruned.
struct RecentMetas {
    by_channel: HashMap<Arc<str>, RecentMeta>,
    prune_at: usize,
}

const RECENT_PRUNE_MIN: usize = 1024;

impl RecentMetas {
    fn remember(&mut self, channel: &Arc<str>, r: RecentMeta) {
        match self.by_channel.get_mut(channel) {
            Some(old) if old.started >= r.started => {}
            Some(old) => *old = r,
            None => {
                self.by_channel.insert(channel.clone(), r);
                if self.by_channel.len() >= self.prune_at {
                    self.by_channel
                        .retain(|_, r| r.completed.elapsed() <= META_REUSE);
                    self.prune_at = (self.by_channel.len() * 2).max(RECENT_PRUNE_MIN);
                }
            }
        }
    }
}

/// The node's store reads.
pub(crate) struct Reads {
    store: Arc<dyn Store>,
    metas: Flights<Arc<str>, Option<ChannelMeta>>,
    ranges: Flights<(Arc<str>, u64, usize), Arc<Vec<StoredMessage>>>,
    recent: Mutex<RecentMetas>,
    /// Reads answered by joining one already in flight, or by a recent meta read.
    pub joined: AtomicU64,
    /// Reads that went to the store: channel metas and message ranges.
    pub store_metas: Arc<AtomicU64>,
    pub store_ranges: Arc<AtomicU64>,
}

impl Reads {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            metas: Flights::new(),
            ranges: Flights::new(),
            recent: Mutex::new(RecentMetas {
                by_channel: HashMap::new(),
                prune_at: RECENT_PRUNE_MIN,
            }),
            joined: AtomicU64::new(0),
            store_metas: Arc::default(),
            store_ranges: Arc::default(),
        }
    }

    /// The channel's meta, from a read that started at or after `not_before`; also when
    /// that read completed (a later read sees at least as much).
    pub async fn channel_meta(
        &self,
        channel: &Arc<str>,
        not_before: Instant,
    ) -> Result<(Option<ChannelMeta>, Instant), ReadError> {
        let store = self.store.clone();
        let ch = channel.clone();
        let counter = self.store_metas.clone();
        let (r, joined) = self
            .metas
            .run(channel.clone(), not_before, move || {
                async move {
                    counter.fetch_add(1, Relaxed);
                    store.channel_meta(&ch).await.map_err(Arc::new)
                }
                .boxed()
            })
            .await;
        self.count(joined);
        let (meta, started, completed) = r.map_err(ReadError::Store)?;
        if let Some(meta) = meta {
            self.recent.lock().remember(
                channel,
                RecentMeta {
                    meta,
                    started,
                    completed,
                },
            );
        }
        Ok((meta, completed))
    }

    /// The channel's meta for a stream resuming at `at` whose live messages this node has
    /// taken since `not_before` (the slot's creation). A meta read that started after
    /// `not_before` and completed within [`META_REUSE`] answers it when `at` lies inside the
    /// log that read saw (same epoch, not past its head, not before its first retained
    /// message): everything published since reaches the stream from the slot, exactly as
    /// after a fresh read, so only the retention edge is up to [`META_REUSE`] old, and a
    /// range read that finds the position trimmed still resets the stream. Any other
    /// position (a newer epoch, a head this read has not seen, a position out of retention)
    /// is judged on a read of its own. This is what makes a reconnect storm cost one meta
    /// read per channel per [`META_REUSE`] rather than one per client.
    pub async fn resume_meta(
        &self,
        channel: &Arc<str>,
        not_before: Instant,
        at: herald_proto::Position,
    ) -> Result<(Option<ChannelMeta>, Instant), ReadError> {
        let recent = self.recent.lock().by_channel.get(channel).copied();
        if let Some(r) = recent.filter(|r| {
            r.started >= not_before && r.completed.elapsed() <= META_REUSE && fits(&r.meta, at)
        }) {
            self.count(true);
            return Ok((Some(r.meta), r.completed));
        }
        self.channel_meta(channel, not_before).await
    }

    /// Messages after `after`, from a read that started at or after `not_before`.
    pub async fn read_range(
        &self,
        channel: &Arc<str>,
        after: u64,
        limit: usize,
        not_before: Instant,
    ) -> Result<Arc<Vec<StoredMessage>>, ReadError> {
        let store = self.store.clone();
        let ch = channel.clone();
        let counter = self.store_ranges.clone();
        let (r, joined) = self
            .ranges
            .run((channel.clone(), after, limit), not_before, move || {
                async move {
                    counter.fetch_add(1, Relaxed);
                    store
                        .read_range(&ch, after, limit)
                        .await
                        .map(Arc::new)
                        .map_err(Arc::new)
                }
                .boxed()
            })
            .await;
        self.count(joined);
        r.map(|(v, _, _)| v).map_err(ReadError::Store)
    }

    /// `user`'s acked position on `channel`.
    pub async fn ack(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<herald_proto::Position>, ReadError> {
        let ack = self
            .store
            .ack_get(channel, user)
            .await
            .map_err(|e| ReadError::Store(Arc::new(e)))?;
        Ok(ack.map(|a| herald_proto::Position {
            epoch: a.epoch,
            seq: a.seq,
        }))
    }

    fn count(&self, joined: bool) {
        if joined {
            self.joined.fetch_add(1, Relaxed);
        }
    }
}

/// Whether a stream at `at` is inside the log `meta` describes: the same epoch (or the very
/// start), not past its head, not before its first retained message.
fn fits(meta: &ChannelMeta, at: herald_proto::Position) -> bool {
    let from_start = at.epoch == 0 && at.seq == 0;
    (from_start || at.epoch == meta.epoch)
        && at.seq <= meta.last_seq
        && at.seq.saturating_add(1) >= meta.first_seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_reads_of_one_key_run_once() {
        let flights: Arc<Flights<u32, u32>> = Arc::new(Flights::new());
        let start = Instant::now();
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (f, c, g) = (flights.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                f.run(1, start, move || {
                    async move {
                        c.fetch_add(1, Relaxed);
                        g.notified().await;
                        Ok(7)
                    }
                    .boxed()
                })
                .await
                .0
            }));
        }
        // Every caller is waiting on the one read before it is let go.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.load(Relaxed) == 0 || Arc::strong_count(&gate) > 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "callers never queued"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        gate.notify_waiters();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().0, 7);
        }
        assert_eq!(calls.load(Relaxed), 1);
        assert!(flights.inflight.lock().is_empty());
    }
}
