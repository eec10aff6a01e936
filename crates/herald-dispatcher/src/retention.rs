//! Applies each namespace's retention to the channels' logs, and expires idempotency keys.
//!
//! A store whose rows expire by TTL (the cluster's) needs only count retention, and only on
//! channels this dispatcher wrote past their namespace's count: the sweep never lists every
//! channel nor scans the idempotency records, so its cost follows this dispatcher's writes,
//! not the size of the cluster. Otherwise (embedded) every channel is swept now and then,
//! because age retention needs no new writes to become due.

use crate::stats::Counters;
use crate::{now_ms, Policies};
use herald_store::{Retention, Store};
use std::collections::HashMap;
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

    pub async fn run(
        self,
        mut dirty: mpsc::Receiver<(String, u64)>,
        mut stop: watch::Receiver<bool>,
    ) {
        let by_ttl = self.store.expires_by_ttl();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Channel → last seq written.
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut round: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                Some((c, seq)) = dirty.recv() => {
                    let last = pending.entry(c).or_insert(0);
                    *last = (*last).max(seq);
                }
                _ = tick.tick() => {
                    round = round.wrapping_add(1);
                    let full = !by_ttl && round.is_multiple_of(FULL_SWEEP_EVERY);
                    let work: Vec<(String, Retention)> = if by_ttl {
                        self.over_count(pending.drain())
                    } else if full {
                        pending.clear();
                        match self.store.list_channels().await {
                            Ok(all) => self.with_retention(all),
                            Err(e) => {
                                tracing::warn!(error = %e, "listing channels for retention failed");
                                Vec::new()
                            }
                        }
                    } else {
                        self.with_retention(pending.drain().map(|(c, _)| c).collect())
                    };
                    self.sweep(work).await;
                    if full {
                        if let Err(e) = self.store.expire_idempotency(now_ms()).await {
                            tracing::warn!(error = %e, "expiring idempotency keys failed");
                        }
                    }
                }
            }
        }
    }

    fn with_retention(&self, channels: Vec<String>) -> Vec<(String, Retention)> {
        channels
            .into_iter()
            .map(|c| {
                let r = self.policies.for_channel(&c).retention;
                (c, r)
            })
            .collect()
    }

    /// Channels written past their namespace's count, with count retention only (rows
    /// expire by age on their own).
    fn over_count(&self, written: impl Iterator<Item = (String, u64)>) -> Vec<(String, Retention)> {
        written
            .filter_map(|(c, last)| {
                let max_count = self.policies.for_channel(&c).retention.max_count;
                (last > max_count).then_some((
                    c,
                    Retention {
                        max_count,
                        max_age: Duration::MAX,
                    },
                ))
            })
            .collect()
    }

    async fn sweep(&self, work: Vec<(String, Retention)>) {
        // In slices, so one sweep of many channels never holds the store for long.
        let mut work = work;
        while !work.is_empty() {
            let rest = work.split_off(work.len().min(1024));
            match self.store.trim_many(work, now_ms()).await {
                Ok(removed) => self.counters.add_trimmed(removed),
                Err(e) => tracing::warn!(error = %e, "retention trim failed"),
            }
            work = rest;
        }
    }
}
