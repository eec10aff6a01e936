//! Periodic upkeep of a node: heartbeats on every stream, cleanup of stalled peers,
//! forgetting channels nobody follows any more, and ending streams past their lifetime.

use crate::queue::{CloseReason, Item};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const LIFETIME_CHECK: Duration = Duration::from_secs(1);

pub(crate) async fn run(node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    let heartbeat = Bytes::from(herald_proto::comment("hb"));
    let mut tick = tokio::time::interval(node.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // Lifetimes are checked every second (when set), so expiring streams leave at an even
    // rate rather than in heartbeat-sized bursts.
    let mut lifetimes = tokio::time::interval(LIFETIME_CHECK);
    lifetimes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let check_lifetimes = node.config.max_conn_lifetime.is_some();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = lifetimes.tick(), if check_lifetimes => {
                node.end_expired(std::time::Instant::now());
                continue;
            }
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
