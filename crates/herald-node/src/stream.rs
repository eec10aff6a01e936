//! The response body of one SSE connection: drains the connection's queue and frames
//! everything queued into one chunk, writing each reliable event's `id:` cursor.

use crate::queue::{CloseReason, ConnQueue, Drained, Item};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use herald_proto::{encode_cursor_into, Position};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Most bytes put into one chunk; the rest waits for the next poll.
const MAX_CHUNK: usize = 256 * 1024;

/// Per-connection cursor: the position of each channel of the stream that is known so far.
pub(crate) struct Positions {
    hashes: Vec<u64>,
    /// Index into `known` per channel of the stream.
    slot_of: Vec<Option<usize>>,
    known: Vec<(u64, Position)>,
}

impl Positions {
    pub fn new(hashes: Vec<u64>) -> Self {
        let n = hashes.len();
        Self {
            hashes,
            slot_of: vec![None; n],
            known: Vec::with_capacity(n),
        }
    }

    pub fn get(&self, idx: u16) -> Option<Position> {
        self.slot_of
            .get(idx as usize)
            .copied()
            .flatten()
            .map(|i| self.known[i].1)
    }

    pub fn set(&mut self, idx: u16, pos: Position) {
        let idx = idx as usize;
        if idx >= self.hashes.len() {
            return;
        }
        match self.slot_of[idx] {
            Some(i) => self.known[i].1 = pos,
            None => {
                self.slot_of[idx] = Some(self.known.len());
                self.known.push((self.hashes[idx], pos));
            }
        }
    }

    fn write_id_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        encode_cursor_into(&self.known, out);
        out.push(b'\n');
    }
}

/// Releases the connection's subscriptions when hyper drops the body.
pub(crate) struct StreamGuard {
    pub node: Arc<Node>,
    pub queue: Arc<ConnQueue>,
    pub slots: Vec<Arc<crate::hub::Slot>>,
    pub replay: Option<tokio::task::AbortHandle>,
    pub conn_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.queue.close(CloseReason::ClientGone, false);
        if let Some(r) = self.replay.take() {
            r.abort();
        }
        for s in &self.slots {
            self.node.hub.detach(s, &self.queue);
        }
        self.node.registry.remove(self.conn_id);
        self.node.counters.connections.fetch_sub(1, Relaxed);
    }
}

/// The body of a `text/event-stream` response.
pub struct SseBody {
    pub(crate) guard: StreamGuard,
    pub(crate) positions: Positions,
    pub(crate) scratch: VecDeque<Item>,
    pub(crate) done: bool,
}

impl SseBody {
    /// Frames the drained items; `None` when none of them writes anything.
    fn frame(&mut self) -> Option<Bytes> {
        let single = self.positions.hashes.len() == 1;
        // The common case in fan-out: one reliable event on a one-channel stream is sent as
        // the shared bytes, with no copy.
        if single && self.scratch.len() == 1 {
            if let Some(Item::Reliable(m, idx)) = self.scratch.front() {
                let (m, idx) = (m.clone(), *idx);
                self.scratch.clear();
                return match self.accept(&m, idx) {
                    Accept::Write => Some(m.single.clone()),
                    Accept::Skip => None,
                    Accept::Gap => {
                        self.gap();
                        None
                    }
                };
            }
        }
        let mut out: Vec<u8> = Vec::new();
        let mut delivered = 0u64;
        while let Some(item) = self.scratch.pop_front() {
            match item {
                Item::Reliable(m, idx) => match self.accept(&m, idx) {
                    Accept::Write => {
                        delivered += 1;
                        if single {
                            out.extend_from_slice(&m.single);
                        } else {
                            self.positions.write_id_line(&mut out);
                            out.extend_from_slice(&m.body);
                        }
                    }
                    Accept::Skip => {}
                    Accept::Gap => {
                        self.gap();
                        break;
                    }
                },
                Item::Ephemeral(m, _) => {
                    delivered += 1;
                    out.extend_from_slice(&m.body);
                }
                Item::Position(idx, pos) => self.positions.set(idx, pos),
                Item::Reset(idx, pos, body) => {
                    self.positions.set(idx, pos);
                    self.positions.write_id_line(&mut out);
                    out.extend_from_slice(&body);
                }
                Item::Raw(b) => out.extend_from_slice(&b),
            }
            if out.len() >= MAX_CHUNK {
                break;
            }
        }
        self.guard
            .node
            .counters
            .deliveries
            .fetch_add(delivered, Relaxed);
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    fn accept(&mut self, m: &crate::message::Message, idx: u16) -> Accept {
        let next = Position {
            epoch: m.epoch,
            seq: m.seq,
        };
        match self.positions.get(idx) {
            Some(p) if p.epoch == m.epoch || p.epoch == 0 => {
                if m.seq <= p.seq && p.epoch == m.epoch {
                    return Accept::Skip;
                }
                if m.seq > p.seq + 1 {
                    return Accept::Gap;
                }
            }
            // Another epoch: the channel's log was recreated; follow the new one.
            Some(_) => {}
            // No position yet cannot happen for attached channels; be safe and follow.
            None => {}
        }
        self.positions.set(idx, next);
        Accept::Write
    }

    /// A message went missing for this connection: end the stream so the client resumes
    /// from its cursor and replay fills the hole.
    fn gap(&mut self) {
        Counters::bump(&self.guard.node.counters.gap_disconnects);
        self.scratch.clear();
        self.guard.queue.close(CloseReason::Gap, false);
        self.done = true;
    }
}

enum Accept {
    Write,
    Skip,
    Gap,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.scratch.is_empty() {
                match this.guard.queue.drain(cx, &mut this.scratch) {
                    Drained::Items => {}
                    Drained::Pending => return Poll::Pending,
                    Drained::Ended => return Poll::Ready(None),
                }
            }
            let framed = this.frame();
            if this.scratch.is_empty() {
                let buf = std::mem::take(&mut this.scratch);
                this.guard.queue.recycle(buf);
            }
            if let Some(bytes) = framed {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
