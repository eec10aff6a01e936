//! The NATS payload of a [`FabricMessage`]: a compact binary header followed by the
//! publisher's data, so a node decodes a message without copying its data.
//!
//! Layout (version 2; version 1 ends its header after the conflation key):
//!
//! ```text
//! u8 version = 2
//! varint epoch, varint seq, varint ts_ms            (LEB128, at most 10 bytes each)
//! varint len, len bytes                              event name (UTF-8)
//! varint 0 | varint len+1, len bytes                 conflation key (UTF-8), 0 = none
//! varint sent_us                                     handed to the fabric (µs since 1970)
//! u8 flags                                           bit 0: traced
//! if traced: 16 bytes trace id, 8 bytes span id      (W3C trace context)
//! rest                                               data
//! ```
//!
//! Nodes read both versions; dispatchers write version 2. In a rolling upgrade from a
//! release that wrote version 1, upgrade the nodes first (an old node refuses version 2 and
//! repairs every message from the store).
//!
//! The channel is not in the payload: the subject carries it.

use crate::FabricMessage;
use bytes::{BufMut, Bytes, BytesMut};
use herald_proto::varint::{self, VarintError};
use herald_trace::{SpanId, TraceContext, TraceId};
use std::sync::Arc;
use thiserror::Error;

const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
const TRACED: u8 = 1;

