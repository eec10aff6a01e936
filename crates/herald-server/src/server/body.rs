//! One response body type for every route: a whole buffer, or a live SSE stream.

use bytes::Bytes;
use herald_node::SseBody;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

pub enum ResponseBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
    /// Bytes made as they are read (the dashboard's live figures).
    Stream(std::pin::Pin<Box<dyn futures_util::Stream<Item = Bytes> + Send>>),
}

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(b.into()))
    }

    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Sse(s) => Pin::new(s.as_mut()).poll_frame(cx),
            ResponseBody::Stream(s) => s
                .as_mut()
                .poll_next(cx)
                .map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Full(b) => b.is_none(),
            ResponseBody::Sse(_) | ResponseBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ResponseBody::Full(None) => SizeHint::with_exact(0),
            ResponseBody::Sse(_) | ResponseBody::Stream(_) => SizeHint::default(),
        }
    }
}
