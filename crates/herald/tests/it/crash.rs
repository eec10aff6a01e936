//! Durability under `kill -9`: every publish that got a 2xx survives, seqs continue, and a
//! client resuming with its last cursor receives everything, in order, once.

use crate::common::*;
use herald_client::Publish;
use herald_proto::{Cursor, Position};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CHANNELS: [&str; 3] = ["crash:a", "crash:b", "crash:c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_publish() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), &Opts::default())?;
    let base = server.base.clone();
    // A subscriber following all channels from the start; its cursor is what it resumes with.
    let sc = server.subscriber(&["crash:*"]);
    let mut from_start = Cursor::default();
    for c in CHANNELS {
        from_start.set(c, Position::default());
    }
    let mut sub = sc.subscribe(&CHANNELS, Some(&from_start.encode())).await?;

    // Acknowledged publishes: (channel, seq) -> n
    let acked: Arc<Mutex<BTreeMap<(String, u64), u64>>> = Arc::default();
    let mut publishers = Vec::new();
    for w in 0..4u64 {
        let acked = acked.clone();
        let client = herald_client::Client::new(&base).with_api_key(API_KEY);
        publishers.push(tokio::spawn(async move {
            let mut n = w * 1_000_000;
            loop {
                n += 1;
                let channel = CHANNELS[(n % 3) as usize];
                let outcome = if n % 4 == 0 {
                    let batch: Vec<Publish> = (0..5).map(|k| msg(channel, n * 10 + k)).collect();
                    client.publish_batch(&batch).await.map(|rs| {
                        rs.into_iter()
                            .zip(batch)
                            .map(|(r, m)| (r.seq.unwrap_or(0), m.data["n"].as_u64().unwrap_or(0)))
                            .collect::<Vec<_>>()
                    })
                } else {
                    let m = msg(channel, n);
                    client
                        .publish(&m)
                        .await
                        .map(|r| vec![(r.seq.unwrap_or(0), n)])
                };
                match outcome {
                    Ok(list) => {
                        let mut a = acked.lock().unwrap_or_else(|e| e.into_inner());
                        for (seq, v) in list {
                            a.insert((channel.to_owned(), seq), v);
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Let a few hundred publishes through, reading the stream meanwhile.
    let mut received: Vec<(String, u64)> = Vec::new();
    while acked.lock().map(|a| a.len()).unwrap_or(0) < 400 {
        let ev = next_event(&mut sub, WAIT).await?;
        received.push(pos(&ev));
    }
    let cursor = sub.last_event_id().map(str::to_owned);
    server.kill9();
    for p in publishers {
        let _ = tokio::time::timeout(Duration::from_secs(30), p).await;
    }
    drop(sub);
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(acked.len() >= 400);

    let server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    let mut last_seq = BTreeMap::new();
    for c in CHANNELS {
        let mut stored = BTreeMap::new();
        let mut after = 0;
        loop {
            let page = p.history(c, after, 1000).await?;
            for m in &page.messages {
                let v: serde_json::Value = serde_json::from_str(m.data.get())?;
                stored.insert(m.seq, v["n"].as_u64().unwrap_or(u64::MAX));
            }
            after = page.next_after;
            if !page.has_more {
                break;
            }
        }
        let seqs: Vec<u64> = stored.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{c}: no gaps"
        );
        for ((ch, seq), n) in acked.iter().filter(|((ch, _), _)| ch == c) {
            assert_eq!(
                stored.get(seq),
                Some(n),
                "{ch} seq {seq} acknowledged but not stored as sent"
            );
        }
        last_seq.insert(c, seqs.len() as u64);
        // The log continues where it stopped.
        let next = p.publish(&msg(c, 0)).await?;
        assert_eq!(next.seq, Some(seqs.len() as u64 + 1), "{c}: seq continues");
    }

    // Resume with the cursor the client had when the server died.
    let sc = server.subscriber(&["crash:*"]);
    let resume = cursor.unwrap_or_else(|| from_start.encode());
    let mut sub = sc.subscribe(&CHANNELS, Some(&resume)).await?;
    let expected: u64 =
        CHANNELS.iter().map(|c| last_seq[c] + 1).sum::<u64>() - received.len() as u64;
    let rest = take(&mut sub, expected as usize, Duration::from_secs(30)).await?;
    received.extend(rest.iter().map(pos));
    for c in CHANNELS {
        let seqs: Vec<u64> = received
            .iter()
            .filter(|(ch, _)| ch == c)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (1..=last_seq[c] + 1).collect::<Vec<_>>(),
            "{c}: every message once, in order, across the crash"
        );
    }
    Ok(())
}
