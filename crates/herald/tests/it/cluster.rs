//! Cluster mode end to end: `herald dispatcher` and `herald node` processes over a real
//! Cassandra (`HERALD_CQL`) and a real `nats-server`, with processes killed under load.
//! Each test uses a keyspace of its own and a NATS server of its own.
//!
//! Run: `HERALD_CQL=127.0.0.1:19042 cargo test -p herald --test it cluster:: -- --test-threads=1`
//! (see `cluster_support` for skipping and logs).

use crate::cluster_support::*;
use crate::common::{next_event, take};
use anyhow::{bail, Context};
use herald_client::{Client, Publish};
use herald_proto::Cursor;
use herald_proto::PublishResult;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn by_channel(events: &[Got]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for g in events {
        out.entry(g.channel.clone()).or_default().push(g.seq);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_crosses_from_dispatcher_b_to_node_a() -> anyhow::Result<()> {
    let Some(cluster) = Cluster::start(
        "message_crosses_from_dispatcher_b_to_node_a",
        Spec::default(),
    )
    .await?
    else {
        return Ok(());
    };
    let chans = ["cross:a", "cross:b", "cross:c"];
    let mut subs = cluster.subscribe_every_node("cross:*", &chans).await?;
    let (da, db) = (
        cluster.dispatchers[0].publisher(),
        cluster.dispatchers[1].publisher(),
    );
    // First through dispatcher B (d1), then through A (d0), on every channel.
    let mut sent: BTreeMap<(String, u64), (PublishResult, Publish)> = BTreeMap::new();
    for (via, client) in [("d1", &db), ("d0", &da)] {
        for (i, ch) in chans.iter().enumerate() {
            let mut m = Publish::new(*ch, json!({ "via": via, "i": i }));
            if via == "d1" {
                m.event = Some("comment".into());
            }
            let r = client
                .publish(&m)
                .await
                .with_context(|| format!("publish to {ch} through {via}"))?;
            let seq = r.seq.context("reliable publish answers a seq")?;
            assert_eq!(
                seq,
                if via == "d1" { 1 } else { 2 },
                "{ch}: the publish through {via} got seq {seq}"
            );
            assert!(r.epoch.is_some(), "{ch}: publish answers an epoch");
            sent.insert((ch.to_string(), seq), (r, m));
        }
    }
    for ch in chans {
        let e1 = sent[&(ch.to_owned(), 1)].0.epoch;
        let e2 = sent[&(ch.to_owned(), 2)].0.epoch;
        assert_eq!(e1, e2, "{ch}: both dispatchers used the same epoch");
    }

    for (k, sub) in subs.iter_mut().enumerate() {
        let node = &cluster.nodes[k].name;
        let events = take(sub, sent.len(), WAIT).await.with_context(|| {
            format!(
                "subscriber on {node}: receiving the {} messages",
                sent.len()
            )
        })?;
        let gots: Vec<Got> = events.iter().map(|e| got(e, k)).collect();
        for (ch, seqs) in by_channel(&gots) {
            assert_eq!(
                seqs,
                vec![1, 2],
                "subscriber on {node}: {ch} in order, once"
            );
        }
        for (ev, g) in events.iter().zip(&gots) {
            let (r, m) = sent
                .get(&(g.channel.clone(), g.seq))
                .with_context(|| format!("{node}: unexpected event {}", ev.data))?;
            assert_eq!(Some(g.epoch), r.epoch, "{node}: {} epoch", g.channel);
            assert_eq!(g.data, m.data, "{node}: {} seq {} data", g.channel, g.seq);
            assert_eq!(
                ev.event,
                m.event.as_deref().unwrap_or("message"),
                "{node}: {} seq {} event name",
                g.channel,
                g.seq
            );
            assert!(ev.id.is_some(), "{node}: reliable events carry id:");
        }
        // The last cursor names every channel at seq 2.
        let cursor = Cursor::decode(sub.last_event_id().unwrap_or_default())?;
        for ch in chans {
            assert_eq!(
                cursor.get(ch).map(|p| (p.epoch, p.seq)),
                Some((sent[&(ch.to_owned(), 2)].0.epoch.unwrap_or(0), 2)),
                "{node}: the cursor of the last event positions {ch}"
            );
        }
    }
    // History through the other dispatcher has both messages of each channel.
    for ch in chans {
        let h = full_history(&db, ch).await?;
        let got: Vec<(u64, serde_json::Value)> = h
            .iter()
            .map(|m| {
                (
                    m.seq,
                    serde_json::from_str(m.data.get()).unwrap_or_default(),
                )
            })
            .collect();
        let want: Vec<(u64, serde_json::Value)> = (1..=2)
            .map(|s| (s, sent[&(ch.to_owned(), s)].1.data.clone()))
            .collect();
        assert_eq!(got, want, "{ch}: history through d1");
    }
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_to_another_node_resumes_gap_free() -> anyhow::Result<()> {
    let spec = Spec {
        nodes: 3,
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start("reconnect_to_another_node_resumes_gap_free", spec).await?
    else {
        return Ok(());
    };
    let chans = ["gap:a", "gap:b", "gap:c"];
    let pubs = cluster.publishers();
    let mut data: BTreeMap<(String, u64), serde_json::Value> = BTreeMap::new();
    let publish_round = |from: u64, to: u64| {
        let pubs = pubs.clone();
        async move {
            let mut out = Vec::new();
            for n in from..to {
                let ch = chans[(n % 3) as usize];
                let d = json!({ "n": n });
                let r = pubs[(n % 2) as usize]
                    .publish(&Publish::new(ch, d.clone()))
                    .await
                    .with_context(|| format!("publish #{n} to {ch}"))?;
                out.push(((ch.to_owned(), r.seq.context("seq")?), d));
            }
            anyhow::Ok(out)
        }
    };
    let (n, m) = (30u64, 30u64);

    let client_a = cluster.nodes[0].subscriber(&["gap:*"]);
    let mut sub = client_a
        .subscribe(&chans, Some(&from_start(&chans)))
        .await?;
    data.extend(publish_round(0, n).await?);
    let first: Vec<Got> = take(&mut sub, n as usize, WAIT)
        .await
        .context("first N on node n0")?
        .iter()
        .map(|e| got(e, 0))
        .collect();
    for (ch, seqs) in by_channel(&first) {
        assert_eq!(
            seqs,
            (1..=n / 3).collect::<Vec<_>>(),
            "n0: {ch} 1..N/3 in order"
        );
    }
    let cursor = sub
        .last_event_id()
        .context("a cursor after N events")?
        .to_owned();
    drop(sub);

    data.extend(publish_round(n, n + m).await?);
    let client_c = cluster.nodes[2].subscriber(&["gap:*"]);
    let mut sub = client_c.subscribe(&chans, Some(&cursor)).await?;
    let rest: Vec<Got> = take(&mut sub, m as usize, WAIT)
        .await
        .context("the M missed messages on node n2")?
        .iter()
        .map(|e| got(e, 2))
        .collect();
    for (ch, seqs) in by_channel(&rest) {
        assert_eq!(
            seqs,
            ((n / 3 + 1)..=((n + m) / 3)).collect::<Vec<_>>(),
            "n2 after resume: {ch} exactly the missed seqs, in order, once"
        );
    }
    for g in first.iter().chain(&rest) {
        assert_eq!(
            Some(&g.data),
            data.get(&(g.channel.clone(), g.seq)),
            "{} seq {} data",
            g.channel,
            g.seq
        );
    }
    // Nothing else queued: the next event is the next live one.
    let live = pubs[1]
        .publish(&Publish::new("gap:b", json!({ "live": true })))
        .await?;
    let ev = next_event(&mut sub, WAIT)
        .await
        .context("the live message after resume")?;
    let g = got(&ev, 2);
    assert_eq!(
        (g.channel.as_str(), Some(g.seq), &g.data),
        ("gap:b", live.seq, &json!({ "live": true })),
        "after the replay the next event is the live one (no duplicate replayed)"
    );
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_kill_clients_resume_elsewhere() -> anyhow::Result<()> {
    node_leaves("node_kill_clients_resume_elsewhere", Leave::Kill9).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_drain_moves_clients_elsewhere_gap_free() -> anyhow::Result<()> {
    node_leaves("node_drain_moves_clients_elsewhere_gap_free", Leave::Drain).await
}

/// How n0 goes away.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leave {
    Kill9,
    /// SIGTERM with a 2 s drain: every stream is told to reconnect, spread over it.
    Drain,
}

async fn node_leaves(test: &str, how: Leave) -> anyhow::Result<()> {
    let spec = Spec {
        nodes: 3,
        node_drain: (how == Leave::Drain).then_some(Duration::from_secs(2)),
        ..Spec::default()
    };
    let Some(mut cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let chans = ["kill:a", "kill:b", "kill:c"];
    let bases = cluster.node_bases();
    let subs: Vec<BgSub> = (0..20)
        .map(|i| {
            let order = if i % 2 == 0 {
                vec![0, 1, 2]
            } else {
                vec![0, 2, 1]
            };
            BgSub::spawn(bases.clone(), order, &["kill:*"], &chans)
        })
        .collect();
    wait_until(
        WAIT,
        || "20 subscribers connected to n0".into(),
        || subs.iter().all(|s| lock(&s.log).connected_to == Some(0)),
    )
    .await?;
    let publisher = BgPub::spawn(cluster.publishers(), &chans, 0);
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "60 acknowledged publishes and 30 deliveries per subscriber (acked {})",
                publisher.acked_len()
            )
        },
        || publisher.acked_len() >= 60 && subs.iter().all(|s| s.count() >= 30),
    )
    .await?;

    match how {
        Leave::Kill9 => cluster.nodes[0].kill9(),
        Leave::Drain => cluster.nodes[0].signal(libc::SIGTERM),
    }
    let acked_at_kill = publisher.acked_len();
    wait_until(
        WAIT,
        || {
            let on: Vec<Option<usize>> = subs.iter().map(|s| lock(&s.log).connected_to).collect();
            format!("every subscriber reconnected to n1/n2 (connected to: {on:?})")
        },
        || {
            subs.iter().all(|s| {
                let l = lock(&s.log);
                l.reconnects >= 1 && matches!(l.connected_to, Some(1 | 2))
            })
        },
    )
    .await?;
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "60 more acknowledged publishes after the kill (acked {})",
                publisher.acked_len()
            )
        },
        || publisher.acked_len() >= acked_at_kill + 60,
    )
    .await?;
    let errors = publisher.errors.load(Ordering::Relaxed);
    let acked = publisher.stop().await;
    let want = acked_heads(&acked);
    wait_until(
        Duration::from_secs(30),
        || {
            let behind: Vec<(usize, BTreeMap<String, u64>)> = subs
                .iter()
                .enumerate()
                .map(|(i, s)| (i, heads(&lock(&s.log).events)))
                .filter(|(_, h)| {
                    want.iter()
                        .any(|(c, s)| h.get(c).copied().unwrap_or(0) < *s)
                })
                .collect();
            format!("every subscriber to reach {want:?}; behind: {behind:?}")
        },
        || {
            subs.iter().all(|s| {
                let h = heads(&lock(&s.log).events);
                want.iter()
                    .all(|(c, s)| h.get(c).copied().unwrap_or(0) >= *s)
            })
        },
    )
    .await?;
    for (i, s) in subs.into_iter().enumerate() {
        let log = s.stop().await;
        assert!(
            log.anomalies.is_empty(),
            "subscriber {i}: unexpected events {:?}",
            log.anomalies
        );
        check_stream(&format!("subscriber {i}"), &log.events, &chans, &acked)?;
        assert!(
            log.events.iter().any(|g| g.node != 0),
            "subscriber {i} received messages after moving off n0"
        );
        if how == Leave::Drain {
            assert_eq!(
                log.told_to_reconnect, 1,
                "subscriber {i}: one herald:reconnect from the draining n0"
            );
        }
    }
    if how == Leave::Drain {
        wait_until(
            Duration::from_secs(15),
            || "n0 to exit after its drain".into(),
            || !cluster.nodes[0].alive(),
        )
        .await?;
    }
    eprintln!(
        "{test}: {} acknowledged ({} when n0 went), {errors} publish errors",
        acked.len(),
        acked_at_kill
    );
    cluster.passed();
    Ok(())
}

