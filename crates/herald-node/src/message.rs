//! A message as the node sends it: encoded once into SSE bytes and shared by every connection.

use bytes::Bytes;
use herald_fabric::FabricMessage;
use herald_proto::{channel_hash, encode_cursor_into, write_envelope, write_event, Position};
use herald_store::StoredMessage;
use herald_trace::Fanout;
use std::sync::Arc;

/// One message, framed once per node.
#[derive(Debug)]
pub struct Message {
    pub channel: Arc<str>,
    pub hash: u64,
    pub epoch: u64,
    /// 0 for ephemeral messages.
    pub seq: u64,
    pub conflation_key: Option<Arc<str>>,
    /// The event name (what the `conflate` policy conflates unkeyed ephemeral messages by).
    pub event: Arc<str>,
    /// `event:` and `data:` lines and the blank line; no `id:`.
    pub body: Bytes,
    /// `id:` for a stream of just this channel, then `body`. Empty for ephemeral messages.
    pub single: Bytes,
    /// Set when the message is traced: its fan-out on this node is counted there.
    pub trace: Option<Arc<Fanout>>,
}

impl Message {
    pub fn is_ephemeral(&self) -> bool {
        self.seq == 0
    }

    /// `trace`: where its fan-out is counted, when it is traced.
    pub fn from_fabric(m: &FabricMessage, trace: Option<Arc<Fanout>>) -> Arc<Self> {
        Self::encode(
            m.channel.clone(),
            m.epoch,
            m.seq,
            m.ts_ms,
            &m.event,
            &m.data,
            m.conflation_key.clone(),
            trace,
        )
    }

    /// An ephemeral event made by the node itself (`herald:occupancy`, …).
    pub fn node_event(channel: Arc<str>, event: &str, data: &[u8], ts_ms: u64) -> Arc<Self> {
        Self::encode(channel, 0, 0, ts_ms, event, data, None, None)
    }

    pub fn from_stored(channel: Arc<str>, m: &StoredMessage) -> Arc<Self> {
        Self::encode(
            channel, m.epoch, m.seq, m.ts_ms, &m.event, &m.data, None, None,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        channel: Arc<str>,
        epoch: u64,
        seq: u64,
        ts_ms: u64,
        event: &str,
        data: &[u8],
        conflation_key: Option<Arc<str>>,
        trace: Option<Arc<Fanout>>,
    ) -> Arc<Self> {
        let ephemeral = seq == 0;
        let mut envelope = Vec::with_capacity(data.len() + channel.len() + 64);
        let (e, s) = if ephemeral {
            (None, None)
        } else {
            (Some(epoch), Some(seq))
        };
        write_envelope(&mut envelope, &channel, e, s, ts_ms, data);
        let mut body = Vec::with_capacity(envelope.len() + event.len() + 16);
        write_event(&mut body, None, Some(event), &envelope);
        let hash = channel_hash(&channel);
        let single = if ephemeral {
            Bytes::new()
        } else {
            let mut id = Vec::with_capacity(48);
            encode_cursor_into(&[(hash, Position { epoch, seq })], &mut id);
            let mut single = Vec::with_capacity(body.len() + id.len() + 8);
            write_event(&mut single, Some(&id), Some(event), &envelope);
            Bytes::from(single)
        };
        Arc::new(Self {
            channel,
            hash,
            epoch,
            seq,
            conflation_key,
            event: Arc::from(event),
            body: Bytes::from(body),
            single,
            trace,
        })
    }
}
