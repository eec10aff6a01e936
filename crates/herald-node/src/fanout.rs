//! Takes messages off the fabric, frames each once, and fans it out. A hole the fabric left
//! in a channel is read from the store off this loop ([`crate::repair`]): only that
//! channel's newer messages wait for it.

use crate::message::Message;
use crate::repair::{self, Repairs};
use crate::Node;
use herald_fabric::Incoming;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Most messages fanned out before the touched connections are written. While the node
/// keeps up this is 1 (each message leaves at once); when it falls behind, the messages
/// that queued meanwhile leave together, one write per connection.
const MAX_BATCH: usize = 512;
/// Messages waiting beyond which the node counts as behind and drops ephemeral ones.
const SHED_EPHEMERAL_AT: usize = MAX_BATCH / 2;

pub(crate) async fn run(
    node: Arc<Node>,
    mut rx: mpsc::Receiver<Incoming>,
    resync: mpsc::Sender<Option<Arc<str>>>,
    mut repaired: mpsc::Receiver<repair::Done>,
    repairs: mpsc::Sender<repair::Job>,
    mut stop: watch::Receiver<bool>,
) {
    let mut repairs = Repairs::new(repairs);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut flush = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.changed() => return,
            done = repaired.recv() => {
                if let Some(done) = done {
                    repairs.finish(&node, done, &mut flush);
                    flush_all(&mut flush, false).await;
                }
                continue;
            }
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
        };
        let mut next = Some(first);
        while let Some(incoming) = next.take() {
            match incoming {
                Incoming::Message(m) => batch.push(m),
                Incoming::Resync(channel) => {
                    // Store reads happen off this loop; a full queue already holds a
                    // resync that will see the same store state.
                    let _ = resync.try_send(channel);
                }
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if batch.is_empty() {
            continue;
        }
        if batch.len() >= SHED_EPHEMERAL_AT {
            // Falling behind: ephemeral messages (reactions, counters) go first, so the
            // reliable ones reach their subscribers sooner.
            let before = batch.len();
            batch.retain(|m| !m.is_ephemeral());
            node.counters.ephemeral_shed.fetch_add(
                (before - batch.len()) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let journal = node.config().journal.as_ref();
        let received = herald_trace::now_us();
        let messages = batch.len() as u64;
        for fm in batch.drain(..) {
            if let (Some(j), true) = (journal, fm.sent_us > 0) {
                j.latency
                    .fabric_to_node
                    .observe(herald_trace::between_us(fm.sent_us, received));
            }
            let trace = match (&fm.trace, journal) {
                (Some(ctx), Some(journal)) => {
                    Some(journal.fanout(ctx, &fm.channel, (fm.seq > 0).then_some(fm.seq)))
                }
                _ => None,
            };
            repairs.offer(&node, Message::from_fabric(&fm, trace), &mut flush);
        }
        // Large fan-outs split their writes over both threads also when the node is behind
        // (several messages per connection in one write): at 18k subscribers and 10 msgs/s
        // this took p99 from 446 to 388 ms (medians of 3) with fan-out throughput unchanged.
        flush_all(&mut flush, true).await;
        if let Some(j) = journal {
            let took = herald_trace::between_us(received, herald_trace::now_us());
            j.latency.node_to_socket.observe_n(took, messages);
        }
    }
}

/// Connections per write batch beyond which the writes are split across two threads.
const PARALLEL_FLUSH: usize = 2048;

/// Writes every touched connection once. Large fan-outs are split so both runtime threads
/// make the syscalls (nearly all of a fan-out's time is inside `send()`).
async fn flush_all(flush: &mut Vec<Arc<crate::queue::ConnQueue>>, parallel: bool) {
    if parallel && flush.len() >= PARALLEL_FLUSH {
        let other: Vec<_> = flush.split_off(flush.len() / 2);
        let helper = tokio::spawn(async move {
            for q in other {
                q.flush();
            }
        });
        for q in flush.drain(..) {
            q.flush();
        }
        let _ = helper.await;
    } else {
        for q in flush.drain(..) {
            q.flush();
        }
    }
}
