//! Fills holes the fabric left in a channel, off the fan-out loop: while one channel's
//! missing messages are read from the store, its newer messages wait (in order, bounded) and
//! every other channel keeps flowing.

use crate::hub::Delivered;
use crate::message::Message;
use crate::queue::ConnQueue;
use crate::stats::Counters;
use crate::Node;
use futures_util::StreamExt;
use herald_store::StoredMessage;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Most messages fetched to repair one gap; a bigger hole is left to client resumes.
const MAX_REPAIR: usize = 10_000;
/// Channels under repair at once; a hole found beyond this is stepped over (connections
/// resume from their cursors) rather than queued behind the others.
pub(crate) const MAX_REPAIRING: usize = 1024;
/// Messages of one channel held while its hole is read; past this the channel gives up the
/// repair and steps over the hole.
const MAX_PARKED: usize = 4096;
/// Store reads for repairs in flight at once.
const CONCURRENCY: usize = 32;
/// A repair read that takes longer than this is abandoned (the hole is stepped over).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A hole to fill: messages of `channel` after `after`, up to the one that revealed it.
pub(crate) struct Job {
    pub id: u64,
    pub channel: Arc<str>,
    pub after: u64,
    pub limit: usize,
}

/// What the store had for a job (`None`: the read failed or timed out).
pub(crate) struct Done {
    pub id: u64,
    pub channel: Arc<str>,
    pub found: Option<Arc<Vec<StoredMessage>>>,
}

/// Reads the holes the fan-out loop hands over and sends back what it found.
pub(crate) async fn run(
    node: Arc<Node>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<Done>,
    mut stop: watch::Receiver<bool>,
) {
    let work = tokio_stream_of(jobs)
        .map(|job| {
            let node = node.clone();
            async move {
                let read = node
                    .reads
                    .read_range(&job.channel, job.after, job.limit, Instant::now());
                let found = match tokio::time::timeout(READ_TIMEOUT, read).await {
                    Ok(Ok(found)) => Some(found),
                    Ok(Err(e)) => {
                        tracing::warn!(channel = %job.channel, error = %e, "gap repair failed; subscribers will resume");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(channel = %job.channel, "gap repair read timed out; subscribers will resume");
                        None
                    }
                };
                Done {
                    id: job.id,
                    channel: job.channel,
                    found,
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .for_each(|d| {
            let done = done.clone();
            // The loop takes results as fast as it takes messages; if it is gone, so is
            // the node.
            async move {
                let _ = done.send(d).await;
            }
        });
    tokio::select! {
        _ = stop.changed() => {}
        _ = work => {}
    }
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A channel waiting for its hole to be read: the messages that arrived meanwhile, the
/// first being the one that revealed the hole.
struct Parked {
    id: u64,
    waiting: VecDeque<Arc<Message>>,
}

/// The fan-out loop's side of repairs: which channels wait, and what for.
pub(crate) struct Repairs {
    parked: HashMap<Arc<str>, Parked>,
    next_id: u64,
    jobs: mpsc::Sender<Job>,
}

impl Repairs {
    pub fn new(jobs: mpsc::Sender<Job>) -> Self {
        Self {
            parked: HashMap::new(),
            next_id: 0,
            jobs,
        }
    }

    /// Delivers `msg` unless its channel waits for a repair (then it waits too), starting a
    /// repair if it reveals a hole.
    pub fn offer(&mut self, node: &Node, msg: Arc<Message>, flush: &mut Vec<Arc<ConnQueue>>) {
        // Nearly always nothing waits: skip hashing the channel name then.
        let waiting = if self.parked.is_empty() {
            None
        } else {
            self.parked.get_mut(&msg.channel)
        };
        if let Some(p) = waiting {
            if p.waiting.len() < MAX_PARKED {
                p.waiting.push_back(msg);
                return;
            }
            // Too far behind to hold: step over the hole now (connections that would skip a
            // message resume from their cursors); the repair's answer is then ignored.
            Counters::bump(&node.counters.gap_skips);
            let held = self
                .parked
                .remove(&msg.channel)
                .map(|p| p.waiting)
                .unwrap_or_default();
            for m in held.into_iter().chain(std::iter::once(msg)) {
                deliver_over_holes(node, &m, flush);
            }
            return;
        }
        let Delivered::Gap { after } = node.hub.deliver(&msg, flush) else {
            return;
        };
        Counters::bump(&node.counters.gap_repairs);
        self.next_id += 1;
        let id = self.next_id;
        let job = Job {
            id,
            channel: msg.channel.clone(),
            after,
            limit: ((msg.seq - after - 1) as usize).min(MAX_REPAIR),
        };
        if self.parked.len() >= MAX_REPAIRING || self.jobs.try_send(job).is_err() {
            Counters::bump(&node.counters.gap_skips);
            deliver_over_holes(node, &msg, flush);
            return;
        }
        self.parked.insert(
            msg.channel.clone(),
            Parked {
                id,
                waiting: VecDeque::from([msg]),
            },
        );
    }

    /// Takes a repair's result: the missing messages go out, then those that waited.
    pub fn finish(&mut self, node: &Node, done: Done, flush: &mut Vec<Arc<ConnQueue>>) {
        let current = self
            .parked
            .get(&done.channel)
            .is_some_and(|p| p.id == done.id);
        if !current {
            return;
        }
        let Some(mut p) = self.parked.remove(&done.channel) else {
            return;
        };
        let Some(first) = p.waiting.pop_front() else {
            return;
        };
        if let Some(found) = &done.found {
            for m in found.iter().filter(|m| m.seq < first.seq) {
                node.hub
                    .deliver(&Message::from_stored(first.channel.clone(), m), flush);
            }
        }
        // Whatever the store could not fill is stepped over; a later hole among the waiting
        // messages starts a repair of its own.
        deliver_over_holes(node, &first, flush);
        for m in p.waiting {
            self.offer(node, m, flush);
        }
    }
}

/// Delivers `msg`, first moving its channel past any hole before it.
fn deliver_over_holes(node: &Node, msg: &Arc<Message>, flush: &mut Vec<Arc<ConnQueue>>) {
    if let Delivered::Gap { .. } = node.hub.deliver(msg, flush) {
        node.hub.skip_gap(msg);
        node.hub.deliver(msg, flush);
    }
}
