//! The bounded outbound queue of one SSE connection, and its cursor. Fan-out pushes shared
//! messages without waiting; when the connection owns its socket and nothing is queued, the
//! push writes straight to the socket (one syscall, no task wake-up). Otherwise the
//! connection's writer takes everything queued as one chunk.

use crate::frame::{frame_next, Positions};
pub use crate::item::{Item, SlowPolicy};
use crate::message::Message;
use crate::stats::Counters;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The key a queued ephemeral message is replaced by: its `conflation_key`, or under the
/// `conflate` policy its event name.
fn conflation_of(m: &Message, policy: SlowPolicy) -> Option<(bool, &str)> {
    match (&m.conflation_key, policy) {
        (Some(k), _) => Some((true, k)),
        (None, SlowPolicy::Conflate) => Some((false, &m.event)),
        _ => None,
    }
}

/// Result of a non-waiting push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// An ephemeral message replaced an older undelivered one with the same key.
    Conflated,
    /// Dropped (ephemeral on a full queue, or the queue is closed).
    Dropped,
    /// An ephemeral message on a full queue took the place of the oldest queued one.
    Evicted,
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

/// What the writer gets.
pub enum Chunk {
    Bytes(Bytes),
    Ended,
}

/// How a stream ends abruptly: the hyper connection's kill switch, or our own socket.
pub enum Transport {
    Hyper(Arc<Notify>),
    Socket(TcpStream),
}

struct Inner {
    items: VecDeque<Item>,
    positions: Positions,
    /// The unwritten rest of a direct write.
    pending: Option<Bytes>,
    /// The writer holds a chunk it has not finished writing.
    writing: bool,
    /// The fan-out loop will write what is queued once its current batch is framed.
    flush_due: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
    closed: Option<CloseReason>,
    /// When the writer last took bytes; with bytes pending for long, the peer is stalled.
    last_drain: Instant,
    /// Traced messages in bytes the socket has not taken yet (nearly always empty).
    traced_unwritten: Vec<Arc<herald_trace::Fanout>>,
}

/// Outbound queue of one connection.
pub struct ConnQueue {
    inner: Mutex<Inner>,
    cap: usize,
    transport: Transport,
    counters: Arc<Counters>,
    /// When the stream is asked to reconnect (the node's maximum connection lifetime).
    expires: Option<Instant>,
    /// The subscriber's user (the token's `sub`), for presence.
    user: Option<Arc<str>>,
}

