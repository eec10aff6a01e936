//! Herald wire formats: channel names, resume cursors, SSE framing and parsing, JSON bodies and
//! HS256 subscriber tokens. Pure data transformations — no I/O, no async runtime.
//!
//! Every public item of every module is re-exported at the crate root.

#![forbid(unsafe_code)]

pub mod channel;
pub mod cursor;
pub mod envelope;
pub mod error;
pub mod sse;
pub mod token;

mod b64;
mod fnv;
mod num;
pub mod varint;

pub use channel::*;
pub use cursor::*;
pub use envelope::*;
pub use error::ProtoError;
pub use sse::*;
pub use token::*;
