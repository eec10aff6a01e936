//! The behaviour every [`Store`] backend must show. Backends' test suites call [`run_all`]
//! with a fresh, empty store; each check uses channels of its own so they can share one.

use crate::{Ack, AppendBatch, AppendEntry, Retention, Store, StoreError};
use bytes::Bytes;
use std::time::Duration;

/// Runs every conformance check; panics with a description on the first violation.
pub async fn run_all<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_then_read_in_order(store).await?;
    channels_are_isolated(store).await?;
    meta_tracks_head(store).await?;
    paged_reads(store).await?;
    idempotency_records(store).await?;
    trim_by_count(store).await?;
    trim_by_age(store).await?;
    trim_many_channels(store).await?;
    lists_channels(store).await?;
    acks_move_forward_only(store).await?;
    racing_acks_keep_the_latest(store).await?;
    Ok(())
}

/// Acks of one user sent at once (two tabs, retries) leave the latest, whatever order the
/// store applies them in.
pub async fn racing_acks_keep_the_latest<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    const RACERS: u64 = 12;
    for round in 0..4u64 {
        let user = format!("racer{round}");
        // The highest first, so a store that applies them in arrival order must not let
        // the lower ones that land later move it back.
        let acks = (1..=RACERS).rev().map(|seq| {
            let ack = Ack {
                epoch: 3,
                seq: round * 100 + seq,
                ts_ms: seq,
            };
            store.ack_set("conf:race", &user, ack)
        });
        for r in futures_util::future::join_all(acks).await {
            r?;
        }
        let last = store.ack_get("conf:race", &user).await?;
        assert_eq!(
            last.map(|a| a.seq),
            Some(round * 100 + RACERS),
            "round {round}: racing acks left an older one"
        );
    }
    Ok(())
}

pub async fn acks_move_forward_only<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let at = |epoch, seq| Ack {
        epoch,
        seq,
        ts_ms: 5,
    };
    assert_eq!(store.ack_get("conf:acks", "ann").await?, None);
    assert_eq!(store.ack_set("conf:acks", "ann", at(7, 3)).await?, at(7, 3));
    // An older ack (a slower device) does not move the cursor back.
    assert_eq!(store.ack_set("conf:acks", "ann", at(7, 2)).await?, at(7, 3));
    assert_eq!(store.ack_set("conf:acks", "ann", at(7, 9)).await?, at(7, 9));
    // A later epoch (the log was recreated) wins whatever its seq.
    assert_eq!(store.ack_set("conf:acks", "ann", at(8, 1)).await?, at(8, 1));
    assert_eq!(store.ack_get("conf:acks", "ann").await?, Some(at(8, 1)));
    store.ack_set("conf:acks", "bob", at(7, 4)).await?;
    store.ack_set("conf:acks", "cy", at(7, 5)).await?;
    store.ack_set("conf:acks2", "ann", at(7, 6)).await?;
    let all = store.acks("conf:acks", "", 10).await?;
    let users: Vec<&str> = all.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(
        users,
        vec!["ann", "bob", "cy"],
        "acks of one channel, by user"
    );
    let page = store.acks("conf:acks", "ann", 1).await?;
    assert_eq!(
        page,
        vec![("bob".to_owned(), at(7, 4))],
        "paged after a user"
    );
    assert_eq!(store.ack_get("conf:acks2", "bob").await?, None);
    Ok(())
}

fn entry(channel: &str, epoch: u64, seq: u64, ts_ms: u64) -> AppendEntry {
    AppendEntry {
        channel: channel.to_owned(),
        epoch,
        seq,
        ts_ms,
        event: "message".to_owned(),
        data: Bytes::from(format!("{{\"n\":{seq}}}")),
        idempotency: None,
        ttl_secs: 0,
        fence: 0,
    }
}

async fn append_seqs<S: Store + ?Sized>(
    store: &S,
    channel: &str,
    seqs: std::ops::RangeInclusive<u64>,
    ts_ms: u64,
) -> Result<(), StoreError> {
    let entries = seqs.map(|s| entry(channel, 11, s, ts_ms)).collect();
    store.append(AppendBatch { entries }).await
}

pub async fn append_then_read_in_order<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:order", 1..=3, 1_000).await?;
    append_seqs(store, "conf:order", 4..=5, 1_000).await?;
    let got = store.read_range("conf:order", 0, 100).await?;
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5],
        "read_range returns all seqs in order"
    );
    assert_eq!(got[2].data, Bytes::from_static(b"{\"n\":3}"));
    assert_eq!(got[2].event, "message");
    assert_eq!(got[2].epoch, 11);
    assert_eq!(got[2].ts_ms, 1_000);
    let after = store.read_range("conf:order", 3, 100).await?;
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert!(store.read_range("conf:order", 5, 100).await?.is_empty());
    assert!(store
        .read_range("conf:order", u64::MAX, 100)
        .await?
        .is_empty());
    Ok(())
}

pub async fn channels_are_isolated<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:iso", 1..=2, 1_000).await?;
    append_seqs(store, "conf:iso2", 1..=4, 1_000).await?;
    assert_eq!(store.read_range("conf:iso", 0, 100).await?.len(), 2);
    assert_eq!(store.read_range("conf:iso2", 0, 100).await?.len(), 4);
    assert!(store.read_range("conf:never", 0, 100).await?.is_empty());
    assert!(store.channel_meta("conf:never").await?.is_none());
    Ok(())
}

