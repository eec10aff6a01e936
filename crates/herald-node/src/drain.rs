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
        let mut last_step = start;
        let mut told = 0;
        while told < total {
            let due = due(total, told, window, start.elapsed(), last_step.elapsed());
            last_step = Instant::now();
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

/// How many of a drain's `total` streams should have been told once `elapsed` of `window`
/// has passed, `since_last` after the previous step told `told`. On schedule that is the
/// even share; a drain that fell behind (its process starved of CPU) catches up at no more
/// than [`CATCH_UP`]× the even rate, so the other nodes never see the burst a late schedule
/// would make. Only past twice the window does the rest go at once (the process is about to
/// be stopped anyway).
fn due(
    total: usize,
    told: usize,
    window: Duration,
    elapsed: Duration,
    since_last: Duration,
) -> usize {
    if window.is_zero() || elapsed >= window * 2 {
        return total;
    }
    let share = (elapsed.as_secs_f64() / window.as_secs_f64()).min(1.0);
    let on_schedule = (share * total as f64).ceil() as usize;
    let even_per_sec = total as f64 / window.as_secs_f64();
    let most = told + (even_per_sec * since_last.as_secs_f64() * CATCH_UP).ceil() as usize;
    on_schedule.min(most).clamp(told + 1, total)
}

/// How much faster than the even rate a late drain may catch up.
const CATCH_UP: f64 = 1.25;

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
    fn a_late_drain_catches_up_gently() {
        let w = Duration::from_secs(10);
        let ms = Duration::from_millis;
        // On schedule: the even share (1,000 streams over 10 s: 100 a second).
        assert_eq!(due(1000, 0, w, ms(20), ms(20)), 2);
        assert_eq!(due(1000, 498, w, ms(5000), ms(20)), 500);
        // A first step 2 s late owes 200, within 1.25× of 2 s at the even rate …
        assert_eq!(due(1000, 0, w, ms(2000), ms(2000)), 200);
        // … but 300 behind, a step 1 s after the last tells 125 more, not 300.
        assert_eq!(due(1000, 200, w, ms(5000), ms(1000)), 325);
        // Always progress, and everything past twice the window.
        assert_eq!(due(1000, 10, w, ms(100), ms(0)), 11);
        assert_eq!(due(1000, 10, w, ms(20_000), ms(20)), 1000);
        assert_eq!(due(5, 0, Duration::ZERO, ms(0), ms(0)), 5);
    }

    #[test]
    fn the_frame_sets_retry_and_names_the_event() {
        let f = reconnect_frame(1234, ReconnectReason::Drain);
        assert_eq!(
            std::str::from_utf8(&f).unwrap(),
            "retry: 1234\n\nevent: herald:reconnect\ndata: {\"after_ms\":1234,\"reason\":\"drain\"}\n\n"
        );
    }
}
