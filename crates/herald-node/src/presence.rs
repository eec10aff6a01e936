//! Who is on a channel across the cluster. Each node counts its own subscribers per channel
//! and, once a tick, tells the other processes what changed (a full list now and then, so a
//! process that missed a report or started late catches up; an empty report when nothing
//! changed, so the others know it is alive); every process sums what it heard from the
//! nodes heard lately. A channel's count is exact as of each node's last tick, and costs one entry per
//! node per tick however many join: a channel on every node with 10k subscribers is one
//! number per node. Users are listed for channels with at most [`USERS_LISTED`] subscribers.

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Channels with at most this many subscribers (on a node, and in all) list their users.
pub const USERS_LISTED: usize = 64;
/// Every this many ticks a node reports every channel, not only what changed.
pub const FULL_EVERY: u32 = 10;
/// A node not heard from for this many ticks no longer counts (it died or left).
const STALE_TICKS: u32 = 3;

/// One channel's subscribers on this node, and their users when few enough to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub subscribers: u64,
    pub users: Option<Vec<Arc<str>>>,
}

/// What a node tells the others on a tick.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub node: String,
    /// Every channel the node has subscribers of (else: only the changed ones).
    pub full: bool,
    pub channels: Vec<Entry>,
}

/// One channel on one node: `n` subscribers (0: none left), and their users if listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub c: String,
    pub n: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<Vec<String>>,
}

/// A channel's subscribers across the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Occupancy {
    pub count: u64,
    /// The users, when the channel is small enough for every node to list them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<String>>,
    /// Nodes it has subscribers on.
    pub nodes: usize,
}

struct Heard {
    at: Instant,
    channels: HashMap<String, (u64, Option<Vec<String>>)>,
}

/// The counts heard from every node (this one's included).
pub struct PresenceView {
    tick: Duration,
    nodes: Mutex<HashMap<String, Heard>>,
}

impl PresenceView {
    pub fn new(tick: Duration) -> Self {
        Self {
            tick,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a node's report.
    pub fn heard(&self, report: Report) {
        let mut nodes = self.nodes.lock();
        let heard = nodes.entry(report.node).or_insert_with(|| Heard {
            at: Instant::now(),
            channels: HashMap::new(),
        });
        heard.at = Instant::now();
        if report.full {
            heard.channels.clear();
        }
        for e in report.channels {
            if e.n == 0 {
                heard.channels.remove(&e.c);
            } else {
                heard.channels.insert(e.c, (e.n, e.u));
            }
        }
    }

    /// A channel's subscribers on every node heard from lately.
    pub fn of(&self, channel: &str) -> Occupancy {
        let stale = self.tick * STALE_TICKS;
        let mut nodes = self.nodes.lock();
        nodes.retain(|_, h| h.at.elapsed() <= stale);
        let mut out = Occupancy::default();
        let mut users: Option<BTreeSet<String>> = Some(BTreeSet::new());
        for h in nodes.values() {
            let Some((n, u)) = h.channels.get(channel) else {
                continue;
            };
            out.count += n;
            out.nodes += 1;
            match (&mut users, u) {
                (Some(all), Some(u)) => all.extend(u.iter().cloned()),
                _ => users = None,
            }
        }
        if out.count as usize <= USERS_LISTED {
            out.users = users.map(|u| u.into_iter().collect());
        }
        out
    }

    /// Nodes heard from lately.
    pub fn nodes(&self) -> usize {
        let stale = self.tick * STALE_TICKS;
        self.nodes
            .lock()
            .values()
            .filter(|h| h.at.elapsed() <= stale)
            .count()
    }
}

/// What this node last told, to report only changes.
#[derive(Default)]
pub(crate) struct Told {
    channels: HashMap<Arc<str>, Count>,
    ticks: u32,
}

impl Told {
    /// This tick's report, from the node's census.
    pub fn report(&mut self, node: &str, census: Vec<(Arc<str>, Count)>) -> Report {
        let full = self.ticks.is_multiple_of(FULL_EVERY);
        self.ticks = self.ticks.wrapping_add(1);
        let now: HashMap<Arc<str>, Count> = census.into_iter().collect();
        let entry = |c: &Arc<str>, n: &Count| Entry {
            c: c.to_string(),
            n: n.subscribers,
            u: n.users
                .as_ref()
                .map(|u| u.iter().map(|s| s.to_string()).collect()),
        };
        let mut channels: Vec<Entry> = now
            .iter()
            .filter(|(c, v)| full || self.channels.get(*c) != Some(v))
            .map(|(c, v)| entry(c, v))
            .collect();
        if !full {
            channels.extend(
                self.channels
                    .keys()
                    .filter(|c| !now.contains_key(*c))
                    .map(|c| Entry {
                        c: c.to_string(),
                        n: 0,
                        u: None,
                    }),
            );
        }
        self.channels = now;
        Report {
            node: node.to_owned(),
            full,
            channels,
        }
    }
}

/// Where presence reports go: the other processes of the cluster.
pub type Gossip = Arc<dyn Fn(&Report) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn census(entries: &[(&str, u64, Option<&[&str]>)]) -> Vec<(Arc<str>, Count)> {
        entries
            .iter()
            .map(|(c, n, u)| {
                let count = Count {
                    subscribers: *n,
                    users: u.map(|u| u.iter().map(|s| Arc::from(*s)).collect()),
                };
                (Arc::from(*c), count)
            })
            .collect()
    }

    #[test]
    fn reports_carry_changes_and_a_full_list_now_and_then() {
        let mut told = Told::default();
        let first = told.report("n0", census(&[("a", 2, Some(&["x", "y"])), ("b", 1, None)]));
        assert!(first.full);
        assert_eq!(first.channels.len(), 2);
        // Nothing changed: an empty report.
        let same = told.report("n0", census(&[("a", 2, Some(&["x", "y"])), ("b", 1, None)]));
        assert!(!same.full && same.channels.is_empty());
        // b left, a changed.
        let changed = told.report("n0", census(&[("a", 3, Some(&["x", "y", "z"]))]));
        let mut names: Vec<(String, u64)> = changed
            .channels
            .iter()
            .map(|e| (e.c.clone(), e.n))
            .collect();
        names.sort();
        assert_eq!(names, vec![("a".into(), 3), ("b".into(), 0)]);
        for _ in 3..FULL_EVERY {
            told.report("n0", census(&[("a", 3, None)]));
        }
        assert!(told.report("n0", census(&[("a", 3, None)])).full);
    }

    #[test]
    fn the_view_sums_nodes_and_lists_users_of_small_channels() {
        let view = PresenceView::new(Duration::from_secs(1));
        let mut n0 = Told::default();
        let mut n1 = Told::default();
        view.heard(n0.report("n0", census(&[("a", 2, Some(&["x", "y"]))])));
        view.heard(n1.report("n1", census(&[("a", 1, Some(&["y"])), ("b", 100, None)])));
        let a = view.of("a");
        assert_eq!((a.count, a.nodes), (3, 2));
        assert_eq!(a.users, Some(vec!["x".to_owned(), "y".to_owned()]));
        let b = view.of("b");
        assert_eq!((b.count, b.users), (100, None));
        // n0's channel empties: its delta says 0.
        view.heard(n0.report("n0", census(&[])));
        assert_eq!(view.of("a").count, 1);
        let nobody = view.of("nothing");
        assert_eq!((nobody.count, nobody.users), (0, Some(Vec::new())));
    }
}