impl ConnQueue {
    pub(crate) fn new(
        cap: usize,
        transport: Transport,
        positions: Positions,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                positions,
                pending: None,
                writing: false,
                flush_due: false,
                reader: None,
                writer: None,
                closed: None,
                last_drain: Instant::now(),
                traced_unwritten: Vec::new(),
            }),
            cap: cap.max(1),
            transport,
            counters,
            expires: None,
            user: None,
        }
    }

    /// Names the stream's user (for presence).
    pub(crate) fn with_user(mut self, user: Option<Arc<str>>) -> Self {
        self.user = user;
        self
    }

    pub(crate) fn user(&self) -> Option<Arc<str>> {
        self.user.clone()
    }

    /// Sets when the stream reaches its maximum lifetime.
    pub(crate) fn with_expiry(mut self, at: Option<Instant>) -> Self {
        self.expires = at;
        self
    }

    pub(crate) fn expires(&self) -> Option<Instant> {
        self.expires
    }

    /// Items the queue holds before a reliable push counts as overflow.
    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn socket(&self) -> Option<&TcpStream> {
        match &self.transport {
            Transport::Socket(s) => Some(s),
            Transport::Hyper(_) => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Pushes a live item without waiting; what happens when full depends on the item.
    /// On an idle socket connection the item is written at once.
    pub fn push(&self, item: Item) -> Pushed {
        self.push_mode(item, false).0
    }

    /// Like [`push`](Self::push) for the fan-out loop: on an idle socket connection the item
    /// is only queued, and the second value says the caller must [`flush`](Self::flush) this
    /// connection after its batch, so a batch of messages leaves in one write.
    pub fn push_deferred(&self, item: Item) -> (Pushed, bool) {
        self.push_mode(item, true)
    }

    fn push_mode(&self, item: Item, defer: bool) -> (Pushed, bool) {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return (Pushed::Dropped, false);
        }
        let idle = g.items.is_empty() && g.pending.is_none() && !g.writing;
        if idle && !defer && self.socket().is_some() {
            // Nothing queued or being written: the item goes to the socket right now (under
            // this lock, so nothing waits and the stall clock need not start).
            g.items.push_back(item);
            self.flush_locked(g);
            return (Pushed::Queued, false);
        }
        if let Item::Ephemeral(m, idx, policy) = &item {
            if let Some(key) = conflation_of(m, *policy) {
                let found = g.items.iter_mut().find(|queued| {
                    matches!(queued, Item::Ephemeral(q, qidx, _)
                        if qidx == idx && conflation_of(q, *policy) == Some(key))
                });
                if let Some(slot) = found {
                    *slot = item;
                    return (Pushed::Conflated, false);
                }
            }
        }
        if g.items.len() >= self.cap {
            let policy = match &item {
                Item::Ephemeral(_, _, p) => *p,
                Item::Raw(_) => return (Pushed::Dropped, false),
                _ => SlowPolicy::Disconnect,
            };
            match policy {
                SlowPolicy::Disconnect => {
                    g.closed = Some(CloseReason::SlowConsumer);
                    drop(g);
                    self.wake_all();
                    self.abort();
                    return (Pushed::Overflow, false);
                }
                SlowPolicy::DropNewest => return (Pushed::Dropped, false),
                SlowPolicy::DropOldest | SlowPolicy::Conflate => {
                    let Some(oldest) = g
                        .items
                        .iter()
                        .position(|q| matches!(q, Item::Ephemeral(..)))
                    else {
                        return (Pushed::Dropped, false);
                    };
                    g.items.remove(oldest);
                    g.items.push_back(item);
                    return (Pushed::Evicted, false);
                }
            }
        }
        let flush_later = defer && self.socket().is_some() && (idle || g.flush_due);
        if !flush_later {
            start_waiting(&mut g);
        }
        g.items.push_back(item);
        if flush_later {
            let first = !g.flush_due;
            g.flush_due = true;
            return (Pushed::Queued, first);
        }
        let w = g.reader.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        (Pushed::Queued, false)
    }

    /// Writes everything queued in one syscall (the fan-out loop, after its batch); what the
    /// socket does not take is left to the connection's writer.
    pub fn flush(&self) {
        let mut g = self.inner.lock();
        g.flush_due = false;
        self.flush_locked(g);
    }

    fn flush_locked(&self, mut g: parking_lot::MutexGuard<'_, Inner>) {
        let Some(sock) = self.socket() else { return };
        if g.closed.is_some() || g.writing || g.pending.is_some() || g.items.is_empty() {
            return;
        }
        let framed = self.take_framed(&mut g);
        // Items were taken: a replay waiting in `push_wait` for room may go on, as when the
        // writer takes them (`poll_chunk`). Nothing else would wake it: the writer then finds
        // the queue empty and sleeps, and the stream stays open on heartbeats with its replay
        // stalled (the stall check sees nothing waiting).
        let room = g.writer.take();
        let Some(bytes) = framed else {
            let closed = g.closed.is_some();
            drop(g);
            if let Some(w) = room {
                w.wake();
            }
            if closed {
                self.wake_all();
            }
            return;
        };
        match sock.try_write(&bytes) {
            Ok(n) if n == bytes.len() => written(&mut g.traced_unwritten),
            Ok(n) => g.pending = Some(bytes.slice(n..)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => g.pending = Some(bytes),
            Err(_) => g.closed = Some(CloseReason::ClientGone),
        }
        if g.pending.is_some() {
            g.last_drain = Instant::now();
        }
        // Anything left (pending bytes, items beyond one chunk, a close) is the writer's.
        let needs_writer = g.pending.is_some() || g.closed.is_some() || !g.items.is_empty();
        let w = if needs_writer { g.reader.take() } else { None };
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        if let Some(w) = room {
            w.wake();
        }
    }

    /// Frames the next write out of the queue and counts its deliveries; `None` when it
    /// wrote nothing (duplicates only) or found a gap, which closes the stream.
    fn take_framed(&self, g: &mut Inner) -> Option<Bytes> {
        let (bytes, mut framed) = frame_next(&mut g.items, &mut g.positions);
        if !framed.traced.is_empty() {
            g.traced_unwritten.append(&mut framed.traced);
        }
        if framed.delivered > 0 {
            self.counters
                .deliveries
                .fetch_add(framed.delivered, Relaxed);
        }
        if framed.gap {
            Counters::bump(&self.counters.gap_disconnects);
            g.closed = Some(CloseReason::Gap);
        }
        (!bytes.is_empty()).then_some(bytes)
    }

    /// Pushes regardless of the bound (replay of a bounded ring at attach time).
    pub fn push_unbounded(&self, item: Item) -> bool {
        let mut g = self.inner.lock();
        if g.closed.is_some() {
            return false;
        }
        start_waiting(&mut g);
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
                start_waiting(&mut g);
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

    /// The next bytes to write: what is left of a direct write, else everything queued,
    /// framed into one chunk. Registers the writer's waker when there is nothing.
    pub fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Chunk> {
        let mut g = self.inner.lock();
        if g.writing {
            // The writer is back: its last chunk was taken by the socket.
            written(&mut g.traced_unwritten);
        }
        loop {
            if let Some(p) = g.pending.take() {
                g.writing = true;
                g.last_drain = Instant::now();
                return Poll::Ready(Chunk::Bytes(p));
            }
            if g.items.is_empty() {
                g.writing = false;
                if g.items.capacity() > 64 {
                    // Give memory back after a burst.
                    g.items = VecDeque::new();
                }
                if g.closed.is_some() {
                    return Poll::Ready(Chunk::Ended);
                }
                g.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            g.last_drain = Instant::now();
            let framed = self.take_framed(&mut g);
            if let Some(w) = g.writer.take() {
                w.wake();
            }
            let Some(bytes) = framed else { continue };
            g.writing = true;
            return Poll::Ready(Chunk::Bytes(bytes));
        }
    }

    fn wake_all(&self) {
        let mut g = self.inner.lock();
        let r = g.reader.take();
        let w = g.writer.take();
        drop(g);
        if let Some(r) = r {
            r.wake();
        }
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Drops the connection even while its writes are blocked.
    fn abort(&self) {
        match &self.transport {
            Transport::Hyper(kill) => kill.notify_one(),
            Transport::Socket(s) => shutdown_socket(s),
        }
    }

    /// Ends the stream after what is queued has been written (or at once if `kill`).
    pub fn close(&self, reason: CloseReason, kill: bool) {
        {
            let mut g = self.inner.lock();
            if g.closed.is_none() {
                g.closed = Some(reason);
            }
        }
        if kill {
            self.abort();
        }
        self.wake_all();
    }

    /// True when bytes have waited longer than `limit` without the writer taking any.
    pub fn stalled(&self, limit: std::time::Duration) -> bool {
        let g = self.inner.lock();
        // Items the fan-out loop is about to write are not waiting on the peer.
        let waiting = (!g.items.is_empty() && !g.flush_due) || g.pending.is_some() || g.writing;
        waiting && g.last_drain.elapsed() > limit
    }

    /// Marks the writer's progress (a slow but moving peer is not stalled).
    pub fn progressed(&self) {
        self.inner.lock().last_drain = Instant::now();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }
}

/// The socket took the bytes of these traced messages.
fn written(traced: &mut Vec<Arc<herald_trace::Fanout>>) {
    for f in traced.drain(..) {
        f.written();
    }
}

/// Data is about to wait in a drained queue: the stall clock starts now, not at the last time
/// the writer happened to run (direct writes from the fan-out never involve the writer).
fn start_waiting(g: &mut Inner) {
    if g.items.is_empty() && g.pending.is_none() && !g.writing {
        g.last_drain = Instant::now();
    }
}

/// Ends both directions at once, waking a writer blocked on a full send buffer.
fn shutdown_socket(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_fabric::FabricMessage;
    use herald_proto::Position;

    fn msg(seq: u64, key: Option<&str>) -> Arc<Message> {
        Message::from_fabric(
            &FabricMessage {
                channel: Arc::from("live:1"),
                epoch: if seq == 0 { 0 } else { 1 },
                seq,
                ts_ms: 1,
                event: Arc::from("message"),
                data: Bytes::from_static(b"{}"),
                conflation_key: key.map(Arc::from),
                trace: None,
                sent_us: 0,
            },
            None,
        )
    }

    fn queue(cap: usize) -> ConnQueue {
        ConnQueue::new(
            cap,
            Transport::Hyper(Arc::new(Notify::new())),
            Positions::new(vec![herald_proto::channel_hash("live:1")]),
            Arc::default(),
        )
    }

    #[test]
    fn reliable_overflow_closes() {
        let q = queue(2);
        assert_eq!(q.push(Item::Reliable(msg(1, None), 0)), Pushed::Queued);
        assert_eq!(q.push(Item::Reliable(msg(2, None), 0)), Pushed::Queued);
        assert_eq!(q.push(Item::Reliable(msg(3, None), 0)), Pushed::Overflow);
        assert!(q.is_closed());
        assert_eq!(q.push(Item::Reliable(msg(4, None), 0)), Pushed::Dropped);
    }

    #[test]
    fn ephemeral_drops_when_full_and_conflates_by_key() {
        let q = queue(2);
        let eph = |key, policy| Item::Ephemeral(msg(0, key), 0, policy);
        let newest = SlowPolicy::DropNewest;
        assert_eq!(q.push(eph(Some("k"), newest)), Pushed::Queued);
        assert_eq!(q.push(eph(Some("k"), newest)), Pushed::Conflated);
        assert_eq!(q.push(eph(None, newest)), Pushed::Queued);
        assert_eq!(q.push(eph(None, newest)), Pushed::Dropped);
        assert_eq!(q.len(), 2);
        assert!(!q.is_closed());
    }

    #[test]
    fn slow_policies_for_ephemeral_messages() {
        let eph = |policy| Item::Ephemeral(msg(0, None), 0, policy);
        // drop_oldest: the queue keeps its size and the newest message.
        let q = queue(2);
        q.push(Item::Reliable(msg(1, None), 0));
        q.push(eph(SlowPolicy::DropOldest));
        assert_eq!(q.push(eph(SlowPolicy::DropOldest)), Pushed::Evicted);
        assert_eq!(q.len(), 2);
        // Only ephemeral messages make room: a queue of reliable ones drops the newcomer.
        let q = queue(1);
        q.push(Item::Reliable(msg(1, None), 0));
        assert_eq!(q.push(eph(SlowPolicy::DropOldest)), Pushed::Dropped);
        assert!(!q.is_closed());
        // conflate: unkeyed messages of one event name replace each other.
        let q = queue(8);
        assert_eq!(q.push(eph(SlowPolicy::Conflate)), Pushed::Queued);
        assert_eq!(q.push(eph(SlowPolicy::Conflate)), Pushed::Conflated);
        assert_eq!(q.len(), 1);
        // disconnect: closed like a reliable overflow.
        let q = queue(1);
        q.push(eph(SlowPolicy::Disconnect));
        assert_eq!(q.push(eph(SlowPolicy::Disconnect)), Pushed::Overflow);
        assert!(q.is_closed());
    }

    #[test]
    fn chunk_frames_everything_queued_and_skips_duplicates() {
        let q = queue(16);
        q.push(Item::Position(0, Position { epoch: 1, seq: 1 }));
        q.push(Item::Reliable(msg(1, None), 0)); // already seen: skipped
        q.push(Item::Reliable(msg(2, None), 0));
        q.push(Item::Reliable(msg(3, None), 0));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(Chunk::Bytes(b)) = q.poll_chunk(&mut cx) else {
            panic!("a chunk")
        };
        let events = herald_proto::SseParser::new().push(&b);
        assert_eq!(events.len(), 2);
        assert!(events[1].data.contains("\"seq\":3"));
        assert!(matches!(q.poll_chunk(&mut cx), Poll::Pending));
    }

    /// A replay waiting in `push_wait` for room is woken by whatever takes the queued
    /// items: also by the fan-out's direct write, not only by the connection's writer.
    #[tokio::test]
    async fn a_flush_that_drains_the_queue_wakes_a_waiting_replay() {
        use std::future::Future;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let q = ConnQueue::new(
            2,
            Transport::Socket(server),
            Positions::new(vec![herald_proto::channel_hash("live:1")]),
            Arc::default(),
        );
        // An idle connection: the fan-out queues a live message, to write after its batch.
        assert_eq!(
            q.push_deferred(Item::Reliable(msg(1, None), 0)),
            (Pushed::Queued, true)
        );
        // Meanwhile its replay fills the queue and waits for room.
        assert!(q.push_wait(Item::Reliable(msg(2, None), 0)).await);
        let woken = Arc::new(Woken::default());
        let waker = futures_util::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut waiting = std::pin::pin!(q.push_wait(Item::Reliable(msg(3, None), 0)));
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        // The fan-out's flush writes everything queued straight to the socket ...
        q.flush();
        assert_eq!(q.len(), 0);
        // ... so the replay has room, and must be told.
        assert!(woken.0.load(Relaxed), "the waiting replay was never woken");
        assert!(matches!(waiting.as_mut().poll(&mut cx), Poll::Ready(true)));
        drop(client);
    }

    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl futures_util::task::ArcWake for Woken {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.store(true, Relaxed);
        }
    }

    #[test]
    fn a_gap_ends_the_stream() {
        let q = queue(16);
        q.push(Item::Position(0, Position { epoch: 1, seq: 1 }));
        q.push(Item::Reliable(msg(3, None), 0));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(q.poll_chunk(&mut cx), Poll::Ready(Chunk::Ended)));
    }
}
