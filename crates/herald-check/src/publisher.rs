//! Publishers: reliable messages with unique idempotency keys, retried with the same key
//! (against another dispatcher when there is one) until a 2xx; every 2xx is recorded. A few
//! acknowledged messages are sent once more on purpose (a client that lost the answer), and
//! some ephemeral messages go out too.

use crate::record::{data_hash, now_ms, AckRec};
use crate::target::Topology;
use crate::verify::{Kind, Violation};
use crate::Phase;
use herald_client::{Client, Publish};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const EVENTS: [&str; 3] = ["message", "comment", "gift"];

/// Counters of all publishers.
#[derive(Debug, Default, Serialize)]
pub struct PublishStats {
    /// Reliable messages started (each with its own key).
    pub messages: u64,
    /// Batch publishes among them (bursts of 10–99 messages to one channel).
    pub batches: u64,
    /// HTTP attempts, retries included.
    pub attempts: u64,
    pub acked: u64,
    /// Acknowledged again on purpose (same key); should answer the same position.
    pub resent: u64,
    /// Failed attempts (errors, timeouts, 5xx) that were retried.
    pub retried: u64,
    /// Messages that never got a 2xx before the run ended.
    pub unacked: u64,
    pub ephemeral: u64,
    pub ephemeral_failed: u64,
}

/// What the publishers share with the run.
#[derive(Default)]
pub struct PubShared {
    pub acks: Mutex<Vec<AckRec>>,
    pub violations: Mutex<Vec<Violation>>,
    messages: AtomicU64,
    batches: AtomicU64,
    attempts: AtomicU64,
    acked: AtomicU64,
    resent: AtomicU64,
    retried: AtomicU64,
    unacked: AtomicU64,
    ephemeral: AtomicU64,
    ephemeral_failed: AtomicU64,
}

impl PubShared {
    pub fn stats(&self) -> PublishStats {
        PublishStats {
            messages: self.messages.load(Relaxed),
            batches: self.batches.load(Relaxed),
            attempts: self.attempts.load(Relaxed),
            acked: self.acked.load(Relaxed),
            resent: self.resent.load(Relaxed),
            retried: self.retried.load(Relaxed),
            unacked: self.unacked.load(Relaxed),
            ephemeral: self.ephemeral.load(Relaxed),
            ephemeral_failed: self.ephemeral_failed.load(Relaxed),
        }
    }
}

pub struct PubCfg {
    pub idx: usize,
    pub seed: u64,
    pub run_tag: String,
    pub channels: Arc<Vec<String>>,
    /// Time between this publisher's messages.
    pub interval: Duration,
    /// One client per dispatcher (same order as the topology's).
    pub clients: Arc<Vec<Client>>,
}

enum Attempt {
    Acked,
    /// Refused for good (a 4xx other than 408/429): recorded as a violation.
    Refused,
    Abandoned,
}

