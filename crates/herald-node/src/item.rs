//! What a connection's queue holds, and what an ephemeral message does when it is full:
//! shared by the queue that holds items and the framing that writes them.

use crate::message::Message;
use bytes::Bytes;
use herald_proto::Position;
use std::sync::Arc;

/// What a connection will write, in order.
pub enum Item {
    /// A reliable message of the stream's channel number `.1`.
    Reliable(Arc<Message>, u16),
    /// An ephemeral message, and what its namespace does when the queue is full.
    Ephemeral(Arc<Message>, u16, SlowPolicy),
    /// Set the starting position of a channel; writes nothing.
    Position(u16, Position),
    /// Set a channel's position and write a `herald:reset` event (`body` has no `id:`).
    Reset(u16, Position, Bytes),
    /// Pre-framed bytes (heartbeats, `retry:`).
    Raw(Bytes),
}

/// What happens to an ephemeral message that meets a full connection queue (per
/// namespace). Reliable messages always disconnect the connection, which then resumes
/// from its cursor: nothing is lost and memory stays bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowPolicy {
    /// The oldest queued ephemeral message makes room (live values stay fresh).
    #[default]
    DropOldest,
    /// The new message is dropped.
    DropNewest,
    /// Like `DropOldest`, and a message replaces a queued one of the same event name
    /// (as `conflation_key` does for keyed messages): latest value wins.
    Conflate,
    /// The connection is closed, as for reliable messages.
    Disconnect,
}

impl SlowPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "drop_oldest" => Self::DropOldest,
            "drop_newest" => Self::DropNewest,
            "conflate" => Self::Conflate,
            "disconnect" => Self::Disconnect,
            _ => return None,
        })
    }
}
