//! Server-sent events: framing (server side) and an incremental parser following the WHATWG
//! EventSource interpretation rules (client side).

use crate::num::push_u64;

/// Longest line the parser buffers; longer lines are dropped whole.
pub const MAX_LINE_LEN: usize = 1 << 20;
/// Largest data buffer of one event the parser accumulates; a larger event is dropped whole.
pub const MAX_EVENT_DATA_LEN: usize = 16 << 20;

const BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// Appends one event: optional `"id: <id>\n"`, optional `"event: <event>\n"`, `"data: <data>\n"`,
/// then `"\n"`.
///
/// `data` (and `id`, `event`) must not contain `'\r'` or `'\n'`: callers guarantee it.
pub fn write_event(out: &mut Vec<u8>, id: Option<&[u8]>, event: Option<&str>, data: &[u8]) {
    debug_assert!(!has_line_break(data), "SSE data contains a line break");
    debug_assert!(
        !id.is_some_and(has_line_break),
        "SSE id contains a line break"
    );
    debug_assert!(
        !event.is_some_and(|e| has_line_break(e.as_bytes())),
        "SSE event contains a line break"
    );
    let len = id.map_or(0, |i| i.len() + 5) + event.map_or(0, |e| e.len() + 8) + data.len() + 8;
    out.reserve(len);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id);
        out.push(b'\n');
    }
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

fn has_line_break(b: &[u8]) -> bool {
    b.iter().any(|&c| c == b'\r' || c == b'\n')
}

/// A comment block `": text\n\n"` (heartbeats). Line breaks in `text` are replaced by spaces so
/// the comment stays one line.
pub fn comment(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 4);
    out.extend_from_slice(b": ");
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\n\n");
    out
}

/// A `"retry: <ms>\n\n"` block.
pub fn retry_field(ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(29);
    out.extend_from_slice(b"retry: ");
    push_u64(&mut out, ms);
    out.extend_from_slice(b"\n\n");
    out
}

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The stream's last event ID at dispatch time (it persists across events, per the spec);
    /// `None` if never set or reset by an empty `id:` field.
    pub id: Option<String>,
    /// The event type; `"message"` when no `event:` field was given.
    pub event: String,
    /// The `data:` lines joined by `'\n'`.
    pub data: String,
}

/// Receives each dispatched event with the `id:` field of its own block, if it had one.
type Sink<'a> = dyn FnMut(SseEvent, Option<String>) + 'a;

