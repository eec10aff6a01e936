//! Lean client-side parsing for many connections: HTTP/1.1 chunked transfer decoding and
//! the bench payload inside SSE `data:` lines (no allocation per event).

/// Decodes `Transfer-Encoding: chunked` incrementally.
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    size: usize,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    SizeExt,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Done,
}

impl Chunked {
    /// Feeds raw bytes; calls `out` with each run of decoded body bytes. Returns false once
    /// the terminating chunk was seen or the framing is invalid.
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(&[u8])) -> bool {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let b = input[0];
                    input = &input[1..];
                    match b {
                        b'0'..=b'9' => self.size = self.size * 16 + (b - b'0') as usize,
                        b'a'..=b'f' => self.size = self.size * 16 + (b - b'a' + 10) as usize,
                        b'A'..=b'F' => self.size = self.size * 16 + (b - b'A' + 10) as usize,
                        b';' => self.state = ChunkState::SizeExt,
                        b'\r' => self.state = ChunkState::SizeLf,
                        _ => return false,
                    }
                    if self.size > 1 << 30 {
                        return false;
                    }
                }
                ChunkState::SizeExt => {
                    if input[0] == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                    input = &input[1..];
                }
                ChunkState::SizeLf => {
                    if input[0] != b'\n' {
                        return false;
                    }
                    input = &input[1..];
                    if self.size == 0 {
                        self.state = ChunkState::Done;
                        return false;
                    }
                    self.state = ChunkState::Data;
                }
                ChunkState::Data => {
                    let n = self.size.min(input.len());
                    out(&input[..n]);
                    input = &input[n..];
                    self.size -= n;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    if input[0] != b'\r' {
                        return false;
                    }
                    input = &input[1..];
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if input[0] != b'\n' {
                        return false;
                    }
                    input = &input[1..];
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return false,
            }
        }
        self.state != ChunkState::Done
    }
}

/// What the bench reads from an SSE body.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A bench payload `{"s":S,"t":T…}` in a `data:` line, with the server's `"seq"` of the
    /// envelope around it when there is one.
    Payload { s: u64, t: u64, seq: Option<u64> },
    /// An event with an `id:` was dispatched: the cursor to resume after.
    Id(&'a [u8]),
    /// Herald's `herald:reconnect` event: reconnect (elsewhere) after this many ms.
    Reconnect { after_ms: u64 },
}

/// Splits an SSE body into lines and reports what [`Line`] names (no allocation per event).
#[derive(Default)]
pub struct DataLines {
    line: Vec<u8>,
    /// Bytes of an over-long line being skipped.
    skipping: bool,
    /// The `id:` of the event being read, reported when the event is dispatched (a stream cut
    /// between the `id:` and the end of its event must not skip that event on resume).
    pending_id: Vec<u8>,
    /// The event being read is `herald:reconnect`.
    reconnect: bool,
}

const MAX_LINE: usize = 1 << 20;

impl DataLines {
    pub fn feed(&mut self, mut input: &[u8], out: &mut impl FnMut(Line<'_>)) {
        while !input.is_empty() {
            match memchr::memchr(b'\n', input) {
                Some(i) => {
                    if self.line.is_empty() && !self.skipping {
                        self.handle_line(&input[..i], out);
                    } else if !self.skipping {
                        self.line.extend_from_slice(&input[..i]);
                        let line = std::mem::take(&mut self.line);
                        self.handle_line(&line, out);
                        self.line = line;
                        self.line.clear();
                    }
                    self.skipping = false;
                    input = &input[i + 1..];
                }
                None => {
                    if !self.skipping {
                        self.line.extend_from_slice(input);
                        if self.line.len() > MAX_LINE {
                            self.line.clear();
                            self.skipping = true;
                        }
                    }
                    return;
                }
            }
        }
        // Give memory back between events on idle connections.
        if self.line.is_empty() && self.line.capacity() > 4096 {
            self.line = Vec::new();
        }
    }

    fn handle_line(&mut self, line: &[u8], out: &mut impl FnMut(Line<'_>)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if !self.pending_id.is_empty() {
                out(Line::Id(&self.pending_id));
                self.pending_id.clear();
            }
            self.reconnect = false;
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            if self.reconnect {
                if let Some(at) = memchr::memmem::find(rest, br#""after_ms":"#) {
                    if let Some((after_ms, _)) = number(&rest[at + 11..]) {
                        out(Line::Reconnect { after_ms });
                    }
                }
            } else if let Some((s, t)) = payload(rest) {
                out(Line::Payload {
                    s,
                    t,
                    seq: envelope_seq(rest),
                });
            }
        } else if let Some(rest) = line.strip_prefix(b"id:") {
            let id = rest.strip_prefix(b" ").unwrap_or(rest);
            self.pending_id.clear();
            self.pending_id.extend_from_slice(id);
        } else if let Some(rest) = line.strip_prefix(b"event:") {
            self.reconnect = rest.strip_prefix(b" ").unwrap_or(rest) == b"herald:reconnect";
        }
    }
}

