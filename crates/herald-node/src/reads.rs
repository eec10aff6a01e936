//! Store reads shared between callers that want the same thing at the same time
//! (single-flight): a reconnect storm on a hot channel asks the store once per page, not
//! once per client.

use futures_util::future::{BoxFuture, FutureExt, Shared};
use herald_store::{ChannelMeta, Store, StoreError, StoredMessage};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

type SharedRead<V> = Shared<BoxFuture<'static, Result<(V, Instant), Arc<StoreError>>>>;

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
    /// completed, and whether it joined.
    async fn run(
        &self,
        key: K,
        not_before: Instant,
        read: impl FnOnce() -> BoxFuture<'static, Result<V, Arc<StoreError>>>,
    ) -> (Result<(V, Instant), Arc<StoreError>>, bool) {
        let (fut, joined, registered) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some((started, f)) if *started >= not_before => {
                    // Not needed: let go of what it holds now, not when the read ends.
                    drop(read);
                    (f.clone(), true, false)
                }
                // Too old for this caller: read afresh, leaving the other flight in place.
                Some(_) => (Self::timed(read()), false, false),
                None => {
                    let f = Self::timed(read());
                    map.insert(key.clone(), (Instant::now(), f.clone()));
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

    fn timed(read: BoxFuture<'static, Result<V, Arc<StoreError>>>) -> SharedRead<V> {
        async move { read.await.map(|v| (v, Instant::now())) }
            .boxed()
            .shared()
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

/// The node's store reads.
pub(crate) struct Reads {
    store: Arc<dyn Store>,
    metas: Flights<Arc<str>, Option<ChannelMeta>>,
    ranges: Flights<(Arc<str>, u64, usize), Arc<Vec<StoredMessage>>>,
    /// Reads answered by joining one already in flight.
    pub joined: AtomicU64,
}

impl Reads {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            metas: Flights::new(),
            ranges: Flights::new(),
            joined: AtomicU64::new(0),
        }
    }

    /// The channel's meta, from a read that started at or after `not_before`; also when
    /// that read completed (a later read sees at least as much).
    pub async fn channel_meta(
        &self,
        channel: &Arc<str>,
        not_before: Instant,
    ) -> Result<(Option<ChannelMeta>, Instant), String> {
        let store = self.store.clone();
        let ch = channel.clone();
        let (r, joined) = self
            .metas
            .run(channel.clone(), not_before, move || {
                async move { store.channel_meta(&ch).await.map_err(Arc::new) }.boxed()
            })
            .await;
        self.count(joined);
        r.map_err(|e| e.to_string())
    }

    /// Messages after `after`, from a read that started at or after `not_before`.
    pub async fn read_range(
        &self,
        channel: &Arc<str>,
        after: u64,
        limit: usize,
        not_before: Instant,
    ) -> Result<Arc<Vec<StoredMessage>>, String> {
        let store = self.store.clone();
        let ch = channel.clone();
        let (r, joined) = self
            .ranges
            .run((channel.clone(), after, limit), not_before, move || {
                async move {
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
        r.map(|(v, _)| v).map_err(|e| e.to_string())
    }

    /// `user`'s acked position on `channel`.
    pub async fn ack(
        &self,
        channel: &str,
        user: &str,
    ) -> Result<Option<herald_proto::Position>, String> {
        let ack = self
            .store
            .ack_get(channel, user)
            .await
            .map_err(|e| e.to_string())?;
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
