//! Applies each namespace's retention to the channels' logs, and expires idempotency keys.

use crate::stats::Counters;
use crate::{now_ms, Policies};
use herald_store::Store;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Every channel is swept at least this often (age-based retention needs no new writes).
const FULL_SWEEP_EVERY: u32 = 12;

pub(crate) struct Sweeper {
    store: Arc<dyn Store>,
    policies: Policies,
    interval: Duration,
    counters: Arc<Counters>,
}

impl Sweeper {
    pub fn new(
        store: Arc<dyn Store>,
        policies: Policies,
        interval: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            store,
            policies,
            interval,
            counters,
        }
    }

    pub async fn run(self, mut dirty: mpsc::Receiver<String>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: HashSet<String> = HashSet::new();
        let mut round: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                Some(c) = dirty.recv() => { pending.insert(c); }
                _ = tick.tick() => {
                    round = round.wrapping_add(1);
                    let channels: Vec<String> = if round.is_multiple_of(FULL_SWEEP_EVERY) {
                        pending.clear();
                        match self.store.list_channels().await {
                            Ok(all) => all,
                            Err(e) => {
                                tracing::warn!(error = %e, "listing channels for retention failed");
                                Vec::new()
                            }
                        }
                    } else {
                        pending.drain().collect()
                    };
                    self.sweep(&channels).await;
                    if round.is_multiple_of(FULL_SWEEP_EVERY) {
                        if let Err(e) = self.store.expire_idempotency(now_ms()).await {
                            tracing::warn!(error = %e, "expiring idempotency keys failed");
                        }
                    }
                }
            }
        }
    }

    async fn sweep(&self, channels: &[String]) {
        // In slices, so one sweep of many channels never holds the store for long.
        for slice in channels.chunks(1024) {
            let work = slice
                .iter()
                .map(|c| (c.clone(), self.policies.for_channel(c).retention))
                .collect();
            match self.store.trim_many(work, now_ms()).await {
                Ok(removed) => self.counters.add_trimmed(removed),
                Err(e) => tracing::warn!(error = %e, "retention trim failed"),
            }
        }
    }
}
