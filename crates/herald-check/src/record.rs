//! What a run records: the channels, every acknowledged publish, and the final history of
//! each channel. Payloads are kept as 64-bit hashes of their canonical JSON, so a long run's
//! record stays small.

use serde_json::Value;
use std::collections::HashMap;

/// FNV-1a 64.
pub fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Hash of a JSON value's canonical text (the same for the published value, the stored one
/// and the delivered one when they are equal as JSON).
pub fn data_hash(v: &Value) -> u64 {
    fnv64(serde_json::to_string(v).unwrap_or_default().as_bytes())
}

/// One channel the run uses and the retention (in messages) its namespace was given.
#[derive(Clone, Debug)]
pub struct ChannelSpec {
    pub name: String,
    pub retention_count: u64,
}

/// The run's channels, addressed by index.
#[derive(Debug)]
pub struct Universe {
    pub channels: Vec<ChannelSpec>,
    /// When the run started (ms since the Unix epoch): times in violation details are
    /// relative to it.
    pub t0_ms: u64,
    by_name: HashMap<String, usize>,
    by_hash: HashMap<u64, usize>,
}

impl Universe {
    pub fn new(channels: Vec<ChannelSpec>) -> Self {
        let by_name = channels
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let by_hash = channels
            .iter()
            .enumerate()
            .map(|(i, c)| (herald_proto::channel_hash(&c.name), i))
            .collect();
        Self {
            channels,
            t0_ms: 0,
            by_name,
            by_hash,
        }
    }

    pub fn with_t0(mut self, t0_ms: u64) -> Self {
        self.t0_ms = t0_ms;
        self
    }

    /// `t=12.3s` for a time of the run.
    pub fn t(&self, ms: u64) -> String {
        format!("t={:.1}s", ms.saturating_sub(self.t0_ms) as f64 / 1000.0)
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn id_of_hash(&self, hash: u64) -> Option<usize> {
        self.by_hash.get(&hash).copied()
    }

    pub fn name(&self, id: usize) -> &str {
        &self.channels[id].name
    }

    pub fn hash(&self, id: usize) -> u64 {
        herald_proto::channel_hash(&self.channels[id].name)
    }
}

/// A 2xx answer to a reliable publish.
#[derive(Clone, Debug)]
pub struct AckRec {
    pub channel: String,
    pub key: String,
    pub epoch: u64,
    pub seq: u64,
    pub data_hash: u64,
    /// When the first attempt with this key was sent (ms since the Unix epoch): the message
    /// cannot have been stored before.
    pub first_sent_ms: u64,
    pub acked_ms: u64,
    /// The process that answered.
    pub via: String,
    /// The server said it had seen the key before.
    pub duplicate: bool,
}

/// One message of a channel's final history.
#[derive(Clone, Debug)]
pub struct HistMsg {
    pub seq: u64,
    pub data_hash: u64,
    /// The publisher's idempotency key, carried inside the payload (`"k"`).
    pub key: Option<String>,
    /// Server timestamp (ms).
    pub ts: u64,
}

/// Everything `GET /v1/channels/{ch}/history` returned after publishing stopped.
#[derive(Clone, Debug, Default)]
pub struct FinalHistory {
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: Vec<HistMsg>,
}

impl FinalHistory {
    /// From a stored message's JSON payload.
    pub fn message(seq: u64, data: &Value, ts: u64) -> HistMsg {
        HistMsg {
            seq,
            data_hash: data_hash(data),
            key: data.get("k").and_then(Value::as_str).map(str::to_owned),
            ts,
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
