//! Write ownership of the cluster's channels, by lease (the protocol over the store's lease
//! table; see docs/ARCHITECTURE.md, "Who writes a channel").
//!
//! Channels hash to partitions. Each dispatcher keeps a lease row of its own alive with one
//! conditional write every third of the lease duration `D`; the live dispatchers are the
//! rows whose version keeps changing. A partition's desired owner is the live dispatcher
//! with the highest rendezvous score, so a join or leave moves only the partitions it must.
//! Partitions change hands by conditional batches that bump the partition's fence: a
//! dispatcher gives up what it no longer should hold (after its writes there finish), and
//! takes what it should once it is free, or once its holder is declared dead: its row has
//! not changed for `1.1 × D` plus a margin, as this process observed on its own monotonic
//! clock, while the holder stops acknowledging `D` after it *sent* its last successful
//! renewal. So only a clock-rate difference above 10 % between two processes could let a
//! paused holder acknowledge after its partitions were taken; wall clocks play no part.
//!
//! Consensus is paid per renewal (one round per dispatcher per `D/3`) and per change of
//! owner, never per message.

use super::connecting_store::ConnectingStore;
use async_trait::async_trait;
use herald_dispatcher::{Ownership, PublishError, Term};
use herald_proto::{partition_of, PARTITIONS};
use herald_store::{DispatcherRow, LeaseSnapshot, LeaseTable, Take, WriteClock};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How long the rows of dispatchers declared dead stay (with their last ceiling) before
/// they expire.
const DEAD_ROW_TTL_SECS: i32 = 24 * 3600;
/// Longest a partition's release waits for the writes in flight there.
const RELEASE_DRAIN: Duration = Duration::from_secs(2);

/// A live dispatcher, for routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Where its HTTP API listens (`host:port`).
    pub addr: String,
}

/// Where a channel's publishes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This process holds (or is about to take) the channel's partition.
    Here,
    There(Member),
}

#[derive(Clone, Copy, Debug)]
struct Held {
    fence: u64,
    /// Being given up: no new writes start.
    releasing: bool,
}

struct State {
    key: String,
    registered: bool,
    version: u64,
    /// The ceiling the table holds for this process (confirmed by a renewal).
    ceiling: i64,
    /// When this process stops acknowledging unless it renews.
    valid_until: Option<Instant>,
    held: HashMap<u32, Held>,
    /// Other dispatchers' rows: version last seen, and since when (this process's clock).
    observed: HashMap<String, (u64, Instant)>,
}

/// Who holds or should hold each partition, for routing.
#[derive(Default)]
struct View {
    /// Live dispatchers by key.
    live: HashMap<String, Member>,
    /// Per partition: the holder's key (if live), else the desired owner's.
    route: Vec<Option<String>>,
    /// Per partition: the live dispatcher that should hold it.
    desired: Vec<Option<String>>,
}

pub struct Leases {
    id: String,
    addr: String,
    duration: Duration,
    state: Mutex<State>,
    view: RwLock<View>,
    changed: Notify,
    inflight: Box<[AtomicU32]>,
    /// Set once this process held every partition it should (after its first rounds).
    started: AtomicBool,
}

