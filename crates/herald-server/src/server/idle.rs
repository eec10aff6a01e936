//! Connections that carry no request are closed: an HTTP/2 or keep-alive HTTP/1.1 connection
//! with no request open for a whole idle period ends, so a peer cannot hold a socket (and a
//! TLS session's memory) by completing a handshake and then saying nothing.

use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// What one connection's requests are doing.
#[derive(Default)]
pub struct Activity {
    open: AtomicUsize,
    touched: AtomicBool,
}

impl Activity {
    /// A request starts; it stays open until the returned guard (kept in its response body)
    /// is dropped.
    pub fn begin(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touched.store(true, Ordering::Release);
        Open(self.clone())
    }

    /// Whether no request was open, began or ended since the previous call.
    pub fn idle_since_last(&self) -> bool {
        let touched = self.touched.swap(false, Ordering::AcqRel);
        !touched && self.open.load(Ordering::Acquire) == 0
    }
}

/// One open request.
pub struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.touched.store(true, Ordering::Release);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request open until hyper is done with it.
pub struct Tracked<B> {
    body: B,
    _open: Open,
}

impl<B> Tracked<B> {
    pub fn new(body: B, open: Open) -> Self {
        Tracked { body, _open: open }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_after_a_whole_quiet_period() {
        let a = Arc::new(Activity::default());
        assert!(a.idle_since_last(), "a connection that never asked is idle");
        let open = a.begin();
        assert!(!a.idle_since_last(), "a request began");
        assert!(!a.idle_since_last(), "a request is still open");
        drop(open);
        assert!(!a.idle_since_last(), "a request ended within the period");
        assert!(a.idle_since_last(), "a whole period without a request");
    }
}
