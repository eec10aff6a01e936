//! Serving a stream: on a socket of its own (the lean path: after the response head the
//! connection is just a queue, a cursor and a small writer), or as a hyper response body
//! (for a stream requested on a connection hyper already serves).

use crate::hub::Slot;
use crate::queue::{Chunk, CloseReason, ConnQueue};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Releases the stream's subscriptions and its connection slot when the stream ends.
pub(crate) struct StreamGuard {
    pub node: Arc<Node>,
    pub queue: Arc<ConnQueue>,
    pub slots: Vec<Arc<Slot>>,
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

/// Writes the response head, then everything the queue yields, until the stream ends, the
/// peer goes away, or a write makes no progress for `write_timeout`.
pub(crate) async fn serve_socket(guard: StreamGuard, head: Bytes, write_timeout: Duration) {
    let queue = guard.queue.clone();
    let Some(sock) = queue.socket() else { return };
    if write_all(sock, &head, write_timeout, &queue).await.is_err() {
        return;
    }
    loop {
        let chunk = tokio::select! {
            c = poll_fn(|cx| queue.poll_chunk(cx)) => c,
            r = sock.readable() => {
                if r.is_err() || peer_closed(sock) {
                    break;
                }
                continue;
            }
        };
        match chunk {
            Chunk::Bytes(b) => match write_all(sock, &b, write_timeout, &queue).await {
                Ok(()) => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::TimedOut {
                        Counters::bump(&guard.node.counters.stalled_disconnects);
                    }
                    break;
                }
            },
            Chunk::Ended => break,
        }
    }
    queue.close(CloseReason::ClientGone, true);
    drop(guard);
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

async fn write_all(
    sock: &TcpStream,
    mut buf: &[u8],
    limit: Duration,
    queue: &ConnQueue,
) -> io::Result<()> {
    while !buf.is_empty() {
        match sock.try_write(buf) {
            Ok(n) => {
                buf = &buf[n..];
                queue.progressed();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(limit, sock.writable())
                    .await
                    .map_err(|_| {
                        io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading")
                    })??;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