fn new_key(id: &str) -> String {
    format!("{id}#{:08x}", rand::random::<u32>())
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

impl Leases {
    pub fn new(id: String, addr: String, duration: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                key: new_key(&id),
                registered: false,
                version: 0,
                ceiling: 0,
                valid_until: None,
                held: HashMap::new(),
                observed: HashMap::new(),
            }),
            id,
            addr,
            duration,
            view: RwLock::new(View::default()),
            changed: Notify::new(),
            inflight: (0..PARTITIONS).map(|_| AtomicU32::new(0)).collect(),
            started: AtomicBool::new(false),
        })
    }

    /// How long another dispatcher's row must stay unchanged before it is declared dead.
    fn expiry(&self) -> Duration {
        self.duration + self.duration / 10 + Duration::from_millis(200)
    }

    /// Where publishes of `channel` go: the holder of its partition, or the dispatcher that
    /// should take it.
    pub fn route(&self, channel: &str) -> Route {
        let partition = partition_of(channel);
        let p = partition as usize;
        let key = {
            let st = self.state.lock();
            if st.held.get(&partition).is_some_and(|h| !h.releasing) {
                return Route::Here;
            }
            st.key.clone()
        };
        let view = self.view.read();
        match view.route.get(p).cloned().flatten() {
            Some(k) if k != key => match view.live.get(&k) {
                Some(m) => Route::There(m.clone()),
                None => Route::Here,
            },
            _ => Route::Here,
        }
    }

    /// Keeps the lease and the partitions until `stop`, then gives every partition up.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<ConnectingStore>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval((self.duration / 3).max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            let Some(s) = store.connected() else { continue };
            let (table, clock) = (s.lease_table(), s.clock().clone());
            match tokio::time::timeout(self.duration, self.round(&table, &clock)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "lease round failed"),
                Err(_) => tracing::warn!("lease round timed out"),
            }
        }
        if let Some(s) = store.connected() {
            let table = s.lease_table();
            let leave = self.release_all(&table);
            if tokio::time::timeout(RELEASE_DRAIN + Duration::from_secs(3), leave)
                .await
                .is_err()
            {
                tracing::warn!(
                    "giving the partitions up timed out; they move when the lease expires"
                );
            }
        }
    }

    async fn round(&self, table: &LeaseTable, clock: &WriteClock) -> anyhow::Result<()> {
        self.keep_alive(table, clock).await?;
        let snap = table.read().await?;
        let now = Instant::now();
        let me = self.state.lock().key.clone();
        let live = self.observe(&snap, &me, now);
        let desired = desired_owners(&live);
        self.publish_view(&snap, &live, &desired);

        // Give up what another live dispatcher should hold.
        let give: Vec<u32> = {
            let mut st = self.state.lock();
            let give: Vec<u32> = st
                .held
                .iter()
                .filter(|(p, h)| !h.releasing && desired[**p as usize].as_deref() != Some(&me))
                .map(|(p, _)| *p)
                .collect();
            for p in &give {
                if let Some(h) = st.held.get_mut(p) {
                    h.releasing = true;
                }
            }
            give
        };
        if !give.is_empty() {
            self.release(table, &give).await?;
        }

        // Take what this process should hold and nobody live does.
        let takes = self.takes(table, &snap, &desired, &me, now).await?;
        if !takes.is_empty() {
            let taken = table.take(&me, &takes).await?;
            let floor = taken.iter().map(|t| t.lo).max().unwrap_or(0);
            clock.raise_floor(floor);
            {
                let mut st = self.state.lock();
                if st.key == me {
                    for t in &taken {
                        st.held.insert(
                            t.partition,
                            Held {
                                fence: t.fence + 1,
                                releasing: false,
                            },
                        );
                    }
                }
            }
            if !taken.is_empty() {
                tracing::info!(partitions = taken.len(), "took partition leases");
                // The floor may be above the published ceiling: publish a new one before
                // writing (the clock refuses timestamps at the ceiling).
                self.keep_alive(table, clock).await?;
            }
            self.changed.notify_waiters();
        }
        if !self.started.load(Ordering::Acquire) {
            let st = self.state.lock();
            let mine = desired
                .iter()
                .enumerate()
                .filter(|(_, d)| d.as_deref() == Some(&me));
            let all_held = st.valid_until.is_some_and(|v| Instant::now() < v)
                && mine.clone().count() > 0
                && mine
                    .into_iter()
                    .all(|(p, _)| st.held.contains_key(&(p as u32)));
            if all_held {
                self.started.store(true, Ordering::Release);
                tracing::info!(
                    partitions = st.held.len(),
                    "holding this dispatcher's share of partitions"
                );
            }
        }
        Ok(())
    }

    /// Registers this process's row, or renews it. A renewal refused means another
    /// dispatcher declared this one dead: every partition is gone, and it starts over as a
    /// new incarnation.
    async fn keep_alive(&self, table: &LeaseTable, clock: &WriteClock) -> anyhow::Result<()> {
        let (key, registered, version, ceiling) = {
            let st = self.state.lock();
            (st.key.clone(), st.registered, st.version, st.ceiling)
        };
        let next_ceiling = (now_us().max(clock.last()).max(clock.floor())
            + 2 * micros(self.duration))
        .max(ceiling);
        let sent = Instant::now();
        let ok = if registered {
            table.renew(&key, version, next_ceiling).await?
        } else {
            table
                .register(&key, &self.id, &self.addr, next_ceiling)
                .await?
        };
        let mut st = self.state.lock();
        if st.key != key {
            return Ok(());
        }
        if ok {
            st.version = if registered { version + 1 } else { 0 };
            st.registered = true;
            st.ceiling = next_ceiling;
            st.valid_until = Some(sent + self.duration);
            clock.set_ceiling(next_ceiling);
            drop(st);
            self.changed.notify_waiters();
        } else if registered {
            tracing::warn!(key = %key, "this dispatcher was declared dead (paused or cut off longer than its lease); its partitions moved, starting over");
            let dropped = st.held.len();
            st.held.clear();
            st.valid_until = None;
            st.registered = false;
            st.key = new_key(&self.id);
            drop(st);
            tracing::info!(dropped, "partition leases dropped");
            self.changed.notify_waiters();
        } else {
            // The random key is taken (vanishingly rare): pick another.
            st.key = new_key(&self.id);
        }
        Ok(())
    }

    /// Updates what was seen of every dispatcher row; returns the live ones by key.
    fn observe(
        &self,
        snap: &LeaseSnapshot,
        me: &str,
        now: Instant,
    ) -> HashMap<String, DispatcherRow> {
        let mut st = self.state.lock();
        let mut live = HashMap::new();
        for row in &snap.dispatchers {
            let seen = st
                .observed
                .entry(row.key.clone())
                .or_insert((row.version, now));
            if seen.0 != row.version {
                *seen = (row.version, now);
            }
            let fresh = now.duration_since(seen.1) < self.expiry();
            if !row.dead && (row.key == me || fresh) {
                live.insert(row.key.clone(), row.clone());
            }
        }
        let keys: Vec<&String> = snap.dispatchers.iter().map(|r| &r.key).collect();
        st.observed.retain(|k, _| keys.contains(&k));
        live
    }

    fn publish_view(
        &self,
        snap: &LeaseSnapshot,
        live: &HashMap<String, DispatcherRow>,
        desired: &[Option<String>],
    ) {
        let mut route: Vec<Option<String>> = desired.to_vec();
        for p in &snap.partitions {
            if let (Some(owner), Some(slot)) = (&p.owner, route.get_mut(p.partition as usize)) {
                if live.contains_key(owner) {
                    *slot = Some(owner.clone());
                }
            }
        }
        let members = live
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    Member {
                        id: r.id.clone(),
                        addr: r.addr.clone(),
                    },
                )
            })
            .collect();
        *self.view.write() = View {
            live: members,
            route,
            desired: desired.to_vec(),
        };
    }

    /// The partitions to take now: desired here, not held here, and free or held by a
    /// dispatcher that is dead (declaring it so first when its row stopped changing).
    async fn takes(
        &self,
        table: &LeaseTable,
        snap: &LeaseSnapshot,
        desired: &[Option<String>],
        me: &str,
        now: Instant,
    ) -> anyhow::Result<Vec<Take>> {
        let held: Vec<u32> = self.state.lock().held.keys().copied().collect();
        let rows: HashMap<&str, &DispatcherRow> = snap
            .dispatchers
            .iter()
            .map(|r| (r.key.as_str(), r))
            .collect();
        let mut declared: HashMap<String, bool> = HashMap::new();
        let mut takes = Vec::new();
        for p in &snap.partitions {
            if desired.get(p.partition as usize).and_then(|d| d.as_deref()) != Some(me)
                || held.contains(&p.partition)
            {
                continue;
            }
            let lo = match &p.owner {
                None => p.lo,
                Some(o) => match rows.get(o.as_str()) {
                    Some(r) if r.dead => p.lo.max(r.ceiling.saturating_add(1)),
                    Some(r) if o != me => {
                        let expired =
                            self.state.lock().observed.get(o).is_some_and(|(v, since)| {
                                *v == r.version && now.duration_since(*since) >= self.expiry()
                            });
                        if !expired {
                            continue; // alive: it gives the partition up when it sees us
                        }
                        let dead = match declared.get(o) {
                            Some(d) => *d,
                            None => {
                                let d = table.mark_dead(r, DEAD_ROW_TTL_SECS).await?;
                                if d {
                                    tracing::warn!(dispatcher = %r.id, key = %o, "declared dispatcher dead: its lease expired; taking its partitions");
                                }
                                declared.insert(o.clone(), d);
                                d
                            }
                        };
                        if !dead {
                            continue;
                        }
                        p.lo.max(r.ceiling.saturating_add(1))
                    }
                    // Our own key in the table but not in memory (a release whose answer
                    // was lost): take it again, which bumps the fence.
                    Some(r) => p.lo.max(r.ceiling.saturating_add(1)),
                    // Its row expired long after it was declared dead; its ceiling is gone,
                    // so start clear of anything it could have stamped.
                    None => p.lo.max(now_us() + 2 * micros(self.duration)),
                },
            };
            takes.push(Take {
                partition: p.partition,
                from: p.owner.clone(),
                fence: p.fence,
                lo,
            });
        }
        Ok(takes)
    }

    /// Gives partitions up once the writes in flight there are answered (or after a
    /// bound: a write answered after the release is not acknowledged).
    async fn release(&self, table: &LeaseTable, give: &[u32]) -> anyhow::Result<()> {
        let deadline = Instant::now() + RELEASE_DRAIN;
        while give
            .iter()
            .any(|p| self.inflight[*p as usize].load(Ordering::Acquire) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (key, ceiling, held) = {
            let st = self.state.lock();
            let held: Vec<(u32, u64)> = give
                .iter()
                .filter_map(|p| st.held.get(p).map(|h| (*p, h.fence)))
                .collect();
            (st.key.clone(), st.ceiling, held)
        };
        // From here on nothing more is acknowledged under these leases.
        {
            let mut st = self.state.lock();
            for p in give {
                st.held.remove(p);
            }
        }
        let released = table
            .release(&key, &held, ceiling.saturating_add(1))
            .await?;
        tracing::info!(
            partitions = released.len(),
            asked = held.len(),
            "gave partition leases up"
        );
        self.changed.notify_waiters();
        Ok(())
    }

    async fn release_all(&self, table: &LeaseTable) {
        let all: Vec<u32> = {
            let mut st = self.state.lock();
            for h in st.held.values_mut() {
                h.releasing = true;
            }
            st.held.keys().copied().collect()
        };
        if all.is_empty() {
            return;
        }
        if let Err(e) = self.release(table, &all).await {
            tracing::warn!(error = %e, "giving the partitions up failed; they move when the lease expires");
        }
    }

    /// Whether waiting for `partition` makes sense: this process should hold it (or has
    /// not read the lease table yet).
    fn may_come_here(&self, partition: u32) -> bool {
        let key = self.state.lock().key.clone();
        let view = self.view.read();
        view.desired.is_empty()
            || view.desired.get(partition as usize).cloned().flatten() == Some(key)
    }

    fn holds(&self, partition: u32) -> Option<u64> {
        let st = self.state.lock();
        let valid = st.valid_until.is_some_and(|v| Instant::now() < v);
        st.held
            .get(&partition)
            .filter(|h| valid && !h.releasing)
            .map(|h| h.fence)
    }
}