/// The server's `"seq":N` in a Herald envelope (`{"channel":…,"epoch":…,"seq":N,…,"data":…}`),
/// looked for before the bench payload only.
pub fn envelope_seq(line: &[u8]) -> Option<u64> {
    let end = memchr::memmem::find(line, br#"{"s":"#)?;
    let head = &line[..end];
    let at = memchr::memmem::find(head, br#""seq":"#)?;
    number(&head[at + 6..]).map(|(v, _)| v)
}

/// Finds `{"s":S,"t":T` in `line`.
pub fn payload(line: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memmem::find(line, br#"{"s":"#)?;
    let (s, rest) = number(&line[at + 5..])?;
    let rest = rest.strip_prefix(br#","t":"#)?;
    let (t, _) = number(rest)?;
    Some((s, t))
}

fn number(b: &[u8]) -> Option<(u64, &[u8])> {
    let end = b
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(b.len());
    if end == 0 || end > 19 {
        return None;
    }
    let mut v = 0u64;
    for c in &b[..end] {
        v = v * 10 + (c - b'0') as u64;
    }
    Some((v, &b[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_across_splits() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        for split in 0..raw.len() {
            let mut c = Chunked::default();
            let mut out = Vec::new();
            c.feed(&raw[..split], &mut |b| out.extend_from_slice(b));
            c.feed(&raw[split..], &mut |b| out.extend_from_slice(b));
            assert_eq!(out, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn payload_in_herald_envelope_and_raw() {
        let herald =
            br#" {"channel":"b:1","epoch":1,"seq":9,"ts":5,"data":{"s":7,"t":123456,"p":"xx"}}"#;
        assert_eq!(payload(herald), Some((7, 123456)));
        assert_eq!(payload(br#" {"s":1,"t":2}"#), Some((1, 2)));
        assert_eq!(payload(b" nothing"), None);
        assert_eq!(envelope_seq(herald), Some(9));
        assert_eq!(envelope_seq(br#" {"s":1,"t":2}"#), None);
        assert_eq!(envelope_seq(br#" {"s":1,"t":2,"p":"\"seq\":3"}"#), None);
    }

    #[test]
    fn data_lines_split_anywhere() {
        let body =
            b"retry: 10\n\nid: x\ndata: {\"s\":1,\"t\":10}\n\n: hb\n\ndata: {\"s\":2,\"t\":20}\n\n";
        for split in 0..body.len() {
            let mut d = DataLines::default();
            let mut got = Vec::new();
            let mut push = |l: Line<'_>| {
                if let Line::Payload { s, t, .. } = l {
                    got.push((s, t))
                }
            };
            d.feed(&body[..split], &mut push);
            d.feed(&body[split..], &mut push);
            assert_eq!(got, vec![(1, 10), (2, 20)], "split at {split}");
        }
    }

    #[test]
    fn ids_at_dispatch_and_reconnect_events() {
        let body = b"id: c7\ndata: {\"s\":1,\"t\":10}\n\nretry: 300\n\nevent: herald:reconnect\r\ndata: {\"after_ms\":250,\"reason\":\"drain\"}\n\nid: c8\ndata: {\"s\":2";
        for split in 0..body.len() {
            let mut d = DataLines::default();
            let mut got = Vec::new();
            let mut push = |l: Line<'_>| {
                got.push(match l {
                    Line::Payload { s, .. } => format!("s{s}"),
                    Line::Id(id) => format!("id {}", String::from_utf8_lossy(id)),
                    Line::Reconnect { after_ms } => format!("reconnect {after_ms}"),
                })
            };
            d.feed(&body[..split], &mut push);
            d.feed(&body[split..], &mut push);
            // c8's event never ended: its id is not the cursor yet.
            assert_eq!(
                got,
                vec!["s1", "id c7", "reconnect 250"],
                "split at {split}"
            );
        }
    }
}
