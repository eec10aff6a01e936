//! Message tracing: the hops a traced message took through one process (accepted, forwarded,
//! stored, put on the fabric, received by a node, queued for and written to its connections),
//! kept for a while so the message's whole journey can be gathered from every process of a
//! cluster and read as one timeline.
//!
//! A message is traced when its publisher asks (`"trace": true`, or a W3C `traceparent`
//! whose sampled flag is set) or when it falls in the sampled fraction; the
//! [`TraceContext`] then travels with it to the owner dispatcher and over the fabric.

#![forbid(unsafe_code)]

mod context;
mod fanout;
mod histogram;
mod journal;
mod span;

pub use context::{SpanId, TraceContext, TraceId, TraceParseError};
pub use fanout::{Fanout, FanoutCounts};
pub use histogram::{between_us, Histogram, HopLatency};
pub use journal::{Hop, Journal, Query, Step};
pub use span::{SpanKind, SpanView};

/// Microseconds since the Unix epoch: the clock every hop is stamped with, so hops of
/// different processes line up (as well as their clocks agree).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
