//! `herald bench`: a load generator that measures Herald (or nginx + nchan, for comparison)
//! the same way — connections, deliveries checked for loss and order, publish→receive
//! latency, and the server's memory and CPU read from /proc. Against a cluster it publishes
//! through the dispatchers, subscribes at the nodes, and accounts CPU and memory per role
//! (dispatchers, nodes, NATS, Cassandra) and the processes' own counters (CQL requests,
//! NATS messages, Cassandra statements and Paxos writes); the store scenarios price Cassandra
//! alone.

mod coordinator;
mod counters;
mod cql;
mod failover;
mod flash;
pub mod floor;
mod measure;
mod parse;
pub mod procstat;
mod publisher;
mod report;
mod roles;
mod store_price;
pub mod target;
pub mod worker;

pub use coordinator::{run, Args, Scenario};
pub use report::Report;

use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;

pub(crate) type Hist = Histogram<u64>;

/// Microsecond histogram from 1 µs to 10 minutes, 3 significant digits.
pub(crate) fn new_hist() -> Hist {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn encode_hist(h: &Hist) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub(crate) fn decode_hist(s: &str) -> anyhow::Result<Hist> {
    if s.is_empty() {
        return Ok(new_hist());
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(s)?;
    let h: Hist = Deserializer::new()
        .deserialize(&mut &raw[..])
        .map_err(|e| anyhow::anyhow!("reading histogram: {e:?}"))?;
    Ok(h)
}
