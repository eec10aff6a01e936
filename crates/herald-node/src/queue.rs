//! The bounded outbound queue of one SSE connection. Fan-out pushes shared messages into it
//! without waiting; the connection's body drains everything queued into one write.

use crate::message::Message;
use bytes::Bytes;
use herald_proto::Position;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::sync::Notify;

/// What a connection will write, in order.
pub enum Item {
    /// A reliable message of the stream's channel number `.1`.
    Reliable(Arc<Message>, u16),
    Ephemeral(Arc<Message>, u16),
    /// Set the starting position of a channel; writes nothing.
    Position(u16, Position),
    /// Set a channel's position and write a `herald:reset` event (`body` has no `id:`).
    Reset(u16, Position, Bytes),
    /// Pre-framed bytes (heartbeats, `retry:`).
    Raw(Bytes),
}

/// Result of a non-waiting push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// An ephemeral message replaced an older undelivered one with the same key.
    Conflated,
    /// Dropped (ephemeral on a full queue, or the queue is closed).
    Dropped,
    /// A reliable message did not fit: the connection is closed so the client resumes.
    Overflow,
}

/// Why the queue was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Shutdown,
    SlowConsumer,
    Stalled,
    Gap,
    ClientGone,
}

struct Inner {
    items: VecDeque<Item>,
    reader: Option<Waker>,
    writer: Option<Waker>,
    closed: Option<CloseReason>,
    /// When the reader last took items; with items pending for long, the peer is stalled.
    last_drain: Instant,
}

/// Outbound queue of one connection.
pub struct ConnQueue {
    inner: Mutex<Inner>,
    cap: usize,
    /// Drops the TCP connection even while its writes are blocked on a peer that reads nothing.
    kill: Arc<Notify>,
}

/// What a drain found.
pub enum Drained {
    /// Items moved into the caller's buffer.
    Items,
    Pending,
    Ended,
}

impl ConnQueue {
    pub fn new(cap: usize, kill: Arc<Notify>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                reader: None,
                writer: None,
                closed: None,
                last_drain: Instant::now(),
            }),
            cap: cap.max(1),
            kill,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Pushes a live item without waiting; what happens when full depends on the item.
    pub fn push(&self, item: Item) -> Pushed {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return Pushed::Dropped;
        }
        if let Item::Ephemeral(m, idx) = &item {
            if let Some(key) = &m.conflation_key {
                let found = g.items.iter_mut().find(|queued| {
                    matches!(queued, Item::Ephemeral(q, qidx)
                        if qidx == idx && q.conflation_key.as_deref() == Some(&**key))
                });
                if let Some(slot) = found {
                    *slot = item;
                    return Pushed::Conflated;
                }
            }
        }
        if g.items.len() >= self.cap {
            return match item {
                Item::Reliable(..) | Item::Reset(..) | Item::Position(..) => {
                    g.closed = Some(CloseReason::SlowConsumer);
                    let w = g.reader.take();
                    drop(g);
                    self.kill.notify_one();
                    if let Some(w) = w {
                        w.wake();
                    }
                    Pushed::Overflow
                }
                Item::Ephemeral(..) | Item::Raw(_) => Pushed::Dropped,
            };
        }
        g.items.push_back(item);
        let w = g.reader.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        Pushed::Queued
    }

    /// Pushes regardless of the bound (replay of a bounded ring at attach time).
    pub fn push_unbounded(&self, item: Item) -> bool {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return false;
        }
        g.items.push_back(item);
        let w = g.reader.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        true
    }

    /// Waits for room, then pushes (replay from the store). `false` if the queue closed.
    pub async fn push_wait(&self, item: Item) -> bool {
        let mut item = Some(item);
        poll_fn(|cx| {
            let mut g = self.inner.lock();
            if g.closed.is_some() {
                return Poll::Ready(false);
            }
            if g.items.len() >= self.cap {
                g.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            if let Some(it) = item.take() {
                g.items.push_back(it);
            }
            let w = g.reader.take();
            drop(g);
            if let Some(w) = w {
                w.wake();
            }
            Poll::Ready(true)
        })
        .await
    }

    /// Moves every queued item into `into` (which must be empty), or registers the reader.
    pub fn drain(&self, cx: &mut Context<'_>, into: &mut VecDeque<Item>) -> Drained {
        let mut g = self.inner.lock();
        if g.items.is_empty() {
            if g.closed.is_some() {
                return Drained::Ended;
            }
            g.reader = Some(cx.waker().clone());
            return Drained::Pending;
        }
        std::mem::swap(&mut g.items, into);
        g.last_drain = Instant::now();
        let w = g.writer.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        Drained::Items
    }

    /// Gives back an emptied buffer so the queue reuses its allocation.
    pub fn recycle(&self, mut buf: VecDeque<Item>) {
        buf.clear();
        let mut g = self.inner.lock();
        if g.items.is_empty() && g.items.capacity() < buf.capacity() {
            std::mem::swap(&mut g.items, &mut buf);
        }
        // Let idle connections give memory back after a burst.
        if g.items.is_empty() && g.items.capacity() > 64 {
            g.items.shrink_to(16);
        }
    }

    /// Ends the stream after what is queued has been written (or at once if `kill`).
    pub fn close(&self, reason: CloseReason, kill: bool) {
        let mut g = self.inner.lock();
        if g.closed.is_none() {
            g.closed = Some(reason);
        }
        let r = g.reader.take();
        let w = g.writer.take();
        drop(g);
        if kill {
            self.kill.notify_one();
        }
        if let Some(r) = r {
            r.wake();
        }
        if let Some(w) = w {
            w.wake();
        }
    }

    /// True when items have waited longer than `limit` without the reader taking any.
    pub fn stalled(&self, limit: std::time::Duration) -> bool {
        let g = self.inner.lock();
        !g.items.is_empty() && g.last_drain.elapsed() > limit
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_fabric::FabricMessage;

    fn msg(seq: u64, key: Option<&str>) -> Arc<Message> {
        Message::from_fabric(&FabricMessage {
            channel: Arc::from("live:1"),
            epoch: if seq == 0 { 0 } else { 1 },
            seq,
            ts_ms: 1,
            event: Arc::from("message"),
            data: Bytes::from_static(b"{}"),
            conflation_key: key.map(Arc::from),
        })
    }

    #[test]
    fn reliable_overflow_closes_and_kills() {
        let kill = Arc::new(Notify::new());
        let q = ConnQueue::new(2, kill);
        assert_eq!(q.push(Item::Reliable(msg(1, None), 0)), Pushed::Queued);
        assert_eq!(q.push(Item::Reliable(msg(2, None), 0)), Pushed::Queued);
        assert_eq!(q.push(Item::Reliable(msg(3, None), 0)), Pushed::Overflow);
        assert!(q.is_closed());
        assert_eq!(q.push(Item::Reliable(msg(4, None), 0)), Pushed::Dropped);
    }

    #[test]
    fn ephemeral_drops_when_full_and_conflates_by_key() {
        let q = ConnQueue::new(2, Arc::new(Notify::new()));
        assert_eq!(
            q.push(Item::Ephemeral(msg(0, Some("k")), 0)),
            Pushed::Queued
        );
        assert_eq!(
            q.push(Item::Ephemeral(msg(0, Some("k")), 0)),
            Pushed::Conflated
        );
        assert_eq!(q.push(Item::Ephemeral(msg(0, None), 0)), Pushed::Queued);
        assert_eq!(q.push(Item::Ephemeral(msg(0, None), 0)), Pushed::Dropped);
        assert_eq!(q.len(), 2);
        assert!(!q.is_closed());
    }
}
