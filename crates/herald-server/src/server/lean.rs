//! The first request of every connection is read here. A stream request (`GET /v1/sse`)
//! is served on the bare socket — the response head written by us, then events straight
//! from the node, with no HTTP machinery kept per connection. Everything else goes to hyper
//! together with the bytes already read.

use super::error::ApiError;
use super::exchange::MAX_HEADERS;
use super::sse::{prepare, STREAM_HEADERS};
use super::State;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Longest request head read before handing the connection to hyper (which refuses it).
const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed here; more and hyper decides.
const PARSE_HEADERS: usize = 128;

/// What the first bytes of a connection turned out to be.
pub enum First {
    /// Answered here (an error); the connection is done.
    Done,
    /// A stream to serve on the socket, with its response head.
    Stream(herald_node::StreamPlan, TcpStream, Bytes),
    /// Not a stream request: serve with hyper, replaying `buf` first.
    Hyper(TcpStream, Bytes),
}

/// Reads the first request head; answers a refused stream request itself.
pub async fn first_request(state: &Arc<State>, stream: TcpStream) -> First {
    let mut buf = BytesMut::with_capacity(1024);
    let read = tokio::time::timeout(state.head_timeout, read_head(&stream, &mut buf)).await;
    match read {
        Ok(Ok(true)) => {}
        // Too large: hyper answers it (431).
        Ok(Ok(false)) if buf.len() >= MAX_HEAD => return First::Hyper(stream, buf.freeze()),
        // Closed, or the socket failed: nobody to answer.
        Ok(Ok(false)) | Ok(Err(_)) => return First::Done,
        // A head that never ends (a client dribbling bytes) ends here, not with more time
        // under hyper.
        Err(_) => {
            let e = ApiError::new(
                408,
                "request_timeout",
                format!(
                    "the request head did not arrive within {} s",
                    state.head_timeout.as_secs()
                ),
            );
            write_error(&stream, &e, &[]).await;
            return First::Done;
        }
    }
    let Some(req) = parse_stream_request(&buf) else {
        return First::Hyper(stream, buf.freeze());
    };
    drop(buf);
    let StreamRequest {
        query,
        headers,
        header_count,
    } = req;
    let query = query.as_deref();
    let origin = headers.get(http::header::ORIGIN).cloned();
    let cors = state.cors.header_lines(origin.as_ref());
    let outcome = if header_count > MAX_HEADERS {
        Err(ApiError::new(
            431,
            "headers_too_large",
            format!("at most {MAX_HEADERS} request headers"),
        ))
    } else {
        prepare(state, &headers, query).await
    };
    match outcome {
        Ok(plan) => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (k, v) in STREAM_HEADERS {
                push_header(&mut head, k, v.as_bytes());
            }
            for (k, v) in &cors {
                push_header(&mut head, k, v.as_bytes());
            }
            // The body ends when the connection does.
            head.extend_from_slice(b"connection: close\r\n\r\n");
            return First::Stream(plan, stream, Bytes::from(head));
        }
        Err(e) => write_error(&stream, &e, &cors).await,
    }
    First::Done
}

/// Answers a connection refused before its request was read (e.g. too many from its
/// address) and closes it.
pub async fn refuse(mut stream: TcpStream, e: ApiError) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Take what the client already sent and close gently: closing a socket with unread
    // input resets it, and the client may then lose the answer.
    let mut scratch = [0u8; 2048];
    let _ = tokio::time::timeout(REFUSE_LINGER, stream.read(&mut scratch)).await;
    write_error(&stream, &e, &[]).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Answers a connection refused for want of sockets with what fits in one write, and closes
/// it: nothing waits, so a flood past the cap costs no task and no file descriptor beyond
/// this call.
pub fn refuse_now(stream: TcpStream, e: &ApiError) {
    // Take what the client already sent, so closing does not reset the connection over
    // unread input (a reset can make the client lose the answer); what arrives later may
    // still be reset: nothing waits for it.
    // Bounded, so a client streaming bytes cannot hold the accept loop here.
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        if !matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
    let _ = stream.try_write(&error_response(e, &[]));
}

/// How long a refused connection is read from (its request, then until the client closes).
const REFUSE_LINGER: Duration = Duration::from_millis(500);

/// Writes `e` as a complete `connection: close` response.
async fn write_error(stream: &TcpStream, e: &ApiError, cors: &[(&'static str, HeaderValue)]) {
    let out = error_response(e, cors);
    let _ = tokio::time::timeout(Duration::from_secs(5), write_all(stream, &out)).await;
}

/// `e` as a complete `connection: close` response.
fn error_response(e: &ApiError, cors: &[(&'static str, HeaderValue)]) -> Vec<u8> {
    let body = herald_proto::error_json(e.code, &e.message);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        e.status,
        reason(e.status),
        body.len()
    )
    .into_bytes();
    if let Some(secs) = e.retry_after_secs() {
        push_header(&mut out, "retry-after", secs.to_string().as_bytes());
    }
    for (k, v) in cors {
        push_header(&mut out, k, v.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed `GET /v1/sse` request head.
struct StreamRequest {
    query: Option<String>,
    headers: HeaderMap,
    header_count: usize,
}

/// Parses the head if it is a stream request. Synchronous on purpose: the header array
/// stays on this stack frame instead of in the connection's future.
fn parse_stream_request(buf: &[u8]) -> Option<StreamRequest> {
    let mut parsed = [httparse::EMPTY_HEADER; PARSE_HEADERS];
    let mut req = httparse::Request::new(&mut parsed);
    let complete = matches!(req.parse(buf), Ok(httparse::Status::Complete(_)));
    let path = req.path?;
    if !complete || req.method != Some("GET") || path.split('?').next() != Some("/v1/sse") {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            headers.append(k, v);
        }
    }
    Some(StreamRequest {
        query: path.split_once('?').map(|(_, q)| q.to_owned()),
        headers,
        header_count: req.headers.len(),
    })
}

/// Reads until the end of the request head; false if the peer closed or the head is too big.
async fn read_head(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    // Where the search for the blank line resumes: each byte is looked at about once, so a
    // client sending its head a byte at a time costs linear work, not quadratic.
    let mut scanned = 0;
    loop {
        if head_end_after(buf, scanned) {
            return Ok(true);
        }
        scanned = buf.len().saturating_sub(3);
        if buf.len() >= MAX_HEAD {
            return Ok(false);
        }
        stream.readable().await?;
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `buf` holds the blank line that ends a request head at or after `from`.
fn head_end_after(buf: &[u8], from: usize) -> bool {
    buf.get(from..)
        .is_some_and(|rest| rest.windows(4).any(|w| w == b"\r\n\r\n"))
}

async fn write_all(stream: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

/// A socket whose first bytes were already read: hyper reads them again from here.
pub struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl Rewind {
    pub fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::head_end_after;

    #[test]
    fn the_head_end_is_found_across_reads_without_rescanning() {
        let head = b"GET /v1/sse?channel=a HTTP/1.1\r\nhost: x\r\n\r\n";
        // Fed a byte at a time, resuming 3 bytes before the previous end as read_head does.
        let mut scanned = 0;
        let mut found_at = None;
        for n in 1..=head.len() {
            if head_end_after(&head[..n], scanned) {
                found_at = Some(n);
                break;
            }
            scanned = n.saturating_sub(3);
        }
        assert_eq!(found_at, Some(head.len()));
        assert!(!head_end_after(b"GET / HTTP/1.1\r\nhost: x\r\n", 0));
        assert!(
            !head_end_after(b"\r\n\r\n", 1),
            "only from the resume point"
        );
    }
}
