//! Brings a new stream up to date, channel by channel: decides where each channel starts
//! (resume position, live head, or a `herald:reset`), replays what was missed — from the
//! ring when it reaches back far enough, from the store otherwise — and joins live fan-out
//! at the exact seam.

use crate::hub::{Attached, Slot};
use crate::message::Message;
use crate::queue::{ConnQueue, Item};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use herald_proto::Position;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Store reads in a row that find nothing to replay before the stream gives up (it closes
/// and the client resumes).
const MAX_EMPTY_PAGES: u32 = 64;

/// Why a channel's position was reset.
#[derive(Clone, Copy, Debug)]
enum ResetReason {
    /// Older than retention.
    Retention,
    /// From a log that no longer exists.
    Epoch,
    /// Beyond anything this channel ever had.
    Ahead,
}

impl ResetReason {
    fn as_str(self) -> &'static str {
        match self {
            ResetReason::Retention => "retention",
            ResetReason::Epoch => "epoch",
            ResetReason::Ahead => "ahead",
        }
    }
}

/// One channel of a new stream: where the client says it is, if anywhere.
pub(crate) struct Join {
    pub idx: u16,
    pub slot: Arc<Slot>,
    pub resume: Option<Position>,
    /// The client named no position: `resume` is the head as read just now.
    pub live: bool,
    /// Keeps the slot from the idle sweep until this join is over.
    pub _claim: crate::hub::Claim,
}

/// Runs the joins of one stream in order. Ends early if the stream closes.
pub(crate) async fn run(node: Arc<Node>, queue: Arc<ConnQueue>, joins: Vec<Join>) {
    for j in joins {
        if let Err(e) = join_channel(&node, &queue, &j).await {
            tracing::warn!(channel = %j.slot.channel, error = %e, "replay failed; closing stream");
            queue.close(crate::queue::CloseReason::Gap, false);
            return;
        }
        if queue.is_closed() {
            return;
        }
    }
}

async fn join_channel(
    node: &Node,
    queue: &Arc<ConnQueue>,
    j: &Join,
) -> Result<(), crate::ReadError> {
    // Retention and epochs are the store's word, so every join asks it where the log
    // stands (a resume inside the log a moment-old read saw takes that read); what the
    // ring can serve then saves the range read.
    let (meta, meta_read) = match j.resume {
        Some(at) => {
            node.reads
                .resume_meta(&j.slot.channel, j.slot.created, at)
                .await?
        }
        None => {
            node.reads
                .channel_meta(&j.slot.channel, j.slot.created)
                .await?
        }
    };
    let mut reset_to = None;
    let start = match (j.resume, meta) {
        (None, Some(m)) => Position {
            epoch: m.epoch,
            seq: m.last_seq,
        },
        (None, None) => Position::default(),
        (Some(p), None) => {
            if p != Position::default() {
                reset_to = Some(ResetReason::Epoch);
            }
            Position::default()
        }
        (Some(p), Some(m)) => {
            let head = Position {
                epoch: m.epoch,
                seq: m.last_seq,
            };
            let from_start = p.epoch == 0 && p.seq == 0;
            if !from_start && p.epoch != m.epoch {
                reset_to = Some(ResetReason::Epoch);
                head
            } else if p.seq > m.last_seq {
                reset_to = Some(ResetReason::Ahead);
                head
            } else if p.seq + 1 < m.first_seq {
                reset_to = Some(ResetReason::Retention);
                head
            } else {
                Position {
                    epoch: m.epoch,
                    seq: p.seq,
                }
            }
        }
    };
    match reset_to {
        Some(reason) => reset(node, queue, j, start, reason),
        None => {
            queue.push_unbounded(Item::Position(j.idx, start));
        }
    }
    let mut pos = start;
    let mut from_store = false;
    if node.hub.ring_covers(&j.slot, pos) {
        match node.hub.attach(&j.slot, queue, j.idx, pos) {
            Attached::Live => {
                if meta.is_some_and(|m| pos.seq < m.last_seq) {
                    Counters::bump(&node.counters.replays_ring);
                }
                return Ok(());
            }
            Attached::Closed => return Ok(()),
            Attached::NeedStore => {}
        }
    }
    let mut caught_up = meta.is_none_or(|m| pos.seq >= m.last_seq);
    let mut empty_pages = 0;
    // The newest messages replayed, for the ring of a channel that has none yet.
    let mut recent: VecDeque<Arc<Message>> = VecDeque::new();
    loop {
        if caught_up {
            node.hub.backfill(&j.slot, &recent, pos);
            match node.hub.attach(&j.slot, queue, j.idx, pos) {
                Attached::Live => break,
                Attached::Closed => return Ok(()),
                Attached::NeedStore => {}
            }
        }
        // Pages must see everything the meta read saw: only reads started after it count.
        let page = node
            .reads
            .read_range(&j.slot.channel, pos.seq, node.config.replay_page, meta_read)
            .await?;
        caught_up = page.len() < node.config.replay_page;
        if page.is_empty() {
            empty_pages += 1;
            if empty_pages > MAX_EMPTY_PAGES {
                return Err(crate::ReadError::NoProgress(
                    "the store keeps answering nothing past the position",
                ));
            }
            // Nothing after `pos`, yet the log goes further: those messages expired (a store
            // with row TTLs drops them without moving the channel's first seq). Say so, and
            // go on from the head.
            let (fresh, _) = node
                .reads
                .channel_meta(&j.slot.channel, std::time::Instant::now())
                .await?;
            if let Some(m) = fresh {
                if m.epoch == pos.epoch && m.last_seq > pos.seq {
                    pos = Position {
                        epoch: m.epoch,
                        seq: m.last_seq,
                    };
                    reset(node, queue, j, pos, ResetReason::Retention);
                }
            }
            caught_up = true;
            tokio::task::yield_now().await;
            continue;
        }
        empty_pages = 0;
        from_store = true;
        for m in page.iter() {
            if m.seq != pos.seq + 1 {
                // Trimmed while we read: say so rather than skip silently.
                let head = Position {
                    epoch: m.epoch,
                    seq: m.seq - 1,
                };
                reset(node, queue, j, head, ResetReason::Retention);
            }
            let msg = Message::from_stored(j.slot.channel.clone(), m);
            if node.config.ring_cap > 0 {
                if recent.len() == node.config.ring_cap {
                    recent.pop_front();
                }
                recent.push_back(msg.clone());
            }
            if !queue.push_wait(Item::Reliable(msg, j.idx)).await {
                return Ok(());
            }
            node.counters.replayed_messages.fetch_add(1, Relaxed);
            pos = Position {
                epoch: m.epoch,
                seq: m.seq,
            };
        }
    }
    if from_store {
        Counters::bump(&node.counters.replays_store);
    }
    Ok(())
}

fn reset(node: &Node, queue: &ConnQueue, j: &Join, to: Position, reason: ResetReason) {
    Counters::bump(&node.counters.resets);
    let data = serde_json::json!({
        "channel": &*j.slot.channel,
        "epoch": to.epoch,
        "seq": to.seq,
        "reason": reason.as_str(),
    });
    let mut body = Vec::with_capacity(128);
    herald_proto::write_event(
        &mut body,
        None,
        Some("herald:reset"),
        data.to_string().as_bytes(),
    );
    queue.push_unbounded(Item::Reset(j.idx, to, Bytes::from(body)));
}