/// Incremental EventSource stream parser. Feed it bytes with arbitrary chunk boundaries.
///
/// Follows the WHATWG rules: lines end in `\r\n`, `\n` or `\r`; one leading BOM is ignored;
/// `field: value` with one optional space stripped; `data` lines are joined by `\n`; an event
/// whose data buffer is empty is not dispatched; an `id` containing NUL is ignored; `retry` only
/// accepts ASCII digits. Invalid UTF-8 is decoded with replacement characters. Lines longer than
/// [`MAX_LINE_LEN`] are dropped; events with more than [`MAX_EVENT_DATA_LEN`] bytes of data are
/// dropped.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unterminated line.
    line: Vec<u8>,
    /// The current line exceeded `MAX_LINE_LEN` and is being discarded.
    line_overflow: bool,
    /// The previous chunk ended in `'\r'`; a leading `'\n'` in the next chunk belongs to it.
    pending_cr: bool,
    /// The BOM check at stream start is over.
    bom_done: bool,
    /// How many BOM bytes have matched so far at stream start.
    bom_matched: usize,
    data: String,
    data_overflow: bool,
    event_type: String,
    /// The spec's "last event ID buffer".
    id_buffer: Option<String>,
    /// The spec's "last event ID string", updated on dispatch.
    last_event_id: Option<String>,
    retry: Option<u64>,
    comments: u64,
    /// The `id:` value of the block being read, if it has one.
    block_id: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes (arbitrary chunk boundaries, including inside a line, inside a UTF-8
    /// character or between `'\r'` and `'\n'`); returns the events dispatched by this chunk.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.feed(chunk, &mut |e, _| events.push(e));
        events
    }

    /// As [`SseParser::push`], with the `id:` field of each event's own block, if it had one:
    /// `id` persists from block to block, and a checker needs to know which events carried
    /// one themselves.
    pub fn push_with_block_ids(&mut self, chunk: &[u8]) -> Vec<(SseEvent, Option<String>)> {
        let mut events = Vec::new();
        self.feed(chunk, &mut |e, id| events.push((e, id)));
        events
    }

    fn feed(&mut self, chunk: &[u8], events: &mut Sink<'_>) {
        let mut input = self.skip_bom(chunk);
        if self.pending_cr {
            if let Some((&first, rest)) = input.split_first() {
                self.pending_cr = false;
                if first == b'\n' {
                    input = rest;
                }
            }
        }
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.append_to_line(input);
                    break;
                }
                Some(i) => {
                    self.append_to_line(&input[..i]);
                    let terminator = input[i];
                    input = &input[i + 1..];
                    if terminator == b'\r' {
                        match input.split_first() {
                            Some((b'\n', rest)) => input = rest,
                            Some(_) => {}
                            None => self.pending_cr = true,
                        }
                    }
                    self.end_line(events);
                }
            }
        }
    }

    /// The last event ID string (set when an event block is dispatched).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// The last valid `retry:` value seen, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Number of comment lines seen (used to observe heartbeats).
    pub fn comments_seen(&self) -> u64 {
        self.comments
    }

    /// Strips one leading BOM, which may arrive split across chunks.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        if self.bom_done {
            return chunk;
        }
        let mut input = chunk;
        while let Some((&b, rest)) = input.split_first() {
            if BOM.get(self.bom_matched) == Some(&b) {
                self.bom_matched += 1;
                input = rest;
                if self.bom_matched == BOM.len() {
                    self.bom_done = true;
                    return input;
                }
            } else {
                // Not a BOM after all: the held-back bytes are ordinary line content
                // (0xEF / 0xBB are never line terminators).
                self.bom_done = true;
                self.line.extend_from_slice(&BOM[..self.bom_matched]);
                return input;
            }
        }
        input
    }

    fn append_to_line(&mut self, bytes: &[u8]) {
        if self.line_overflow {
            return;
        }
        if self.line.len() + bytes.len() > MAX_LINE_LEN {
            self.line_overflow = true;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, events: &mut Sink<'_>) {
        if self.line_overflow {
            self.line_overflow = false;
            self.line.clear();
            return;
        }
        let line = std::mem::take(&mut self.line);
        self.process_line(&line, events);
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
    }

    fn process_line(&mut self, line: &[u8], events: &mut Sink<'_>) {
        let Some(&first) = line.first() else {
            self.dispatch(events);
            return;
        };
        if first == b':' {
            self.comments += 1;
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => self.append_data(value),
            b"id" if value.contains(&0) => {
                self.block_id = Some(String::from_utf8_lossy(value).into_owned());
            }
            // An id containing NUL is ignored (above); an empty one resets the last event ID.
            b"id" => {
                self.block_id = Some(String::from_utf8_lossy(value).into_owned());
                self.id_buffer = if value.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(value).into_owned())
                };
            }
            // Only ASCII digits; values beyond u64 are ignored.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All ASCII digits, so valid UTF-8.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn append_data(&mut self, value: &[u8]) {
        if self.data_overflow {
            return;
        }
        if self.data.len() + value.len() + 1 > MAX_EVENT_DATA_LEN {
            self.data_overflow = true;
            self.data = String::new();
            return;
        }
        self.data.push_str(&String::from_utf8_lossy(value));
        self.data.push('\n');
    }

    fn dispatch(&mut self, events: &mut Sink<'_>) {
        if self.last_event_id != self.id_buffer {
            self.last_event_id.clone_from(&self.id_buffer);
        }
        let block_id = self.block_id.take();
        if self.data_overflow || self.data.is_empty() {
            self.data_overflow = false;
            self.data.clear();
            self.event_type.clear();
            return;
        }
        if self.data.ends_with('\n') {
            self.data.pop();
        }
        let event = if self.event_type.is_empty() {
            "message".to_owned()
        } else {
            std::mem::take(&mut self.event_type)
        };
        let event = SseEvent {
            id: self.last_event_id.clone(),
            event,
            data: std::mem::take(&mut self.data),
        };
        events(event, block_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(str::to_owned),
            event: event.to_owned(),
            data: data.to_owned(),
        }
    }

    #[test]
    fn block_ids_are_the_blocks_own() {
        let mut p = SseParser::new();
        let got = p.push_with_block_ids(b"id: a\ndata: 1\n\ndata: 2\n\nid:\ndata: 3\n\n");
        let ids: Vec<(Option<&str>, Option<&str>)> = got
            .iter()
            .map(|(e, b)| (e.id.as_deref(), b.as_deref()))
            .collect();
        // The second event inherits `a` without carrying it; the third resets it.
        assert_eq!(
            ids,
            vec![(Some("a"), Some("a")), (Some("a"), None), (None, Some(""))]
        );
    }

    fn parse_all(bytes: &[u8]) -> (Vec<SseEvent>, SseParser) {
        let mut p = SseParser::new();
        let events = p.push(bytes);
        (events, p)
    }

    #[test]
    fn write_event_formats() {
        let mut out = Vec::new();
        write_event(&mut out, Some(b"h1abc"), Some("comment"), b"{\"a\":1}");
        assert_eq!(out, b"id: h1abc\nevent: comment\ndata: {\"a\":1}\n\n");
        let mut out = b"x".to_vec();
        write_event(&mut out, None, None, b"");
        assert_eq!(out, b"xdata: \n\n");
    }

    #[test]
    fn comment_and_retry() {
        assert_eq!(comment("hb"), b": hb\n\n");
        assert_eq!(comment(""), b": \n\n");
        assert_eq!(comment("a\nb\rc"), b": a b c\n\n");
        assert_eq!(retry_field(0), b"retry: 0\n\n");
        assert_eq!(retry_field(2500), b"retry: 2500\n\n");
        assert_eq!(
            retry_field(u64::MAX),
            format!("retry: {}\n\n", u64::MAX).as_bytes()
        );
    }

    #[test]
    fn basic_events() {
        let (events, p) = parse_all(b"data: hello\n\nevent: x\ndata: a\ndata: b\n\n");
        assert_eq!(
            events,
            vec![ev(None, "message", "hello"), ev(None, "x", "a\nb")]
        );
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn line_endings() {
        for stream in [
            &b"data: a\r\n\r\ndata: b\r\n\r\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\n\ndata: b\n\n",
            b"data: a\r\n\rdata: b\n\r\n",
        ] {
            let (events, _) = parse_all(stream);
            assert_eq!(
                events,
                vec![ev(None, "message", "a"), ev(None, "message", "b")],
                "{stream:?}"
            );
        }
    }

    #[test]
    fn cr_lf_split_across_chunks() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: a\r").is_empty());
        // The '\n' completes the "\r\n" of the data line, not an empty line.
        assert!(p.push(b"\n").is_empty());
        assert_eq!(p.push(b"\r"), vec![ev(None, "message", "a")]);
        assert!(p.push(b"").is_empty());
        assert!(p.push(b"\ndata: b\n").is_empty());
        assert_eq!(p.push(b"\n"), vec![ev(None, "message", "b")]);
    }

    #[test]
    fn field_parsing() {
        // No space, two spaces (only one stripped), no colon, unknown fields, case sensitivity.
        let (events, _) =
            parse_all(b"data:nospace\ndata:  two\ndata\nfoo: bar\nDATA: x\nEvent: y\n\n");
        assert_eq!(events, vec![ev(None, "message", "nospace\n two\n")]);
        let (events, _) = parse_all(b"data: a:b: c\n\n");
        assert_eq!(events, vec![ev(None, "message", "a:b: c")]);
    }

    #[test]
    fn empty_data_not_dispatched() {
        let (events, p) = parse_all(b"event: x\n\nid: 5\n\n\n\ndata: y\n\n");
        // The event type was reset by the first (empty) dispatch.
        assert_eq!(events, vec![ev(Some("5"), "message", "y")]);
        assert_eq!(p.last_event_id(), Some("5"));
    }

    #[test]
    fn empty_data_line_is_dispatched() {
        let (events, _) = parse_all(b"data\n\ndata:\n\ndata: \n\n");
        assert_eq!(events, vec![ev(None, "message", ""); 3]);
    }

    #[test]
    fn id_persists_and_resets() {
        let (events, p) = parse_all(
            b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\nid: 2\ndata: d\n\nid: x\0y\ndata: e\n\n",
        );
        assert_eq!(
            events,
            vec![
                ev(Some("1"), "message", "a"),
                ev(Some("1"), "message", "b"),
                ev(None, "message", "c"),
                ev(Some("2"), "message", "d"),
                ev(Some("2"), "message", "e"),
            ]
        );
        assert_eq!(p.last_event_id(), Some("2"));
    }

    #[test]
    fn last_event_id_updates_on_dispatch_only() {
        let mut p = SseParser::new();
        p.push(b"id: 7\n");
        assert_eq!(p.last_event_id(), None);
        p.push(b"\n");
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn retry_values() {
        let mut p = SseParser::new();
        p.push(b"retry: 1500\n\n");
        assert_eq!(p.retry(), Some(1500));
        for ignored in [
            &b"retry: 1.5\n"[..],
            b"retry: -1\n",
            b"retry: 12a\n",
            b"retry:\n",
            b"retry: \n",
            b"retry:  10\n",
            b"retry: 99999999999999999999999\n",
        ] {
            p.push(ignored);
            assert_eq!(p.retry(), Some(1500), "{ignored:?}");
        }
        p.push(b"retry:0\n");
        assert_eq!(p.retry(), Some(0));
    }

    #[test]
    fn comments_counted() {
        let (events, p) = parse_all(b": hb\n:\n:: x\ndata: a\n: inside\n\n");
        assert_eq!(events, vec![ev(None, "message", "a")]);
        assert_eq!(p.comments_seen(), 4);
    }

    #[test]
    fn bom_is_stripped_once() {
        let (events, _) = parse_all(b"\xef\xbb\xbfdata: a\n\n");
        assert_eq!(events, vec![ev(None, "message", "a")]);
        // A second BOM is part of the field name, so the line is an unknown field.
        let (events, _) = parse_all(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n");
        assert!(events.is_empty());
        // BOM split across chunks.
        let mut p = SseParser::new();
        assert!(p.push(b"\xef").is_empty());
        assert!(p.push(b"\xbb").is_empty());
        assert_eq!(p.push(b"\xbfdata: a\n\n"), vec![ev(None, "message", "a")]);
    }

    #[test]
    fn partial_bom_is_content() {
        // "\xef\xbb" not followed by "\xbf": the held-back bytes are line content again.
        let (events, _) = parse_all(b"\xef\xbbdata: a\n\n");
        assert!(events.is_empty(), "field name is not 'data'");
        let mut p = SseParser::new();
        assert!(p.push(b"\xef").is_empty());
        assert!(p.push(b"\xbb").is_empty());
        assert!(p.push(b"x: y\n\n").is_empty());
        assert_eq!(p.push(b"data: a\n\n"), vec![ev(None, "message", "a")]);
        // Held-back bytes belong to the line: here they make it a field line, not a comment.
        let mut p = SseParser::new();
        p.push(b"\xef");
        assert!(p.push(b":c\n").is_empty());
        assert_eq!(p.comments_seen(), 0, "'\\xef:c' is a field, not a comment");
    }

    #[test]
    fn utf8_split_inside_char() {
        let text = "data: héllo → 🎉\n\n".as_bytes();
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in text {
            events.extend(p.push(std::slice::from_ref(b)));
        }
        assert_eq!(events, vec![ev(None, "message", "héllo → 🎉")]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (events, _) = parse_all(b"data: a\xffb\xe2\n\n");
        assert_eq!(events, vec![ev(None, "message", "a\u{fffd}b\u{fffd}")]);
    }

    #[test]
    fn incomplete_event_not_dispatched() {
        let (events, _) = parse_all(b"data: a\n");
        assert!(events.is_empty());
        let (events, _) = parse_all(b"data: a");
        assert!(events.is_empty());
    }

    #[test]
    fn overlong_line_dropped() {
        let mut p = SseParser::new();
        p.push(b"data: a\ndata: ");
        let big = vec![b'x'; MAX_LINE_LEN];
        assert!(p.push(&big).is_empty());
        assert!(p.push(&big).is_empty());
        assert!(p.line.capacity() <= MAX_LINE_LEN);
        let events = p.push(b"\ndata: b\n\n");
        assert_eq!(events, vec![ev(None, "message", "a\nb")]);
        // A line of exactly the limit is kept.
        let mut line = b"data:".to_vec();
        line.resize(MAX_LINE_LEN, b'y');
        line.extend_from_slice(b"\n\n");
        let (events, _) = parse_all(&line);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), MAX_LINE_LEN - 5);
    }

    #[test]
    fn oversized_event_dropped() {
        let mut p = SseParser::new();
        let mut line = b"data:".to_vec();
        line.resize(MAX_LINE_LEN, b'z');
        line.push(b'\n');
        for _ in 0..(MAX_EVENT_DATA_LEN / MAX_LINE_LEN + 1) {
            assert!(p.push(&line).is_empty());
        }
        assert!(p.push(b"\n").is_empty());
        assert_eq!(p.push(b"data: ok\n\n"), vec![ev(None, "message", "ok")]);
    }
}