/// Why a payload is not a valid fabric message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("unsupported payload version {0}")]
    Version(u8),
    #[error("payload ends inside the {0}")]
    Truncated(&'static str),
    #[error("the {0} varint does not fit in 64 bits")]
    Overflow(&'static str),
    #[error("the {0} is not UTF-8")]
    Utf8(&'static str),
    /// What no publish could have produced: the payload did not come from a dispatcher.
    #[error("the {0} is not what a dispatcher sends: {1}")]
    Invalid(&'static str, String),
}

/// Encodes everything of `m` but its channel.
pub fn encode(m: &FabricMessage) -> Bytes {
    let key_len = m.conflation_key.as_ref().map_or(0, |k| k.len());
    let mut buf =
        BytesMut::with_capacity(1 + 3 * 10 + 2 * 10 + m.event.len() + key_len + 24 + m.data.len());
    buf.put_u8(VERSION);
    put_varint(&mut buf, m.epoch);
    put_varint(&mut buf, m.seq);
    put_varint(&mut buf, m.ts_ms);
    put_varint(&mut buf, m.event.len() as u64);
    buf.put_slice(m.event.as_bytes());
    match &m.conflation_key {
        None => put_varint(&mut buf, 0),
        Some(k) => {
            put_varint(&mut buf, k.len() as u64 + 1);
            buf.put_slice(k.as_bytes());
        }
    }
    put_varint(&mut buf, m.sent_us);
    match &m.trace {
        None => buf.put_u8(0),
        Some(t) => {
            buf.put_u8(TRACED);
            buf.put_slice(&t.trace_id.0);
            buf.put_slice(&t.parent.0);
        }
    }
    buf.put_slice(&m.data);
    buf.freeze()
}

/// Decodes a payload received on `channel`'s subject; `data` shares `payload`'s memory.
pub fn decode(channel: Arc<str>, payload: Bytes) -> Result<FabricMessage, DecodeError> {
    let mut r = Reader {
        buf: &payload,
        pos: 0,
    };
    let version = r.byte().ok_or(DecodeError::Empty)?;
    if version != VERSION && version != VERSION_1 {
        return Err(DecodeError::Version(version));
    }
    let epoch = r.varint("epoch")?;
    let seq = r.varint("seq")?;
    let ts_ms = r.varint("timestamp")?;
    let event_len = r.varint("event length")?;
    let event = r.str(event_len, "event")?;
    let key = match r.varint("conflation key length")? {
        0 => None,
        n => Some(r.str(n - 1, "conflation key")?),
    };
    let (sent_us, flags) = if version == VERSION {
        let sent = r.varint("send time")?;
        (sent, r.byte().ok_or(DecodeError::Truncated("flags"))?)
    } else {
        (0, 0)
    };
    if flags & !TRACED != 0 {
        return Err(DecodeError::Invalid(
            "flags",
            format!("unknown bits {flags:#04x}"),
        ));
    }
    let trace = if flags & TRACED != 0 {
        let trace_id = r.array::<16>("trace id")?;
        let parent = r.array::<8>("span id")?;
        Some(TraceContext {
            trace_id: TraceId(trace_id),
            parent: SpanId(parent),
        })
    } else {
        None
    };
    // Every field goes to subscribers as SSE lines: a name or payload that could break a
    // line (a forged message on the fabric) is refused here, as the publish path refuses it.
    herald_proto::validate_event_name(event)
        .map_err(|e| DecodeError::Invalid("event", e.to_string()))?;
    let data = payload.slice(r.pos..);
    if data.iter().any(|&b| b == b'\n' || b == b'\r') {
        return Err(DecodeError::Invalid(
            "data",
            "a line break (published data is one line of JSON)".into(),
        ));
    }
    Ok(FabricMessage {
        channel,
        epoch,
        seq,
        ts_ms,
        event: Arc::from(event),
        data,
        conflation_key: key.map(Arc::from),
        trace,
        sent_us,
    })
}

fn put_varint(buf: &mut BytesMut, v: u64) {
    let mut tmp = [0u8; varint::MAX_LEN];
    buf.put_slice(varint::encode(v, &mut tmp));
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let (v, used) = varint::decode(&self.buf[self.pos..]).map_err(|e| match e {
            VarintError::Truncated => DecodeError::Truncated(what),
            VarintError::Overflow => DecodeError::Overflow(what),
            VarintError::NonMinimal => {
                DecodeError::Invalid(what, "a varint longer than needed".into())
            }
        })?;
        self.pos += used;
        Ok(v)
    }

    fn str(&mut self, len: u64, what: &'static str) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= rest.len())
            .ok_or(DecodeError::Truncated(what))?;
        let s = std::str::from_utf8(&rest[..len]).map_err(|_| DecodeError::Utf8(what))?;
        self.pos += len;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos + N)
            .ok_or(DecodeError::Truncated(what))?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        self.pos += N;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg() -> FabricMessage {
        FabricMessage {
            channel: Arc::from("live:a.b"),
            epoch: 7,
            seq: 300,
            ts_ms: 1_700_000_000_000,
            event: Arc::from("comment"),
            data: Bytes::from_static(br#"{"text":"hi"}"#),
            conflation_key: None,
            trace: None,
            sent_us: 0,
        }
    }

    type Fields = (Arc<str>, u64, u64, u64, Arc<str>, Bytes, Option<Arc<str>>);

    fn fields(m: &FabricMessage) -> Fields {
        (
            m.channel.clone(),
            m.epoch,
            m.seq,
            m.ts_ms,
            m.event.clone(),
            m.data.clone(),
            m.conflation_key.clone(),
        )
    }

    fn assert_same(a: &FabricMessage, b: &FabricMessage) {
        assert_eq!(fields(a), fields(b));
    }

    fn err(payload: &[u8]) -> DecodeError {
        decode(Arc::from("c"), Bytes::copy_from_slice(payload)).unwrap_err()
    }

    #[test]
    fn round_trip_and_data_is_a_slice_of_the_payload() {
        let m = msg();
        let payload = encode(&m);
        let got = decode(m.channel.clone(), payload.clone()).unwrap();
        assert_same(&m, &got);
        let end = payload.as_ptr() as usize + payload.len();
        assert_eq!(got.data.as_ptr() as usize + got.data.len(), end);
    }

    #[test]
    fn a_traced_message_carries_its_context_and_send_time() {
        let mut m = msg();
        m.sent_us = 1_700_000_000_123_456;
        m.trace = Some(TraceContext::random());
        let payload = encode(&m);
        let got = decode(m.channel.clone(), payload.clone()).unwrap();
        assert_same(&m, &got);
        assert_eq!(got.trace, m.trace);
        assert_eq!(got.sent_us, m.sent_us);
        // Cut inside the context: refused, not misread as data.
        let data_at = payload.len() - m.data.len();
        let cut = decode(m.channel.clone(), payload.slice(..data_at - 3)).unwrap_err();
        assert_eq!(cut, DecodeError::Truncated("span id"));
    }

    #[test]
    fn version_1_payloads_still_decode() {
        // What the previous release's dispatchers wrote: no send time, no flags.
        let mut v1 = vec![VERSION_1, 7, 0xac, 0x02, 1, 1, b'e', 0];
        v1.extend_from_slice(br#"{"x":1}"#);
        let got = decode(Arc::from("c"), Bytes::from(v1)).unwrap();
        assert_eq!((got.epoch, got.seq, got.ts_ms), (7, 300, 1));
        assert_eq!(&got.event[..], "e");
        assert_eq!(&got.data[..], br#"{"x":1}"#);
        assert_eq!((got.sent_us, got.trace), (0, None));
    }

    #[test]
    fn empty_key_differs_from_no_key() {
        let mut m = msg();
        m.conflation_key = Some(Arc::from(""));
        let got = decode(m.channel.clone(), encode(&m)).unwrap();
        assert_eq!(got.conflation_key.as_deref(), Some(""));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(err(&[]), DecodeError::Empty);
        assert_eq!(err(&[3, 0, 0, 0]), DecodeError::Version(3));
        assert_eq!(err(&[1, 0x80]), DecodeError::Truncated("epoch"));
        let overflow = [
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        assert_eq!(err(&overflow), DecodeError::Overflow("epoch"));
        // One value, one encoding (the proto's varint codec): no padded forms.
        assert!(matches!(
            err(&[1, 0x80, 0x00]),
            DecodeError::Invalid("epoch", _)
        ));
        assert_eq!(err(&[1, 0, 0, 0, 5, b'a']), DecodeError::Truncated("event"));
        assert_eq!(err(&[1, 0, 0, 0, 1, 0xff, 0]), DecodeError::Utf8("event"));
        assert_eq!(
            err(&[1, 0, 0, 0, 0, 3, b'k']),
            DecodeError::Truncated("conflation key")
        );
        // A length near u64::MAX must not overflow the bounds arithmetic.
        let huge = [
            1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(err(&huge), DecodeError::Truncated("conflation key"));
    }

    #[test]
    fn refuses_what_would_break_sse_lines() {
        for (event, data, what) in [
            ("x\nevent: herald:reset", "{}", "event"),
            ("herald:reset", "{}", "event"),
            ("", "{}", "event"),
            ("message", "{}\ndata: forged", "data"),
            ("message", "{}\r", "data"),
        ] {
            let mut m = msg();
            m.event = Arc::from(event);
            m.data = Bytes::from(data);
            let got = decode(m.channel.clone(), encode(&m));
            assert!(
                matches!(got, Err(DecodeError::Invalid(w, _)) if w == what),
                "{event:?} {data:?}: {got:?}"
            );
        }
    }

    #[test]
    fn u64_max_round_trips() {
        let mut m = msg();
        m.epoch = u64::MAX;
        m.seq = u64::MAX;
        m.ts_ms = u64::MAX;
        assert_same(&m, &decode(m.channel.clone(), encode(&m)).unwrap());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(Arc::from("c"), Bytes::from(bytes));
        }

        #[test]
        fn arbitrary_header_prefix_never_panics(
            head in proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0x7f), Just(0x80), Just(0xff), any::<u8>()], 0..32),
        ) {
            let mut bytes = vec![1u8];
            bytes.extend(head);
            let _ = decode(Arc::from("c"), Bytes::from(bytes));
        }

        #[test]
        fn encode_decode_round_trips(
            epoch in any::<u64>(),
            seq in any::<u64>(),
            ts_ms in any::<u64>(),
            event in "[A-Za-z0-9_.:-]{1,40}",
            key in proptest::option::of("\\PC{0,40}"),
            data in proptest::collection::vec(any::<u8>().prop_filter("one line", |b| *b != b'\n' && *b != b'\r'), 0..256),
        ) {
            prop_assume!(!event.starts_with("herald:"));
            let m = FabricMessage {
                channel: Arc::from("live:x"),
                epoch,
                seq,
                ts_ms,
                event: Arc::from(event.as_str()),
                data: Bytes::from(data),
                conflation_key: key.as_deref().map(Arc::from),
                trace: None,
                sent_us: 0,
            };
            let got = decode(m.channel.clone(), encode(&m)).unwrap();
            prop_assert_eq!(fields(&got), fields(&m));
        }
    }
}
