//! W3C trace context (`traceparent`): the trace a message belongs to, and the span that
//! handed it on.

use std::fmt;
use thiserror::Error;

/// 16 bytes naming one trace (32 lowercase hex digits on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TraceId(pub [u8; 16]);

/// 8 bytes naming one span of a trace (16 lowercase hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanId(pub [u8; 8]);

/// Why a `traceparent` or trace id was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TraceParseError {
    #[error("traceparent must be `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`")]
    Shape,
    #[error("an all-zero trace or parent id is invalid")]
    Zero,
    #[error("a trace id is 32 lowercase hex digits")]
    TraceId,
}

/// The trace a message belongs to and the span it came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: TraceId,
    /// The span that handed the message to this process (the publisher's, or a hop's).
    pub parent: SpanId,
}

impl TraceContext {
    /// A new trace (a publish asked to be traced without a context of its own).
    pub fn random() -> Self {
        loop {
            let trace_id = TraceId(rand::random());
            let parent = SpanId(rand::random());
            if trace_id.0 != [0; 16] && parent.0 != [0; 8] {
                return Self { trace_id, parent };
            }
        }
    }

    /// Parses a W3C `traceparent` header. `Ok(None)` when it is valid but not sampled: the
    /// publisher's tracer chose not to record this one, so Herald does not either.
    pub fn parse_traceparent(s: &str) -> Result<Option<Self>, TraceParseError> {
        let s = s.trim();
        let mut parts = s.split('-');
        let (Some(version), Some(trace), Some(parent), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TraceParseError::Shape);
        };
        // Version 00 has exactly four fields; a later version may append more.
        let version = hex_bytes::<1>(version).ok_or(TraceParseError::Shape)?;
        if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
            return Err(TraceParseError::Shape);
        }
        let trace_id = TraceId(hex_bytes::<16>(trace).ok_or(TraceParseError::Shape)?);
        let parent = SpanId(hex_bytes::<8>(parent).ok_or(TraceParseError::Shape)?);
        let flags = hex_bytes::<1>(flags).ok_or(TraceParseError::Shape)?[0];
        if trace_id.0 == [0; 16] || parent.0 == [0; 8] {
            return Err(TraceParseError::Zero);
        }
        Ok((flags & 1 == 1).then_some(Self { trace_id, parent }))
    }

    /// The `traceparent` naming this context (always sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.parent)
    }

    /// The same trace, handed on by a new span of this process.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            parent: SpanId::random(),
        }
    }
}

impl SpanId {
    /// A new span id (never all zero).
    pub fn random() -> Self {
        SpanId(rand::random::<[u8; 8]>().map(|b| b.max(1)))
    }
}

impl TraceId {
    /// Parses 32 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, TraceParseError> {
        let id = hex_bytes::<16>(s).ok_or(TraceParseError::TraceId)?;
        if id == [0; 16] {
            return Err(TraceParseError::Zero);
        }
        Ok(Self(id))
    }
}

/// Exactly `2 * N` lowercase hex digits.
fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({})", self.traceparent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_round_trips() {
        let c = TraceContext::parse_traceparent(EXAMPLE)
            .expect("valid")
            .expect("sampled");
        assert_eq!(c.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent.to_string(), "00f067aa0ba902b7");
        assert_eq!(c.traceparent(), EXAMPLE);
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.parent, c.parent);
    }

    #[test]
    fn unsampled_and_invalid_traceparents() {
        let unsampled = EXAMPLE.replace("-01", "-00");
        assert_eq!(TraceContext::parse_traceparent(&unsampled), Ok(None));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(
                TraceContext::parse_traceparent(bad),
                Err(TraceParseError::Shape),
                "{bad:?}"
            );
        }
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(
            TraceContext::parse_traceparent(zero),
            Err(TraceParseError::Zero)
        );
        // A later version may carry more fields; the first four are read.
        assert!(
            TraceContext::parse_traceparent(&format!("01{}-more", &EXAMPLE[2..]))
                .expect("a later version")
                .is_some()
        );
    }

    #[test]
    fn trace_ids_parse_strictly() {
        let id = TraceId::parse("4bf92f3577b34da6a3ce929d0e0e4736").expect("valid");
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceId::parse("4bf92f").is_err());
        assert!(TraceId::parse(&"0".repeat(32)).is_err());
    }
}
