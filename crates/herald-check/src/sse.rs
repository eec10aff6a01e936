//! A raw SSE client over TCP. The checker needs what a parsed `EventSource` hides: whether an
//! event block itself carried an `id:` line (ephemeral events must not), and control of the
//! socket's receive buffer (a slow reader with a small one makes the server's queue overflow).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why a stream could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// One dispatched event block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The `id:` field of this block, if the block had one (not the persisted last id).
    pub id: Option<String>,
    /// `event:` (`"message"` when absent).
    pub event: String,
    pub data: String,
}

/// What to open.
pub struct Request<'a> {
    pub addr: SocketAddr,
    pub channels: &'a [String],
    pub token: &'a str,
    pub last_event_id: Option<&'a str>,
    /// `SO_RCVBUF` for the client socket (a slow reader's small window).
    pub recv_buffer: Option<u32>,
}

/// An open `text/event-stream` response.
pub struct SseConn {
    stream: TcpStream,
    chunked: Option<Chunked>,
    parser: Parser,
    pending: Vec<u8>,
    ended: bool,
}

/// Opens a stream: connects, sends the request, reads the response head (all within
/// `limit`). A non-200 answer is [`SseError::Status`] with the start of its body.
pub async fn open(req: &Request<'_>, limit: Duration) -> Result<SseConn, SseError> {
    tokio::time::timeout(limit, open_inner(req))
        .await
        .map_err(|_| SseError::Timeout("opening the stream"))?
}

async fn open_inner(req: &Request<'_>) -> Result<SseConn, SseError> {
    let sock = if req.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(SseError::Connect)?;
    if let Some(n) = req.recv_buffer {
        sock.set_recv_buffer_size(n).map_err(SseError::Connect)?;
    }
    let mut stream = sock.connect(req.addr).await.map_err(SseError::Connect)?;
    stream.set_nodelay(true)?;
    let query: Vec<String> = req
        .channels
        .iter()
        .map(|c| format!("channel={c}"))
        .collect();
    let mut head = format!(
        "GET /v1/sse?{} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n",
        query.join("&"),
        req.addr,
        req.token
    );
    if let Some(id) = req.last_event_id {
        head.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(SseError::Malformed(
                "closed before the response head".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = text
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| SseError::Malformed(format!("status line {text:?}")))?;
            let rest = buf[end + 4..].to_vec();
            if status != 200 {
                return Err(SseError::Status {
                    status,
                    body: String::from_utf8_lossy(&rest).chars().take(300).collect(),
                });
            }
            let chunked = text.contains("transfer-encoding: chunked");
            let mut conn = SseConn {
                stream,
                chunked: chunked.then(Chunked::default),
                parser: Parser::default(),
                pending: Vec::new(),
                ended: false,
            };
            conn.pending = rest;
            return Ok(conn);
        }
        if buf.len() > 16 * 1024 {
            return Err(SseError::Malformed("response head too large".into()));
        }
    }
}

impl SseConn {
    /// Reads at most `max` bytes (waiting at most `wait`) and returns the events they
    /// completed. `Ok(None)` once the server ended the stream; `Ok(Some(empty))` on a quiet
    /// `wait`.
    pub async fn read_some(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<RawEvent>>, SseError> {
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let bytes = std::mem::take(&mut self.pending);
            self.feed(&bytes, &mut out)?;
            return Ok(Some(out));
        }
        if self.ended {
            return Ok(None);
        }
        let mut buf = vec![0u8; max.max(1)];
        match tokio::time::timeout(wait, self.stream.read(&mut buf)).await {
            Err(_) => Ok(Some(out)),
            Ok(Ok(0)) => {
                self.ended = true;
                Ok(None)
            }
            Ok(Ok(n)) => {
                self.feed(&buf[..n], &mut out)?;
                Ok(Some(out))
            }
            Ok(Err(e)) => Err(e.into()),
        }
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<RawEvent>) -> Result<(), SseError> {
        match &mut self.chunked {
            Some(c) => {
                let mut body = Vec::with_capacity(bytes.len());
                let done = c.feed(bytes, &mut body)?;
                self.parser.push(&body, out);
                if done {
                    self.ended = true;
                }
            }
            None => self.parser.push(bytes, out),
        }
        Ok(())
    }

    /// Heartbeat comments seen so far.
    pub fn comments(&self) -> u64 {
        self.parser.comments()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Transfer-Encoding: chunked` decoder.
#[derive(Default)]
struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Default)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    /// The CRLF after a chunk's data; how many of its bytes are still expected.
    DataEnd(u8),
    Done,
}

impl Chunked {
    /// Appends decoded body bytes to `out`; true once the last chunk was read.
    fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<bool, SseError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(true),
                ChunkState::Size => {
                    let b = input[0];
                    input = &input[1..];
                    if b == b'\n' {
                        let text = String::from_utf8_lossy(&self.line);
                        let hex = text.trim().split(';').next().unwrap_or("").trim();
                        let size = usize::from_str_radix(hex, 16)
                            .map_err(|_| SseError::Malformed(format!("chunk size {text:?}")))?;
                        self.line.clear();
                        self.state = if size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data(size)
                        };
                    } else if self.line.len() > 64 {
                        return Err(SseError::Malformed("chunk size line too long".into()));
                    } else {
                        self.line.push(b);
                    }
                }
                ChunkState::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd(2)
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd(left) => {
                    input = &input[1..];
                    self.state = if left <= 1 {
                        ChunkState::Size
                    } else {
                        ChunkState::DataEnd(left - 1)
                    };
                }
            }
        }
        Ok(matches!(self.state, ChunkState::Done))
    }
}

/// The event-stream parser of `herald-proto` (the one clients use), keeping for each event
/// the `id:` field of its own block, if it had one.
#[derive(Default)]
pub struct Parser {
    inner: herald_proto::SseParser,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<RawEvent>) {
        for (e, id) in self.inner.push_with_block_ids(bytes) {
            out.push(RawEvent {
                id,
                event: e.event,
                data: e.data,
            });
        }
    }

    /// Comment lines seen (heartbeats).
    pub fn comments(&self) -> u64 {
        self.inner.comments_seen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_keeps_per_block_ids() {
        let mut p = Parser::default();
        let mut out = Vec::new();
        p.push(
            b"retry: 10\n\nid: h1a\nevent: x\ndata: {\"a\":1}\n\n: hb\n",
            &mut out,
        );
        p.push(b"event: y\r\ndata: {}\r\n\r\nid: h1b\nda", &mut out);
        p.push(b"ta: 1\ndata: 2\n\n", &mut out);
        assert_eq!(
            out,
            vec![
                RawEvent {
                    id: Some("h1a".into()),
                    event: "x".into(),
                    data: "{\"a\":1}".into()
                },
                RawEvent {
                    id: None,
                    event: "y".into(),
                    data: "{}".into()
                },
                RawEvent {
                    id: Some("h1b".into()),
                    event: "message".into(),
                    data: "1\n2".into()
                },
            ]
        );
        assert_eq!(p.comments(), 1);
    }

    #[test]
    fn chunked_decoding_across_splits() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            let a = c.feed(&wire[..split], &mut out).unwrap();
            let b = c.feed(&wire[split..], &mut out).unwrap();
            assert!(!a || split >= wire.len() - 2, "done early at {split}");
            assert!(a || b, "not done at {split}");
            assert_eq!(out, b"hello world", "split at {split}");
        }
    }
}
