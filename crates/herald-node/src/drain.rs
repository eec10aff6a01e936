//! Moving clients off a node without a reconnect storm. A drain (deploy, scale-in) tells
//! every stream, in band, to reconnect elsewhere and ends it, spread evenly over the drain
//! window, so the other nodes see about connections ÷ window new connections a second. A
//! stream past its maximum lifetime gets the same, which rebalances a cluster after
//! scale-out. The client resumes from its cursor, so nothing is lost.

use crate::queue::{CloseReason, ConnQueue, Item};
use crate::stats::Counters;
use crate::Node;
use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a drain ends the next share of its streams.
const STEP: Duration = Duration::from_millis(20);

/// Why a stream is asked to reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReconnectReason {
    Drain,
    Lifetime,
}

impl ReconnectReason {
    fn as_str(self) -> &'static str {
        match self {
            ReconnectReason::Drain => "drain",
            ReconnectReason::Lifetime => "lifetime",
        }
    }
}

/// `retry:` (for EventSource) and the `herald:reconnect` event (for SDKs): reconnect after
/// `after_ms`, resuming from the last cursor.
pub(crate) fn reconnect_frame(after_ms: u64, reason: ReconnectReason) -> Bytes {
    let mut out = herald_proto::retry_field(after_ms);
    let data = format!(
        r#"{{"after_ms":{after_ms},"reason":"{}"}}"#,
        reason.as_str()
    );
    herald_proto::write_event(&mut out, None, Some("herald:reconnect"), data.as_bytes());
    Bytes::from(out)
}

impl Node {
    /// Asks `q` to reconnect (after a random delay up to the node's retry jitter) and ends
    /// it once what is queued before the request has been written.
    pub(crate) fn send_reconnect(&self, q: &ConnQueue, reason: ReconnectReason) {
        if q.is_closed() {
            return;
        }
        let jitter = self.config.retry_jitter.as_millis() as u64;
        let after = if jitter == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=jitter)
        };
        q.push_unbounded(Item::Raw(reconnect_frame(after, reason)));
        q.close(CloseReason::Shutdown, false);
        Counters::bump(match reason {
            ReconnectReason::Drain => &self.counters.drain_reconnects,
            ReconnectReason::Lifetime => &self.counters.lifetime_reconnects,
        });
    }

    /// Refuses new streams, then asks every open stream to reconnect elsewhere, spread
    /// evenly (in random order) over `window`. Returns when the last one has been asked.
    pub async fn drain(&self, window: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
        let mut all: Vec<Arc<ConnQueue>> = Vec::new();
        self.registry.for_each(|q| all.push(q.clone()));
        all.shuffle(&mut rand::thread_rng());
        let total = all.len();
        tracing::info!(
            streams = total,
            window_ms = window.as_millis() as u64,
            "draining: asking streams to reconnect elsewhere"
        );
        let start = Instant::now();
        let mut told = 0;
        while told < total {
            let share = if window.is_zero() {
                1.0
            } else {
                (start.elapsed().as_secs_f64() / window.as_secs_f64()).min(1.0)
            };
            let due = ((share * total as f64).ceil() as usize).clamp(told + 1, total);
            for q in &all[told..due] {
                self.send_reconnect(q, ReconnectReason::Drain);
            }
            told = due;
            if told < total {
                tokio::time::sleep(STEP).await;
            }
        }
    }

    /// Asks the streams past their maximum lifetime to reconnect.
    pub(crate) fn end_expired(&self, now: Instant) {
        self.registry.for_each(|q| {
            if q.expires().is_some_and(|t| t <= now) {
                self.send_reconnect(q, ReconnectReason::Lifetime);
            }
        });
    }
}

/// When a stream opened now reaches `lifetime`: 80–100 % of it, so streams opened together
/// (after a deploy) do not all come back at once.
pub(crate) fn expiry(lifetime: Duration) -> Instant {
    let f = rand::thread_rng().gen_range(0.8..=1.0);
    Instant::now() + lifetime.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_sets_retry_and_names_the_event() {
        let f = reconnect_frame(1234, ReconnectReason::Drain);
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "retry: 1234\n\nevent: herald:reconnect\ndata: {\"after_ms\":1234,\"reason\":\"drain\"}\n\n"
        );
    }
}