pub async fn meta_tracks_head<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:meta", 1..=7, 1_000).await?;
    let meta = store
        .channel_meta("conf:meta")
        .await?
        .expect("meta exists after append");
    assert_eq!((meta.epoch, meta.first_seq, meta.last_seq), (11, 1, 7));
    Ok(())
}

pub async fn paged_reads<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:page", 1..=25, 1_000).await?;
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.read_range("conf:page", after, 10).await?;
        assert!(page.len() <= 10, "limit honoured");
        let Some(last) = page.last() else { break };
        after = last.seq;
        seen.extend(page.iter().map(|m| m.seq));
    }
    assert_eq!(seen, (1..=25).collect::<Vec<_>>());
    Ok(())
}

pub async fn idempotency_records<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    let mut e = entry("conf:idem", 11, 1, 1_000);
    e.idempotency = Some(("order-1".to_owned(), 5_000));
    store.append(AppendBatch { entries: vec![e] }).await?;
    let rec = store
        .idempotency_get("conf:idem", "order-1", 2_000)
        .await?
        .expect("record found before expiry");
    assert_eq!((rec.epoch, rec.seq), (11, 1));
    assert!(store
        .idempotency_get("conf:idem", "order-1", 5_000)
        .await?
        .is_none());
    assert!(store
        .idempotency_get("conf:idem", "order-2", 2_000)
        .await?
        .is_none());
    assert!(store
        .idempotency_get("conf:other", "order-1", 2_000)
        .await?
        .is_none());
    let removed = store.expire_idempotency(6_000).await?;
    // A store whose records expire by TTL has nothing to sweep.
    assert!(removed >= 1 || store.expires_by_ttl());
    assert!(store
        .idempotency_get("conf:idem", "order-1", 6_000)
        .await?
        .is_none());
    Ok(())
}

pub async fn trim_by_count<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:trimc", 1..=10, 1_000).await?;
    let retention = Retention {
        max_count: 4,
        max_age: Duration::from_secs(3600),
    };
    let out = store.trim("conf:trimc", retention, 2_000).await?;
    assert_eq!(out.first_seq, 7);
    let seqs: Vec<u64> = store
        .read_range("conf:trimc", 0, 100)
        .await?
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    let meta = store.channel_meta("conf:trimc").await?.expect("meta");
    assert_eq!((meta.first_seq, meta.last_seq), (7, 10));
    // A page read with its meta starts at the meta's first seq.
    let (meta, page) = store.read_page("conf:trimc", 0, 100).await?;
    let meta = meta.expect("meta");
    assert_eq!((meta.first_seq, meta.last_seq), (7, 10));
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(store.read_page("conf:none", 0, 10).await?.0.is_none());
    // Appending continues the log; the next trim keeps the newest four.
    append_seqs(store, "conf:trimc", 11..=12, 1_000).await?;
    store.trim("conf:trimc", retention, 2_000).await?;
    let meta = store.channel_meta("conf:trimc").await?.expect("meta");
    assert_eq!((meta.first_seq, meta.last_seq), (9, 12));
    Ok(())
}

pub async fn trim_by_age<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:trima", 1..=3, 1_000).await?;
    append_seqs(store, "conf:trima", 4..=5, 50_000).await?;
    let retention = Retention {
        max_count: 1_000,
        max_age: Duration::from_secs(10),
    };
    store.trim("conf:trima", retention, 55_000).await?;
    let meta = store.channel_meta("conf:trima").await?.expect("meta");
    assert_eq!((meta.first_seq, meta.last_seq), (4, 5));
    // Everything expired: the log is empty but the head stays, so seqs continue.
    store.trim("conf:trima", retention, 100_000).await?;
    let meta = store.channel_meta("conf:trima").await?.expect("meta");
    assert_eq!((meta.first_seq, meta.last_seq), (6, 5));
    assert!(store.read_range("conf:trima", 0, 10).await?.is_empty());
    Ok(())
}

pub async fn trim_many_channels<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:many1", 1..=5, 1_000).await?;
    append_seqs(store, "conf:many2", 1..=3, 1_000).await?;
    let keep = |n| Retention {
        max_count: n,
        max_age: Duration::from_secs(3600),
    };
    let removed = store
        .trim_many(
            vec![
                ("conf:many1".into(), keep(2)),
                ("conf:many2".into(), keep(10)),
            ],
            2_000,
        )
        .await?;
    assert_eq!(removed, 3);
    let m1 = store.channel_meta("conf:many1").await?.expect("meta");
    let m2 = store.channel_meta("conf:many2").await?.expect("meta");
    assert_eq!((m1.first_seq, m2.first_seq), (4, 1));
    Ok(())
}

pub async fn lists_channels<S: Store + ?Sized>(store: &S) -> Result<(), StoreError> {
    append_seqs(store, "conf:list", 1..=1, 1_000).await?;
    let all = store.list_channels().await?;
    assert!(all.iter().any(|c| c == "conf:list"));
    Ok(())
}
