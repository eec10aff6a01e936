//! Serving a stream: on a socket of its own (the lean path: after the response head the
//! connection is just a queue, a cursor and a small writer), or as a hyper response body
//! (for a stream requested on a connection hyper already serves).

use crate::hub::Slot;
use crate::queue::{Chunk, CloseReason, ConnQueue};
use crate::Node;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// Releases the stream's subscriptions and its connection slot when the stream ends.
pub(crate) struct StreamGuard {
    pub node: Arc<Node>,
    pub queue: Arc<ConnQueue>,
    pub slots: Vec<Arc<Slot>>,
    pub conn_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        // Closing the queue also ends the stream's replay task at its next step.
        self.queue.close(CloseReason::ClientGone, false);
        for s in &self.slots {
            self.node.hub.detach(s, &self.queue);
        }
        self.node.registry.remove(self.conn_id);
        self.node.counters.connections.fetch_sub(1, Relaxed);
    }
}

/// The body of a `text/event-stream` response served by hyper.
pub struct SseBody {
    pub(crate) guard: StreamGuard,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.guard.queue.poll_chunk(cx) {
            Poll::Ready(Chunk::Bytes(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(Chunk::Ended) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A stream served on its own socket: writes the response head, then everything the queue
/// yields, until the stream ends or the peer goes away. A hand-written future with no timers
/// or stored I/O futures, because this is the per-connection state of every idle stream; a
/// peer that stops reading is found by the housekeeping stall check, which shuts the socket
/// down.
pub struct StreamTask {
    guard: StreamGuard,
    current: Option<Bytes>,
}

impl StreamTask {
    pub(crate) fn new(guard: StreamGuard, head: Bytes) -> Self {
        Self {
            guard,
            current: Some(head),
        }
    }
}

impl std::future::Future for StreamTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let queue = &this.guard.queue;
        let done = match queue.socket() {
            Some(sock) => poll_stream(cx, sock, queue, &mut this.current),
            None => Poll::Ready(()),
        };
        if done.is_ready() {
            queue.close(CloseReason::ClientGone, true);
        }
        done
    }
}

fn poll_stream(
    cx: &mut Context<'_>,
    sock: &TcpStream,
    queue: &ConnQueue,
    current: &mut Option<Bytes>,
) -> Poll<()> {
    loop {
        // Notice a peer that hung up even while nothing is being written.
        if let Poll::Ready(r) = sock.poll_read_ready(cx) {
            if r.is_err() || peer_closed(sock) {
                return Poll::Ready(());
            }
            continue;
        }
        if let Some(chunk) = current {
            match sock.try_write(chunk) {
                Ok(n) => {
                    queue.progressed();
                    if n == chunk.len() {
                        *current = None;
                    } else {
                        let _ = chunk.split_to(n);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match sock.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(_) => return Poll::Ready(()),
            }
        }
        match queue.poll_chunk(cx) {
            Poll::Ready(Chunk::Bytes(b)) => *current = Some(b),
            Poll::Ready(Chunk::Ended) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Reads and discards what the client sends; true once it has closed its side.
fn peer_closed(sock: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match sock.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}
