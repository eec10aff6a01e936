//! Periodic upkeep of a node: heartbeats on every stream, cleanup of stalled peers, and
//! forgetting channels nobody follows any more.

use crate::queue::{CloseReason, Item};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let heartbeat = Bytes::from(herald_proto::comment("hb"));
    let mut tick = tokio::time::interval(node.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let write_timeout = node.config.write_timeout;
        node.registry.for_each(|q| {
            if q.stalled(write_timeout) {
                Counters::bump(&node.counters.stalled_disconnects);
                q.close(CloseReason::Stalled, true);
            } else {
                q.push(Item::Raw(heartbeat.clone()));
            }
        });
        node.hub.sweep_idle(node.config.channel_idle);
    }
}
