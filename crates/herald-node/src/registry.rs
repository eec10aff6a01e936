//! Every open stream of this node, for heartbeats, stall detection and shutdown.

use crate::queue::ConnQueue;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};

const SHARDS: usize = 32;

#[derive(Default)]
pub(crate) struct Registry {
    next: AtomicU64,
    shards: [Mutex<HashMap<u64, Weak<ConnQueue>>>; SHARDS],
}

impl Registry {
    pub fn add(&self, q: &Arc<ConnQueue>) -> u64 {
        let id = self.next.fetch_add(1, Relaxed);
        self.shards[id as usize % SHARDS]
            .lock()
            .insert(id, Arc::downgrade(q));
        id
    }

    pub fn remove(&self, id: u64) {
        self.shards[id as usize % SHARDS].lock().remove(&id);
    }

    /// Calls `f` on every live stream, one shard at a time (never holding a shard lock
    /// while `f` runs, so `f` may take other locks).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<ConnQueue>)) {
        for shard in &self.shards {
            let live: Vec<Arc<ConnQueue>> =
                shard.lock().values().filter_map(Weak::upgrade).collect();
            for q in &live {
                f(q);
            }
        }
    }
}
