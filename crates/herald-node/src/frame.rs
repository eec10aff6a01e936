//! Turns queued items into SSE bytes for one connection, keeping the connection's cursor:
//! each reliable event gets an `id:` naming the position of every channel of the stream.

use crate::item::Item;
use crate::message::Message;
use bytes::Bytes;
use herald_proto::{encode_cursor_into, Position};
use herald_trace::Fanout;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most bytes framed into one write; the rest waits for the next.
pub(crate) const MAX_CHUNK: usize = 256 * 1024;

/// Per-connection cursor: the position of each channel of the stream that is known so far.
pub(crate) struct Positions {
    hashes: Vec<u64>,
    /// Index into `known` per channel of the stream.
    slot_of: Vec<Option<u16>>,
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
            .map(|i| self.known[i as usize].1)
    }

    pub fn set(&mut self, idx: u16, pos: Position) {
        let idx = idx as usize;
        if idx >= self.hashes.len() {
            return;
        }
        match self.slot_of[idx] {
            Some(i) => self.known[i as usize].1 = pos,
            None => {
                self.slot_of[idx] = Some(self.known.len() as u16);
                self.known.push((self.hashes[idx], pos));
            }
        }
    }

    fn single(&self) -> bool {
        self.hashes.len() == 1
    }

    /// An `id:` block with no event: where every channel of the stream starts. A client
    /// keeps it as its last event ID (EventSource does, without dispatching anything), so
    /// a stream that drops before its first event still resumes from its start.
    pub fn start_block(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 12 * self.known.len());
        self.write_id_line(&mut out);
        out.push(b'\n');
        out
    }

    fn write_id_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"id: ");
        encode_cursor_into(&self.known, out);
        out.push(b'\n');
    }

    /// Whether a reliable message continues this connection's position for its channel.
    fn accept(&mut self, m: &Message, idx: u16) -> Accept {
        if let Some(p) = self.get(idx) {
            // Epoch 0 is "before the channel's first message" and matches any epoch; another
            // non-zero epoch means the channel's log was recreated: follow the new one.
            if p.epoch == m.epoch || p.epoch == 0 {
                if p.epoch == m.epoch && m.seq <= p.seq {
                    return Accept::Skip;
                }
                if m.seq > p.seq + 1 {
                    return Accept::Gap;
                }
            }
        }
        self.set(
            idx,
            Position {
                epoch: m.epoch,
                seq: m.seq,
            },
        );
        Accept::Write
    }
}

enum Accept {
    Write,
    Skip,
    Gap,
}

/// What framing produced.
#[derive(Default)]
pub(crate) struct Framed {
    pub delivered: u64,
    /// A message went missing for this connection: end the stream so the client resumes.
    pub gap: bool,
    /// Traced messages in the bytes: written when the socket has taken them.
    pub traced: Vec<Arc<Fanout>>,
}

impl Framed {
    /// Notes what became of a traced message on this connection.
    fn trace(&mut self, m: &Message, accept: &Accept) {
        let Some(f) = &m.trace else { return };
        match accept {
            Accept::Write => self.traced.push(f.clone()),
            Accept::Skip => f.skipped(true),
            Accept::Gap => f.skipped(false),
        }
    }
}

/// What a single item framed without copying came to.
enum Shared {
    Write(Bytes),
    Skip,
    Gap,
}

impl Shared {
    fn accept(&self) -> Accept {
        match self {
            Shared::Write(_) => Accept::Write,
            Shared::Skip => Accept::Skip,
            Shared::Gap => Accept::Gap,
        }
    }
}

/// A single item framed without copying, when possible: a reliable event of a one-channel
/// stream is the message's shared `single` bytes.
fn frame_shared(item: &Item, positions: &mut Positions) -> Option<Shared> {
    match item {
        Item::Reliable(m, idx) if positions.single() => Some(match positions.accept(m, *idx) {
            Accept::Write => Shared::Write(m.single.clone()),
            Accept::Skip => Shared::Skip,
            Accept::Gap => Shared::Gap,
        }),
        Item::Ephemeral(m, ..) => Some(Shared::Write(m.body.clone())),
        Item::Raw(b) => Some(Shared::Write(b.clone())),
        _ => None,
    }
}

/// Frames the front of the queue for one write: a lone item as its shared bytes when it can
/// (no copy), otherwise everything up to [`MAX_CHUNK`] into one buffer. Empty bytes when
/// nothing was written (duplicates only, or a gap).
pub(crate) fn frame_next(items: &mut VecDeque<Item>, positions: &mut Positions) -> (Bytes, Framed) {
    if items.len() == 1 {
        if let Some(shared) = items.front().and_then(|it| frame_shared(it, positions)) {
            let mut framed = Framed::default();
            let counted = match items.pop_front() {
                Some(Item::Reliable(m, _) | Item::Ephemeral(m, ..)) => {
                    framed.trace(&m, &shared.accept());
                    true
                }
                _ => false,
            };
            return match shared {
                Shared::Write(b) => {
                    framed.delivered = u64::from(counted);
                    (b, framed)
                }
                Shared::Skip => (Bytes::new(), framed),
                Shared::Gap => {
                    items.clear();
                    framed.gap = true;
                    (Bytes::new(), framed)
                }
            };
        }
    }
    let mut out = Vec::new();
    let framed = frame_into(items, positions, &mut out);
    (Bytes::from(out), framed)
}

/// Frames items from the front of `items` into `out` until `out` reaches [`MAX_CHUNK`].
fn frame_into(items: &mut VecDeque<Item>, positions: &mut Positions, out: &mut Vec<u8>) -> Framed {
    let mut f = Framed::default();
    while let Some(item) = items.pop_front() {
        match item {
            Item::Reliable(m, idx) => {
                let accept = positions.accept(&m, idx);
                f.trace(&m, &accept);
                match accept {
                    Accept::Write => {
                        f.delivered += 1;
                        if positions.single() {
                            out.extend_from_slice(&m.single);
                        } else {
                            positions.write_id_line(out);
                            out.extend_from_slice(&m.body);
                        }
                    }
                    Accept::Skip => {}
                    Accept::Gap => {
                        f.gap = true;
                        items.clear();
                        return f;
                    }
                }
            }
            Item::Ephemeral(m, ..) => {
                f.delivered += 1;
                f.trace(&m, &Accept::Write);
                out.extend_from_slice(&m.body);
            }
            Item::Position(idx, pos) => positions.set(idx, pos),
            Item::Reset(idx, pos, body) => {
                positions.set(idx, pos);
                positions.write_id_line(out);
                out.extend_from_slice(&body);
            }
            Item::Raw(b) => out.extend_from_slice(&b),
        }
        if out.len() >= MAX_CHUNK {
            break;
        }
    }
    f
}
