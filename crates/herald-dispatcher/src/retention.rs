//! Applies each namespace's retention to the channels' logs, and expires idempotency keys.
//!
//! Each round trims the channels this dispatcher wrote past their namespace's count: the
//! sweep never lists every channel nor scans the idempotency records, so its cost follows
//! this dispatcher's writes, not the size of the cluster. A store whose rows expire by TTL
//! (the cluster's) needs nothing else. Otherwise (embedded) every channel is swept for age
//! now and then, because age retention needs no new writes to become due; channels of
//! namespaces that keep messages for less than [`SHORT_AGE`] are also swept for age in the
//! round after they are written.

use crate::stats::Counters;
use crate::{now_ms, Policies};
use herald_store::{Retention, Store};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Every channel is swept at least this often (age-based retention needs no new writes).
const FULL_SWEEP_EVERY: u32 = 12;
/// Namespaces keeping messages for less than this are swept for age right after writes too.
const SHORT_AGE: Duration = Duration::from_secs(3600);
/// Channels remembered between rounds; past this, writes go unnoted until the next round
/// (a later write of the channel notes it again, and full sweeps catch everything).
const MAX_WRITTEN: usize = 65_536;

/// The channels written since the last round, with their last seq. The writer notes them
/// without waking the sweeper, which takes them when its round comes.
#[derive(Default)]
pub(crate) struct Written {
    channels: Mutex<HashMap<String, u64>>,
}

impl Written {
    /// Notes the channels of one commit with their last seq, under one lock.
    pub fn note<'a>(&self, written: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut map = self.channels.lock();
        for (channel, seq) in written {
            if let Some(last) = map.get_mut(channel) {
                *last = (*last).max(seq);
            } else if map.len() < MAX_WRITTEN {
                map.insert(channel.to_owned(), seq);
            }
        }
    }

    fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.channels.lock())
    }
}

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

    pub async fn run(self, written: Arc<Written>, mut stop: watch::Receiver<bool>) {
        let by_ttl = self.store.expires_by_ttl();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u32 = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {}
            }
            round = round.wrapping_add(1);
            let full = !by_ttl && round.is_multiple_of(FULL_SWEEP_EVERY);
            let recent = written.take();
            let work: Vec<(String, Retention)> = if full {
                match self.store.list_channels().await {
                    Ok(all) => self.with_retention(all),
                    Err(e) => {
                        tracing::warn!(error = %e, "listing channels for retention failed");
                        Vec::new()
                    }
                }
            } else {
                due(&self.policies, recent.into_iter(), by_ttl)
            };
            self.sweep(work).await;
            if full {
                if let Err(e) = self.store.expire_idempotency(now_ms()).await {
                    tracing::warn!(error = %e, "expiring idempotency keys failed");
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

/// Of the channels just written, those a round must trim: past their namespace's count
/// (count retention only), or of a short-lived namespace on a store without row TTLs
/// (its whole retention). Others wait for their full sweep, if their store needs one.
fn due(
    policies: &Policies,
    written: impl Iterator<Item = (String, u64)>,
    by_ttl: bool,
) -> Vec<(String, Retention)> {
    written
        .filter_map(|(c, last)| {
            let retention = policies.for_channel(&c).retention;
            if !by_ttl && retention.max_age < SHORT_AGE {
                return Some((c, retention));
            }
            (last > retention.max_count).then_some((
                c,
                Retention {
                    max_count: retention.max_count,
                    max_age: Duration::MAX,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NamespacePolicy;

    #[test]
    fn a_round_trims_channels_over_count_and_short_lived_ones() {
        let mut policies = Policies::default();
        let mut brief = NamespacePolicy::default();
        brief.retention.max_age = Duration::from_secs(60);
        policies.namespaces.insert("brief".into(), brief);
        let written = || {
            [("live:a", 10), ("live:b", 1001), ("brief:c", 1)]
                .map(|(c, s)| (c.to_owned(), s))
                .into_iter()
        };
        let mut embedded: Vec<(String, Retention)> = due(&policies, written(), false);
        embedded.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            embedded,
            vec![
                (
                    "brief:c".to_owned(),
                    policies.for_channel("brief:c").retention
                ),
                (
                    "live:b".to_owned(),
                    Retention {
                        max_count: 1000,
                        max_age: Duration::MAX
                    }
                ),
            ]
        );
        // Rows that expire by TTL need count retention only.
        let by_ttl: Vec<String> = due(&policies, written(), true)
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(by_ttl, vec!["live:b".to_owned()]);
    }

    #[test]
    fn written_keeps_the_last_seq_and_empties_when_taken() {
        let w = Written::default();
        w.note([("live:a", 3), ("live:a", 2)]);
        w.note([("live:b", 1)]);
        let taken = w.take();
        assert_eq!(taken.get("live:a"), Some(&3));
        assert_eq!(taken.len(), 2);
        assert!(w.take().is_empty());
    }
}
