//! The node's presence tick: count this node's subscribers per channel, tell the cluster
//! what changed, and give subscribers of opted-in namespaces the channel's viewer count
//! (`herald:occupancy`, at most every N seconds) and who joined or left (small channels).
//! The events are made by each node for its own subscribers from the counts it heard, so a
//! join costs no message to anyone beyond the next tick's report.

use crate::message::Message;
use crate::presence::{Occupancy, Told, USERS_LISTED};
use crate::stats::Counters;
use crate::Node;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// What the channel's subscribers were last told.
struct Said {
    count: u64,
    at: Instant,
    users: BTreeSet<String>,
}

pub(crate) async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(
        node.config
            .presence_tick
            .max(std::time::Duration::from_millis(50)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told = Told::default();
    let mut said: HashMap<Arc<str>, Said> = HashMap::new();
    let events = node.config.presence.any();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // Alone (`herald serve`) and without presence events nobody needs the counts each
        // tick: the presence endpoint reads this node's slots when asked.
        if node.gossip.get().is_none() && !events {
            continue;
        }
        let census = node.hub.census(USERS_LISTED);
        let local: Vec<Arc<str>> = if events {
            census.iter().map(|(c, _)| c.clone()).collect()
        } else {
            Vec::new()
        };
        let report = told.report(&node.config.name, census);
        // Every tick, also when nothing changed: the report says the node is alive, and
        // a node not heard from for a few ticks stops counting.
        if let Some(gossip) = node.gossip.get() {
            gossip(&report);
            Counters::bump(&node.counters.presence_reports);
        }
        node.presence.heard(report);
        if events {
            announce(&node, &local, &mut said);
        }
    }
}

/// Fans out the events the opted-in channels with subscribers here are due.
fn announce(node: &Node, local: &[Arc<str>], said: &mut HashMap<Arc<str>, Said>) {
    said.retain(|c, _| local.contains(c));
    let now_ms = herald_trace::now_us() / 1000;
    let mut flush = Vec::new();
    for channel in local {
        let policy = node.config.presence.for_channel(channel);
        if policy.occupancy_every.is_none() && !policy.join_leave {
            continue;
        }
        let occ: Occupancy = node.presence.of(channel);
        let users: BTreeSet<String> = occ.users.clone().unwrap_or_default().into_iter().collect();
        let first = !said.contains_key(channel);
        let entry = said.entry(channel.clone()).or_insert_with(|| Said {
            count: u64::MAX,
            at: Instant::now(),
            users: users.clone(),
        });
        let mut events: Vec<(&str, String)> = Vec::new();
        if policy.join_leave && occ.users.is_some() && !first {
            for u in users.difference(&entry.users) {
                events.push(("herald:join", serde_json::json!({ "user": u }).to_string()));
            }
            for u in entry.users.difference(&users) {
                events.push(("herald:leave", serde_json::json!({ "user": u }).to_string()));
            }
        }
        if occ.users.is_some() {
            entry.users = users;
        }
        if let Some(every) = policy.occupancy_every {
            if occ.count != entry.count && (first || entry.at.elapsed() >= every) {
                entry.count = occ.count;
                entry.at = Instant::now();
                events.push((
                    "herald:occupancy",
                    serde_json::json!({ "count": occ.count }).to_string(),
                ));
            }
        }
        for (event, data) in events {
            let msg = Message::node_event(channel.clone(), event, data.as_bytes(), now_ms);
            node.hub.deliver(&msg, &mut flush);
            Counters::bump(&node.counters.presence_events);
        }
    }
    for q in flush {
        q.flush();
    }
}