/// How long one publish attempt may take before the publisher tries the other dispatcher.
const ATTEMPT: Duration = Duration::from_secs(2);

/// One publish of the dispatcher-kill test.
#[derive(Clone, Debug)]
struct Done {
    key: String,
    channel: String,
    seq: u64,
    epoch: Option<u64>,
    attempts: u32,
}

/// Publishes `m` until a 2xx, starting with `clients[first]` and moving to the next one after
/// any error or an [`ATTEMPT`] timeout (same idempotency key every time).
async fn publish_failover(
    clients: &[Client],
    first: usize,
    m: &Publish,
    limit: Duration,
) -> anyhow::Result<(PublishResult, u32)> {
    let deadline = Instant::now() + limit;
    let mut k = first;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match tokio::time::timeout(ATTEMPT, clients[k % clients.len()].publish(m)).await {
            Ok(Ok(r)) => return Ok((r, attempts)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timeout after {ATTEMPT:?}"),
        };
        if Instant::now() > deadline {
            bail!(
                "publish {:?} to {} got no 2xx within {limit:?} ({attempts} attempts, last: {err})",
                m.idempotency_key,
                m.channel
            );
        }
        k += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_kill_exactly_once() -> anyhow::Result<()> {
    dispatcher_fault("dispatcher_kill_exactly_once", Fault::Kill).await
}

/// A dispatcher that stalls (SIGSTOP, like a long GC pause or a frozen VM) for longer than the
/// membership TTL, while the other takes over its channels, then comes back (SIGCONT) with a
/// stale view of ownership and of the seqs: ownership is soft, so the conditional writes and
/// idempotency keys alone must keep every channel exactly-once and gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatcher_pause_split_brain_exactly_once() -> anyhow::Result<()> {
    dispatcher_fault("dispatcher_pause_split_brain_exactly_once", Fault::Pause).await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of dispatcher d0.
    Kill,
    /// SIGSTOP of d0 until d1 has taken over and published more, then SIGCONT.
    Pause,
}

async fn dispatcher_fault(test: &str, fault: Fault) -> anyhow::Result<()> {
    let ttl = Duration::from_millis(2000);
    let spec = Spec {
        dispatchers: 2,
        nodes: 2,
        membership_ttl: ttl,
        ..Spec::default()
    };
    let Some(mut cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let chans = ["once:a", "once:b", "once:c", "once:d"];
    let bases = cluster.node_bases();
    let subs: Vec<BgSub> = (0..4)
        .map(|i| BgSub::spawn(bases.clone(), vec![i % 2, (i + 1) % 2], &["once:*"], &chans))
        .collect();
    wait_until(
        WAIT,
        || "4 subscribers connected".into(),
        || subs.iter().all(|s| lock(&s.log).connected_to.is_some()),
    )
    .await?;

    let done: Arc<Mutex<Vec<Done>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = cluster.publishers();
    let mut workers = Vec::new();
    for w in 0..4usize {
        let (done, failed, stop, clients) =
            (done.clone(), failed.clone(), stop.clone(), clients.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("w{w}-{i}");
                let ch = chans[(i + w) % chans.len()];
                let mut m = Publish::new(ch, json!({ "k": key }));
                m.idempotency_key = Some(key.clone());
                match publish_failover(&clients, (i + w) % 2, &m, Duration::from_secs(30)).await {
                    Ok((r, attempts)) => lock(&done).push(Done {
                        key,
                        channel: ch.to_owned(),
                        seq: r.seq.unwrap_or(0),
                        epoch: r.epoch,
                        attempts,
                    }),
                    Err(e) => {
                        lock(&failed).push(format!("{e:#}"));
                        return;
                    }
                }
            }
        }));
    }
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "90 acknowledged publishes before the kill (have {})",
                lock(&done).len()
            )
        },
        || lock(&done).len() >= 90,
    )
    .await?;

    match fault {
        Fault::Kill => cluster.dispatchers[0].kill9(),
        Fault::Pause => cluster.dispatchers[0].signal(libc::SIGSTOP),
    }
    let killed = Instant::now();
    let acked_at_kill = lock(&done).len();
    // Probe every channel through the survivor: how long until publishing works again.
    let survivor = [cluster.dispatchers[1].publisher()];
    let mut recovery = Duration::ZERO;
    let mut probes = Vec::new();
    for ch in chans {
        let key = format!("probe-{ch}");
        let mut m = Publish::new(ch, json!({ "k": key }));
        m.idempotency_key = Some(key.clone());
        let (r, attempts) = publish_failover(&survivor, 0, &m, Duration::from_secs(20))
            .await
            .with_context(|| format!("probe publish to {ch} through the surviving dispatcher"))?;
        recovery = recovery.max(killed.elapsed());
        probes.push(Done {
            key,
            channel: ch.to_owned(),
            seq: r.seq.unwrap_or(0),
            epoch: r.epoch,
            attempts,
        });
    }
    // A paused owner still accepts connections, so a forward to it hangs until the
    // publisher's attempt timeout; allow one of those on top.
    let limit = match fault {
        Fault::Kill => ttl * 3,
        Fault::Pause => ttl * 3 + ATTEMPT,
    };
    assert!(
        recovery <= limit,
        "publishing on every channel through the surviving dispatcher took {recovery:?} after \
         the {fault:?}; expected within {limit:?} (membership TTL {ttl:?})"
    );
    let mut resumed_probes = Vec::new();
    if fault == Fault::Pause {
        // Let the survivor move every channel well past where d0 stopped, then wake d0 up.
        wait_until(
            Duration::from_secs(30),
            || {
                format!(
                    "30 acknowledged publishes while d0 is paused (have {})",
                    lock(&done).len()
                )
            },
            || lock(&done).len() >= acked_at_kill + 30 || !lock(&failed).is_empty(),
        )
        .await?;
        cluster.dispatchers[0].signal(libc::SIGCONT);
        // The woken dispatcher serves publishes again (on its stale state it must lose the
        // conditional writes, re-read and continue, not wedge or reuse a seq).
        let d0 = [cluster.dispatchers[0].publisher()];
        for ch in chans {
            let key = format!("resumed-{ch}");
            let mut m = Publish::new(ch, json!({ "k": key }));
            m.idempotency_key = Some(key.clone());
            let (r, attempts) = publish_failover(&d0, 0, &m, Duration::from_secs(15))
                .await
                .with_context(|| format!("publish to {ch} through d0 after SIGCONT"))?;
            resumed_probes.push(Done {
                key,
                channel: ch.to_owned(),
                seq: r.seq.unwrap_or(0),
                epoch: r.epoch,
                attempts,
            });
        }
    }
    let acked_at_kill = match fault {
        Fault::Kill => acked_at_kill,
        Fault::Pause => lock(&done).len(),
    };
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "90 more acknowledged publishes after the {fault:?} (have {})",
                lock(&done).len()
            )
        },
        || lock(&done).len() >= acked_at_kill + 90 || !lock(&failed).is_empty(),
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(40), w).await;
    }
    let failed = lock(&failed).clone();
    assert!(
        failed.is_empty(),
        "publishes that never got a 2xx: {failed:?}"
    );
    let mut all = lock(&done).clone();
    all.extend(probes);
    all.extend(resumed_probes);
    let retried = all.iter().filter(|d| d.attempts > 1).count();

    // No seq answered twice, each key answered with one position.
    let mut by_pos: BTreeMap<(String, u64), String> = BTreeMap::new();
    for d in &all {
        assert!(
            d.seq > 0 && d.epoch.is_some(),
            "{}: 2xx without a position",
            d.key
        );
        if let Some(other) = by_pos.insert((d.channel.clone(), d.seq), d.key.clone()) {
            panic!(
                "{} seq {} was answered to two different publishes: {other} and {}",
                d.channel, d.seq, d.key
            );
        }
    }
    // History (through the survivor): seqs 1..n, each acknowledged key exactly once, at its seq.
    let mut stored: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for ch in chans {
        let h = full_history(&survivor[0], ch).await?;
        let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{ch}: history seqs contiguous from 1"
        );
        let keys: Vec<(u64, String)> = h
            .iter()
            .map(|m| {
                let v: serde_json::Value = serde_json::from_str(m.data.get()).unwrap_or_default();
                (m.seq, v["k"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
        for (seq, k) in &keys {
            if let Some(first) = seen.insert(k, *seq) {
                let answered: Vec<u64> =
                    all.iter().filter(|d| &d.key == k).map(|d| d.seq).collect();
                panic!(
                    "{ch}: idempotency key {k} stored twice, at seq {first} and at seq {seq} \
                     (the publisher's 2xx said seq {answered:?})"
                );
            }
        }
        stored.insert(ch.to_owned(), keys);
    }
    for d in &all {
        let keys = &stored[&d.channel];
        assert_eq!(
            keys.get((d.seq - 1) as usize).map(|(_, k)| k.as_str()),
            Some(d.key.as_str()),
            "{}: key {} acknowledged at seq {} but history has something else there",
            d.channel,
            d.key,
            d.seq
        );
    }
    // Every subscriber stream: exactly the history, in order.
    let want: BTreeMap<String, u64> = stored
        .iter()
        .map(|(c, k)| (c.clone(), k.len() as u64))
        .collect();
    wait_until(
        Duration::from_secs(30),
        || format!("every subscriber to reach {want:?}"),
        || {
            subs.iter().all(|s| {
                let h = heads(&lock(&s.log).events);
                want.iter()
                    .all(|(c, s)| h.get(c).copied().unwrap_or(0) >= *s)
            })
        },
    )
    .await?;
    let acked: BTreeMap<(String, u64), serde_json::Value> = all
        .iter()
        .map(|d| ((d.channel.clone(), d.seq), json!({ "k": d.key })))
        .collect();
    for (i, s) in subs.into_iter().enumerate() {
        let log = s.stop().await;
        assert!(
            log.anomalies.is_empty(),
            "subscriber {i}: unexpected events {:?}",
            log.anomalies
        );
        check_stream(&format!("subscriber {i}"), &log.events, &chans, &acked)?;
        for ch in chans {
            let keys: Vec<&str> = log
                .events
                .iter()
                .filter(|g| g.channel == ch)
                .map(|g| g.data["k"].as_str().unwrap_or_default())
                .collect();
            let hist: Vec<&str> = stored[ch].iter().map(|(_, k)| k.as_str()).collect();
            assert_eq!(keys, hist, "subscriber {i}: {ch} stream equals the history");
        }
    }
    eprintln!(
        "{test}: {} acknowledged, {retried} needed a retry, recovery {recovery:?}",
        all.len()
    );
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_load_no_gap() -> anyhow::Result<()> {
    let Some(mut cluster) =
        Cluster::start("nats_restart_under_load_no_gap", Spec::default()).await?
    else {
        return Ok(());
    };
    let chans = ["nats:a", "nats:b", "nats:c"];
    let bases = cluster.node_bases();
    let subs: Vec<BgSub> = (0..4)
        .map(|i| BgSub::spawn(bases.clone(), vec![i % 2, (i + 1) % 2], &["nats:*"], &chans))
        .collect();
    wait_until(
        WAIT,
        || "4 subscribers connected".into(),
        || subs.iter().all(|s| lock(&s.log).connected_to.is_some()),
    )
    .await?;
    let publisher = BgPub::spawn(cluster.publishers(), &chans, 0);
    wait_until(
        Duration::from_secs(30),
        || format!("60 acknowledged publishes (have {})", publisher.acked_len()),
        || publisher.acked_len() >= 60 && subs.iter().all(|s| s.count() >= 20),
    )
    .await?;

    cluster.nats.kill9();
    // Keep publishing while NATS is down (a number of attempts, not a fixed time; their
    // outcome does not matter, only what was acknowledged).
    let attempts = publisher.attempts.load(Ordering::Relaxed);
    let outage = wait_until(
        Duration::from_secs(10),
        || "40 publish attempts while NATS is down".into(),
        || publisher.attempts.load(Ordering::Relaxed) >= attempts + 40,
    )
    .await;
    if let Err(e) = outage {
        eprintln!("nats_restart: note: {e:#} (publishes seem to block while NATS is down)");
    }
    cluster
        .nats
        .restart()
        .context("restarting nats-server on the same port")?;
    let acked_at_restart = publisher.acked_len();
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .context("every process ready again after the NATS restart")?;
    wait_until(
        Duration::from_secs(30),
        || {
            format!(
                "60 acknowledged publishes after the NATS restart (have {})",
                publisher.acked_len()
            )
        },
        || publisher.acked_len() >= acked_at_restart + 60,
    )
    .await?;
    let errors = publisher.errors.load(Ordering::Relaxed);
    let acked = publisher.stop().await;
    let want = acked_heads(&acked);
    wait_until(
        Duration::from_secs(30),
        || {
            let hs: Vec<BTreeMap<String, u64>> =
                subs.iter().map(|s| heads(&lock(&s.log).events)).collect();
            format!(
                "every subscriber to reach {want:?} (nodes repair gaps from the store); at {hs:?}"
            )
        },
        || {
            subs.iter().all(|s| {
                let h = heads(&lock(&s.log).events);
                want.iter()
                    .all(|(c, s)| h.get(c).copied().unwrap_or(0) >= *s)
            })
        },
    )
    .await?;
    let mut reconnects = 0;
    for (i, s) in subs.into_iter().enumerate() {
        let log = s.stop().await;
        assert!(
            log.anomalies.is_empty(),
            "subscriber {i}: unexpected events {:?}",
            log.anomalies
        );
        check_stream(&format!("subscriber {i}"), &log.events, &chans, &acked)?;
        reconnects += log.reconnects;
    }
    let (mut repairs, mut gap_disconnects) = (0.0, 0.0);
    for n in &cluster.nodes {
        repairs += n.metric("herald_gap_repairs_total").await;
        gap_disconnects += n.metric("herald_gap_disconnects_total").await;
    }
    eprintln!(
        "nats_restart: {} acknowledged ({acked_at_restart} at the restart), {errors} publish errors, \
         nodes: {repairs} gap repairs, {gap_disconnects} gap disconnects; subscribers: {reconnects} reconnects",
        acked.len()
    );
    cluster.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_start_before_nats_and_become_ready() -> anyhow::Result<()> {
    let spec = Spec {
        dispatchers: 1,
        nodes: 1,
        nats_down_at_start: true,
        ..Spec::default()
    };
    let Some(mut cluster) =
        Cluster::start("roles_start_before_nats_and_become_ready", spec).await?
    else {
        return Ok(());
    };
    // Up and listening, but not ready: NATS is not there yet.
    for p in cluster.dispatchers.iter().chain(&cluster.nodes) {
        assert_eq!(
            p.readyz().await,
            503,
            "{}: /readyz while NATS is down",
            p.name
        );
    }
    cluster.nats.restart()?;
    cluster
        .wait_ready(WAIT)
        .await
        .context("ready once NATS is up (the processes retry in the background)")?;
    for p in cluster
        .dispatchers
        .iter_mut()
        .chain(cluster.nodes.iter_mut())
    {
        assert!(p.alive(), "{} kept running while NATS was down", p.name);
    }
    let chans = ["late:a"];
    let mut sub = cluster.nodes[0]
        .subscriber(&["late:*"])
        .subscribe(&chans, Some(&from_start(&chans)))
        .await?;
    let r = cluster.dispatchers[0]
        .publisher()
        .publish(&Publish::new("late:a", json!({ "hello": 1 })))
        .await?;
    let g = got(&next_event(&mut sub, WAIT).await?, 0);
    assert_eq!(
        (g.channel.as_str(), Some(g.seq), &g.data),
        ("late:a", r.seq, &json!({ "hello": 1 })),
        "a message flows once NATS is up"
    );
    cluster.passed();
    Ok(())
}

/// A batch whose channels belong to two dispatchers, one of them stalled (SIGSTOP): the
/// answer is per item (207): the items the live owner wrote have their positions, the ones
/// forwarded to the stalled owner say `maybe_stored` (the request reached it). Retried with
/// their idempotency keys once it is back, every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_two_owners_answers_per_item_when_one_stalls() -> anyhow::Result<()> {
    let test = "a_batch_over_two_owners_answers_per_item_when_one_stalls";
    let spec = Spec {
        nodes: 1,
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    const N: usize = 16;
    let messages: Vec<Publish> = (0..N)
        .map(|i| {
            let mut m = Publish::new(format!("split:{i}"), json!({ "i": i }));
            m.idempotency_key = Some(format!("k{i}"));
            m
        })
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let post = |msgs: Vec<Publish>| {
        http.post(format!("{}/v1/publish/batch", cluster.dispatchers[0].base))
            .bearer_auth(crate::common::API_KEY)
            .json(&json!({ "messages": msgs }))
            .send()
    };
    cluster.dispatchers[1].signal(libc::SIGSTOP);
    let resp = post(messages.clone()).await?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await?;
    cluster.dispatchers[1].signal(libc::SIGCONT);
    assert_eq!(status, 207, "a batch over two owners, one stalled: {body}");
    let results = body["results"].as_array().context("results")?;
    assert_eq!(results.len(), N, "{body}");
    let mut failed = Vec::new();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["channel"], format!("split:{i}"), "{body}");
        if r["seq"].is_u64() {
            assert!(r.get("error").is_none(), "{r}");
        } else {
            assert_eq!(r["error"]["code"], "forward_failed", "{r}");
            assert_eq!(r["error"]["maybe_stored"], true, "{r}");
            failed.push(messages[i].clone());
        }
    }
    assert!(
        !failed.is_empty() && failed.len() < N,
        "both owners had channels: {} failed of {N}",
        failed.len()
    );
    // The stalled owner is back (or its leases moved): the retry settles each failed item.
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = post(failed.clone()).await?;
        if resp.status() == 200 {
            break;
        }
        let text = resp.text().await?;
        assert!(Instant::now() < deadline, "the retry kept failing: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reader = cluster.dispatchers[0].publisher();
    for (i, m) in messages.iter().enumerate() {
        let h = full_history(&reader, &m.channel).await?;
        let data: Vec<serde_json::Value> = h
            .iter()
            .map(|x| serde_json::from_str(x.data.get()).unwrap_or_default())
            .collect();
        assert_eq!(data, vec![json!({ "i": i })], "{}: stored once", m.channel);
    }
    cluster.passed();
    Ok(())
}
