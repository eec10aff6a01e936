//! The fabric carries published messages from dispatchers to connection nodes: the
//! [`Fabric`] trait and the in-process implementation the single binary uses.
//!
//! A fabric may lose messages; nodes detect gaps by `seq` and repair them from the store,
//! so the fabric never decides correctness. With the `nats` feature, [`NatsFabric`] carries
//! them over NATS core subjects between the processes of a cluster.

#![forbid(unsafe_code)]

#[cfg(feature = "nats")]
mod ask;
#[cfg(feature = "nats")]
mod codec;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
pub use ask::{Answer, Teller};
#[cfg(feature = "nats")]
pub use nats::{NatsAuth, NatsFabric, NatsOptions, NatsStats};

use async_trait::async_trait;
use bytes::Bytes;
pub use herald_trace::TraceContext;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::mpsc;

/// One published message in flight between a dispatcher and the nodes.
#[derive(Clone, Debug)]
pub struct FabricMessage {
    pub channel: Arc<str>,
    /// Epoch of the channel's log; 0 for ephemeral messages.
    pub epoch: u64,
    /// Position in the channel; 0 for ephemeral messages (they carry no seq).
    pub seq: u64,
    pub ts_ms: u64,
    pub event: Arc<str>,
    /// The publisher's JSON on one line.
    pub data: Bytes,
    /// Ephemeral only: a newer message with the same key replaces an undelivered older one.
    pub conflation_key: Option<Arc<str>>,
    /// Set when the message is traced: every process that handles it records its hops.
    pub trace: Option<TraceContext>,
    /// When the dispatcher handed it to the fabric (µs since the Unix epoch; 0: unknown),
    /// for the fabric's share of the latency.
    pub sent_us: u64,
}

impl FabricMessage {
    pub fn is_ephemeral(&self) -> bool {
        self.seq == 0
    }
}

/// What a fabric hands to the node it feeds.
#[derive(Clone, Debug)]
pub enum Incoming {
    Message(FabricMessage),
    /// Messages of this channel (`None`: of every channel) may have been missed, e.g. while
    /// a subscription was being set up or the fabric reconnected: compare with the store.
    Resync(Option<Arc<str>>),
}

/// Errors of a fabric.
#[derive(Debug, Error)]
pub enum FabricError {
    #[error("fabric closed")]
    Closed,
    #[error("fabric unavailable: {0}")]
    Unavailable(String),
}

/// Transport from dispatchers to nodes.
#[async_trait]
pub trait Fabric: Send + Sync + 'static {
    /// Hands messages to the nodes, in order. Reliable messages wait for room; ephemeral
    /// ones may be dropped when the fabric is saturated.
    async fn publish(&self, messages: Vec<FabricMessage>) -> Result<(), FabricError>;

    /// Tells the fabric whether this node has subscribers of `channel` (interest-based routing).
    fn set_interest(&self, channel: &str, interested: bool);

    /// Whether the fabric can carry messages right now (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }
}

/// Fabric inside one process: a bounded queue into the node's fan-out loop.
#[derive(Clone)]
pub struct InProcessFabric {
    tx: mpsc::Sender<Incoming>,
    dropped_ephemeral: Arc<std::sync::atomic::AtomicU64>,
}

/// Creates the in-process fabric and the receiving end the node consumes.
pub fn in_process(capacity: usize) -> (InProcessFabric, mpsc::Receiver<Incoming>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        InProcessFabric {
            tx,
            dropped_ephemeral: Arc::default(),
        },
        rx,
    )
}

impl InProcessFabric {
    /// Ephemeral messages dropped because the node's queue was full.
    pub fn dropped_ephemeral(&self) -> u64 {
        self.dropped_ephemeral
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[async_trait]
impl Fabric for InProcessFabric {
    async fn publish(&self, messages: Vec<FabricMessage>) -> Result<(), FabricError> {
        for m in messages {
            if m.is_ephemeral() {
                match self.tx.try_send(Incoming::Message(m)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.dropped_ephemeral
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return Err(FabricError::Closed),
                }
            } else {
                self.tx
                    .send(Incoming::Message(m))
                    .await
                    .map_err(|_| FabricError::Closed)?;
            }
        }
        Ok(())
    }

    fn set_interest(&self, _channel: &str, _interested: bool) {
        // Every message reaches the one local node; there is no routing to narrow.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> FabricMessage {
        FabricMessage {
            channel: Arc::from("live:1"),
            epoch: if seq == 0 { 0 } else { 1 },
            seq,
            ts_ms: 0,
            event: Arc::from("message"),
            data: Bytes::from_static(b"{}"),
            conflation_key: None,
            trace: None,
            sent_us: 0,
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_drops_ephemeral_when_full() {
        let (fabric, mut rx) = in_process(2);
        fabric.publish(vec![msg(1), msg(2)]).await.unwrap();
        fabric.publish(vec![msg(0)]).await.unwrap();
        assert_eq!(fabric.dropped_ephemeral(), 1);
        for want in [1, 2] {
            match rx.recv().await.unwrap() {
                Incoming::Message(m) => assert_eq!(m.seq, want),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
