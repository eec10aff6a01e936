//! Catches channels up with the store when the fabric says it may have missed messages: a
//! new subscription becomes active only after the store was read, and a reconnecting
//! fabric loses what was published while it was away. Without this, a channel that goes
//! quiet right after such a hole would hold the hole until its next message.

use crate::hub::{Delivered, Slot};
use crate::message::Message;
use crate::stats::Counters;
use crate::Node;
use futures_util::StreamExt;
use herald_proto::Position;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// Channels checked against the store at once after a fabric reconnect.
const CONCURRENCY: usize = 32;
/// Most messages fetched per channel; a bigger hole is left to client resumes.
const MAX_REPAIR: usize = 10_000;

pub(crate) async fn run(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Option<Arc<str>>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = rx.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        // Everything queued meanwhile goes in the same round, each channel once.
        let mut all = first.is_none();
        let mut names: HashSet<Arc<str>> = first.into_iter().collect();
        while let Ok(r) = rx.try_recv() {
            match r {
                Some(c) => {
                    names.insert(c);
                }
                None => all = true,
            }
        }
        let slots: Vec<Arc<Slot>> = if all {
            node.hub.slots()
        } else {
            names.iter().filter_map(|c| node.hub.get(c)).collect()
        };
        let work = futures_util::stream::iter(slots)
            .map(|slot| {
                let node = node.clone();
                async move { catch_up(&node, &slot).await }
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<()>>();
        tokio::select! {
            _ = stop.changed() => return,
            _ = work => {}
        }
    }
}

async fn catch_up(node: &Node, slot: &Arc<Slot>) {
    // Only reads started after the fabric's signal count: the point is to see what was
    // published before it.
    let meta = match node.reads.channel_meta(&slot.channel, Instant::now()).await {
        Ok((Some(m), _)) => m,
        Ok((None, _)) => return,
        Err(e) => {
            tracing::warn!(channel = %slot.channel, error = %e, "resync failed; the next message repairs the gap");
            return;
        }
    };
    let store_head = Position {
        epoch: meta.epoch,
        seq: meta.last_seq,
    };
    let here = node.hub.head_or_start(slot, store_head);
    let same_log = here.epoch == meta.epoch || here.epoch == 0;
    if !same_log || here.seq >= meta.last_seq {
        return;
    }
    Counters::bump(&node.counters.resync_repairs);
    let missing = match node
        .reads
        .read_range(&slot.channel, here.seq, MAX_REPAIR, Instant::now())
        .await
    {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(channel = %slot.channel, error = %e, "resync read failed");
            return;
        }
    };
    let mut flush = Vec::new();
    for m in missing.iter() {
        // The hub drops what the fan-out loop delivered meanwhile, so racing it is safe.
        let msg = Message::from_stored(slot.channel.clone(), m);
        if let Delivered::Gap { .. } = node.hub.deliver(&msg, &mut flush) {
            // Retention already dropped what came between: step over the hole (each
            // connection checks its own cursor and resumes, getting a reset) rather than
            // leave the channel stuck until its next message.
            node.hub.skip_gap(&msg);
            node.hub.deliver(&msg, &mut flush);
        }
    }
    for q in flush {
        q.flush();
    }
}
