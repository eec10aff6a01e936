//! Which dispatchers are alive, and which of them softly owns a channel.
//!
//! Each dispatcher writes a heartbeat row with a TTL into the store every third of the TTL
//! and reads the others'; a killed process drops out when its row expires. Channels hash
//! to partitions, and a partition's owner is the live dispatcher with the highest
//! rendezvous score, so a join or leave moves only the partitions it must. Ownership only
//! steers publishes to one sequencer; correctness comes from the store's conditional
//! writes, so a stale view costs retries, never duplicates.

use super::connecting_store::ConnectingStore;
use herald_dispatcher::Dispatcher;
use herald_store::Member;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The membership role name of dispatchers in the `members` table.
pub const DISPATCHER_ROLE: &str = "dispatcher";
/// Channels hash into this many partitions; ownership moves a partition at a time.
const PARTITIONS: u64 = 4096;

pub struct Membership {
    me: Member,
    ttl: Duration,
    live: RwLock<Arc<Vec<Member>>>,
}

impl Membership {
    pub fn new(me: Member, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            live: RwLock::new(Arc::new(vec![me.clone()])),
            me,
            ttl,
        })
    }

    pub fn live(&self) -> Arc<Vec<Member>> {
        self.live.read().clone()
    }

    /// The owner of `channel`; `None` when it is this process.
    pub fn owner_of(&self, channel: &str) -> Option<Member> {
        let live = self.live();
        let owner = owner(&live, channel)?;
        (owner.id != self.me.id).then(|| owner.clone())
    }

    /// Heartbeats and refreshes the live set until `stop`; a change of the set makes the
    /// dispatcher re-read channel heads (a channel may have been written by another owner
    /// meanwhile). Leaves cleanly at the end.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<ConnectingStore>,
        dispatcher: Arc<Dispatcher>,
        mut stop: watch::Receiver<bool>,
    ) {
        let ttl_secs = self.ttl.as_secs_f64().ceil().max(1.0) as u32;
        let mut tick = tokio::time::interval((self.ttl / 3).max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            let Some(s) = store.connected() else { continue };
            let round = async {
                s.heartbeat(DISPATCHER_ROLE, &self.me.id, &self.me.addr, ttl_secs)
                    .await?;
                s.members(DISPATCHER_ROLE).await
            };
            match tokio::time::timeout(self.ttl, round).await {
                Ok(Ok(mut members)) => {
                    if !members.iter().any(|m| m.id == self.me.id) {
                        members.push(self.me.clone());
                        members.sort_by(|a, b| a.id.cmp(&b.id));
                    }
                    if *self.live() != members {
                        tracing::info!(
                            dispatchers = ?members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
                            "dispatcher membership changed"
                        );
                        *self.live.write() = Arc::new(members);
                        dispatcher.forget_heads();
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "membership heartbeat failed"),
                Err(_) => tracing::warn!("membership heartbeat timed out"),
            }
        }
        if let Some(s) = store.connected() {
            let leave = s.leave(DISPATCHER_ROLE, &self.me.id);
            if tokio::time::timeout(Duration::from_secs(2), leave)
                .await
                .is_err()
            {
                tracing::warn!("leaving the membership timed out; the row expires by TTL");
            }
        }
    }
}

/// The rendezvous owner of `channel`'s partition among `members`.
pub fn owner<'a>(members: &'a [Member], channel: &str) -> Option<&'a Member> {
    let partition = herald_proto::channel_hash(channel) % PARTITIONS;
    members
        .iter()
        .max_by_key(|m| (score(partition, &m.id), m.id.as_str()))
}

fn score(partition: u64, id: &str) -> u64 {
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

    fn members(ids: &[&str]) -> Vec<Member> {
        ids.iter()
            .map(|id| Member {
                id: (*id).to_owned(),
                addr: format!("{id}:1"),
            })
            .collect()
    }

    #[test]
    fn ownership_is_balanced_and_moves_only_what_it_must() {
        let three = members(&["a", "b", "c"]);
        let two = members(&["a", "b"]);
        let channels: Vec<String> = (0..3000).map(|i| format!("live:{i}")).collect();
        let mut counts = std::collections::HashMap::new();
        let mut moved = 0;
        for c in &channels {
            let o3 = owner(&three, c).unwrap();
            *counts.entry(o3.id.clone()).or_insert(0) += 1;
            let o2 = owner(&two, c).unwrap();
            if o3.id != "c" {
                // Only the leaver's channels change owner.
                assert_eq!(o3.id, o2.id, "{c} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        for id in ["a", "b", "c"] {
            let n = counts[id];
            assert!((700..1300).contains(&n), "{id} owns {n} of 3000");
        }
        assert!(moved > 0);
    }
}