/// Publishes until the phase leaves [`Phase::Run`], then finishes the message in hand
/// (retrying until [`Phase::Stop`]).
pub async fn run(
    cfg: PubCfg,
    topo: Arc<Topology>,
    mut phase: watch::Receiver<Phase>,
    shared: Arc<PubShared>,
) {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = phase.changed() => if r.is_err() { return },
        }
        if *phase.borrow() != Phase::Run {
            return;
        }
        n += 1;
        let channel = cfg.channels[rng.gen_range(0..cfg.channels.len())].clone();
        if rng.gen_bool(0.1) {
            ephemeral(&cfg, &topo, &mut rng, &shared, channel, n).await;
            continue;
        }
        if rng.gen_bool(0.01) {
            // A burst: one batch of many messages to one channel (more than a subscriber's
            // queue holds, so its subscribers are disconnected as slow consumers).
            let len = rng.gen_range(10..100);
            let msgs: Vec<Publish> = (0..len)
                .map(|i| reliable_msg(&cfg, &mut rng, channel.clone(), n, Some(i)))
                .collect();
            shared.messages.fetch_add(len, Relaxed);
            shared.batches.fetch_add(1, Relaxed);
            if !batch_until_acked(&cfg, &topo, &mut rng, &phase, &shared, &msgs).await {
                shared.unacked.fetch_add(len, Relaxed);
            }
            continue;
        }
        let msg = reliable_msg(&cfg, &mut rng, channel, n, None);
        shared.messages.fetch_add(1, Relaxed);
        let first_sent = now_ms();
        match publish_until_acked(&cfg, &topo, &mut rng, &phase, &shared, &msg, first_sent).await {
            Attempt::Acked => {
                if rng.gen_bool(0.03) {
                    // The answer "got lost": send the same key again, maybe elsewhere.
                    shared.resent.fetch_add(1, Relaxed);
                    publish_until_acked(&cfg, &topo, &mut rng, &phase, &shared, &msg, first_sent)
                        .await;
                }
            }
            Attempt::Refused => {}
            Attempt::Abandoned => {
                shared.unacked.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Message `n` of this publisher (`part` of a batch), with its own idempotency key, carried
/// in the payload too (`"k"`), so the stored log shows every key's copies.
fn reliable_msg(
    cfg: &PubCfg,
    rng: &mut StdRng,
    channel: String,
    n: u64,
    part: Option<u64>,
) -> Publish {
    let key = match part {
        Some(i) => format!("{}-p{}-{n}-{i}", cfg.run_tag, cfg.idx),
        None => format!("{}-p{}-{n}", cfg.run_tag, cfg.idx),
    };
    let pad: String = "x".repeat(rng.gen_range(0..200));
    Publish {
        channel,
        data: serde_json::json!({ "p": cfg.idx, "n": n, "i": part, "k": key, "pad": pad }),
        event: Some(EVENTS[rng.gen_range(0..EVENTS.len())].to_owned()),
        idempotency_key: Some(key),
        ephemeral: false,
        conflation_key: None,
        trace: false,
        traceparent: None,
    }
}

/// Publishes a batch until a 2xx (same keys on every attempt); false when abandoned.
async fn batch_until_acked(
    cfg: &PubCfg,
    topo: &Topology,
    rng: &mut StdRng,
    phase: &watch::Receiver<Phase>,
    shared: &PubShared,
    msgs: &[Publish],
) -> bool {
    let first_sent = now_ms();
    let mut avoid = None;
    loop {
        if *phase.borrow() == Phase::Stop {
            return false;
        }
        let d = topo.pick_dispatcher(rng, avoid);
        shared.attempts.fetch_add(1, Relaxed);
        let r = tokio::time::timeout(ATTEMPT_TIMEOUT, cfg.clients[d].publish_batch(msgs)).await;
        match r {
            Ok(Ok(results)) => {
                if results.iter().any(|r| r.error.is_some()) {
                    // Some items failed (207): send the batch again; its idempotency keys turn
                    // the ones already stored into duplicates with their positions.
                    shared.retried.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
                    continue;
                }
                if results.len() != msgs.len() {
                    shared.violations.lock().push(Violation::new(
                        Kind::Malformed,
                        format!(
                            "a batch of {} was answered with {} results",
                            msgs.len(),
                            results.len()
                        ),
                    ));
                }
                let acked = now_ms();
                let mut acks = shared.acks.lock();
                for (m, res) in msgs.iter().zip(results) {
                    let key = m.idempotency_key.clone().unwrap_or_default();
                    let (Some(epoch), Some(seq)) = (res.epoch, res.seq) else {
                        shared.violations.lock().push(Violation::new(
                            Kind::Malformed,
                            format!("batch item {key} was answered without a position: {res:?}"),
                        ));
                        continue;
                    };
                    shared.acked.fetch_add(1, Relaxed);
                    acks.push(AckRec {
                        channel: res.channel,
                        key,
                        epoch,
                        seq,
                        data_hash: data_hash(&m.data),
                        first_sent_ms: first_sent,
                        acked_ms: acked,
                        via: topo.dispatchers[d].name.clone(),
                        duplicate: res.duplicate,
                    });
                }
                return true;
            }
            Ok(Err(e))
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                shared.violations.lock().push(Violation::new(
                    Kind::Availability,
                    format!(
                        "{} refused a valid batch of {} to {}: {e}",
                        topo.dispatchers[d].name,
                        msgs.len(),
                        msgs[0].channel
                    ),
                ));
                return true;
            }
            _ => {
                shared.retried.fetch_add(1, Relaxed);
                if topo.dispatchers.len() > 1 {
                    avoid = Some(d);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
            }
        }
    }
}

async fn publish_until_acked(
    cfg: &PubCfg,
    topo: &Topology,
    rng: &mut StdRng,
    phase: &watch::Receiver<Phase>,
    shared: &PubShared,
    msg: &Publish,
    first_sent: u64,
) -> Attempt {
    let mut avoid = None;
    loop {
        if *phase.borrow() == Phase::Stop {
            return Attempt::Abandoned;
        }
        let d = topo.pick_dispatcher(rng, avoid);
        shared.attempts.fetch_add(1, Relaxed);
        let r = tokio::time::timeout(ATTEMPT_TIMEOUT, cfg.clients[d].publish(msg)).await;
        let key = msg.idempotency_key.clone().unwrap_or_default();
        match r {
            Ok(Ok(res)) => {
                let (Some(epoch), Some(seq)) = (res.epoch, res.seq) else {
                    shared.violations.lock().push(Violation::new(
                        Kind::Malformed,
                        format!("reliable publish {key} was answered without a position: {res:?}"),
                    ));
                    return Attempt::Refused;
                };
                shared.acked.fetch_add(1, Relaxed);
                shared.acks.lock().push(AckRec {
                    channel: res.channel,
                    key,
                    epoch,
                    seq,
                    data_hash: data_hash(&msg.data),
                    first_sent_ms: first_sent,
                    acked_ms: now_ms(),
                    via: topo.dispatchers[d].name.clone(),
                    duplicate: res.duplicate,
                });
                return Attempt::Acked;
            }
            Ok(Err(e))
                if e.status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) =>
            {
                shared.violations.lock().push(Violation::new(
                    Kind::Availability,
                    format!(
                        "{} refused a valid publish ({key} to {}): {e}",
                        topo.dispatchers[d].name, msg.channel
                    ),
                ));
                return Attempt::Refused;
            }
            _ => {
                shared.retried.fetch_add(1, Relaxed);
                if topo.dispatchers.len() > 1 {
                    avoid = Some(d);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(50..300))).await;
            }
        }
    }
}

async fn ephemeral(
    cfg: &PubCfg,
    topo: &Topology,
    rng: &mut StdRng,
    shared: &PubShared,
    channel: String,
    n: u64,
) {
    let conflation_key = rng.gen_bool(0.5).then(|| "count".to_owned());
    let msg = Publish {
        channel,
        data: serde_json::json!({ "p": cfg.idx, "eph": n }),
        event: Some("reaction".to_owned()),
        idempotency_key: None,
        ephemeral: true,
        conflation_key,
        trace: false,
        traceparent: None,
    };
    let d = topo.pick_dispatcher(rng, None);
    shared.ephemeral.fetch_add(1, Relaxed);
    match tokio::time::timeout(ATTEMPT_TIMEOUT, cfg.clients[d].publish(&msg)).await {
        Ok(Ok(res)) if res.seq.is_some() => shared.violations.lock().push(Violation::new(
            Kind::Malformed,
            format!("an ephemeral publish was answered with a position: {res:?}"),
        )),
        Ok(Ok(_)) => {}
        _ => {
            shared.ephemeral_failed.fetch_add(1, Relaxed);
        }
    }
}
