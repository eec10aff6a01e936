//! Takes messages off the fabric, frames each once, and fans it out; repairs gaps the fabric
//! left from the store before delivering what came after them.

use crate::hub::Delivered;
use crate::message::Message;
use crate::stats::Counters;
use crate::Node;
use herald_fabric::FabricMessage;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Most messages fetched to repair one gap; a bigger hole is left to client resumes.
const MAX_REPAIR: usize = 10_000;

pub(crate) async fn run(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<FabricMessage>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let fm = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = stop.changed() => return,
        };
        let msg = Message::from_fabric(&fm);
        if let Delivered::Gap { after } = node.hub.deliver(&msg) {
            repair(&node, &msg, after).await;
            node.hub.deliver(&msg);
        }
    }
}

async fn repair(node: &Node, msg: &Arc<Message>, after: u64) {
    Counters::bump(&node.counters.gap_repairs);
    let want = (msg.seq - after - 1) as usize;
    match node
        .store
        .read_range(&msg.channel, after, want.min(MAX_REPAIR))
        .await
    {
        Ok(missing) => {
            for m in missing.iter().filter(|m| m.seq < msg.seq) {
                node.hub
                    .deliver(&Message::from_stored(msg.channel.clone(), m));
            }
        }
        Err(e) => {
            tracing::warn!(channel = %msg.channel, error = %e, "gap repair failed; subscribers will resume");
        }
    }
}