#[async_trait]
impl Ownership for Leases {
    async fn ready(&self, channels: &[&str], wait: Duration) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let missing = channels
                .iter()
                .find(|c| self.holds(partition_of(c)).is_none());
            let Some(c) = missing else { return Ok(()) };
            if !self.may_come_here(partition_of(c)) {
                return Err(PublishError::unavailable(
                    "not_owner",
                    format!("another dispatcher holds or is taking {c}'s partition; retry"),
                ));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(PublishError::unavailable(
                    "not_owner",
                    format!("no lease on {c}'s partition within {wait:?}; retry"),
                ));
            }
        }
    }

    fn term(&self, channel: &str) -> Option<Term> {
        let partition = partition_of(channel);
        self.holds(partition).map(|fence| Term { partition, fence })
    }

    fn enter(&self, partition: u32) {
        if let Some(n) = self.inflight.get(partition as usize) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn leave(&self, partition: u32) {
        if let Some(n) = self.inflight.get(partition as usize) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    fn still_valid(&self, term: Term) -> bool {
        let st = self.state.lock();
        st.valid_until.is_some_and(|v| Instant::now() < v)
            && st
                .held
                .get(&term.partition)
                .is_some_and(|h| h.fence == term.fence)
    }
}

/// The rendezvous owner of every partition among the live dispatchers (by key).
fn desired_owners(live: &HashMap<String, DispatcherRow>) -> Vec<Option<String>> {
    (0..PARTITIONS)
        .map(|p| {
            live.values()
                .max_by_key(|r| (score(p, &r.id), r.key.as_str()))
                .map(|r| r.key.clone())
        })
        .collect()
}

fn score(partition: u32, id: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in partition.to_le_bytes().iter().chain(id.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly; a finalizer spreads the partitions evenly over members.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(ids: &[&str]) -> HashMap<String, DispatcherRow> {
        ids.iter()
            .map(|id| {
                let key = format!("{id}#1");
                (
                    key.clone(),
                    DispatcherRow {
                        key,
                        id: (*id).to_owned(),
                        addr: format!("{id}:1"),
                        version: 1,
                        ceiling: 0,
                        dead: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn ownership_is_balanced_and_moves_only_what_it_must() {
        let three = desired_owners(&rows(&["a", "b", "c"]));
        let two = desired_owners(&rows(&["a", "b"]));
        let mut counts: HashMap<String, usize> = HashMap::new();
        for (o3, o2) in three.iter().zip(&two) {
            let o3 = o3.clone().unwrap();
            *counts.entry(o3.clone()).or_default() += 1;
            if o3 != "c#1" {
                // Only the leaver's partitions change owner.
                assert_eq!(Some(&o3), o2.as_ref());
            }
        }
        let n = PARTITIONS as usize;
        for k in ["a#1", "b#1", "c#1"] {
            let c = counts[k];
            assert!(
                (n / 4..n / 2).contains(&c),
                "{k} owns {c} of {n} partitions"
            );
        }
    }
}
