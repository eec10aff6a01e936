//! The conformance suite against a real Cassandra / ScyllaDB node, named by `HERALD_CQL`
//! (`host:port`). Without it the test says it is skipped and passes.

#[cfg(not(feature = "scylla"))]
#[test]
fn scylla_conformance() {
    println!("SKIPPED scylla_conformance: herald-store built without `--features scylla`");
}

#[cfg(feature = "scylla")]
mod cql {
    use herald_store::{
        conformance, AppendBatch, AppendEntry, ScyllaOptions, ScyllaStore, Store, StoreError,
    };
    use std::time::{SystemTime, UNIX_EPOCH};

    fn contact_points() -> Option<Vec<String>> {
        let v = std::env::var("HERALD_CQL").ok()?;
        let points: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        (!points.is_empty()).then_some(points)
    }

    #[tokio::test]
    async fn scylla_conformance() -> anyhow::Result<()> {
        let Some(points) = contact_points() else {
            println!(
            "SKIPPED scylla_conformance: HERALD_CQL is not set (e.g. HERALD_CQL=127.0.0.1:9042); Cassandra/ScyllaDB conformance not run"
        );
            return Ok(());
        };
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let keyspace = format!("herald_test_{stamp}_{}", std::process::id());
        let opts = ScyllaOptions::new(points.clone(), keyspace.clone());

        // Connecting before the schema exists fails clearly.
        let err = match ScyllaStore::connect(opts.clone()).await {
            Ok(_) => anyhow::bail!("connect succeeded without a schema"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("herald migrate"), "unclear error: {err}");

        let admin = ScyllaStore::connect_unchecked(opts.clone()).await?;
        admin.migrate().await?;
        admin.migrate().await?; // idempotent
        let store = ScyllaStore::connect(opts).await?;
        let result = checks(&store, &points, &keyspace).await;
        admin.drop_keyspace().await?;
        result?;
        println!("scylla conformance passed against keyspace {keyspace}");
        Ok(())
    }

    fn entry(channel: &str, seq: u64) -> AppendEntry {
        AppendEntry {
            channel: channel.into(),
            epoch: 11,
            seq,
            ts_ms: 1,
            event: "message".into(),
            data: bytes::Bytes::from_static(b"{}"),
            idempotency: None,
            ttl_secs: 0,
        }
    }

    async fn checks(store: &ScyllaStore, points: &[String], keyspace: &str) -> anyhow::Result<()> {
        conformance::run_all(store).await?;

        // A second writer of the same seq loses with Conflict, and changes nothing.
        let lost = store
            .append(AppendBatch {
                entries: vec![entry("conf:order", 3), entry("conf:order", 4)],
            })
            .await;
        assert!(
            matches!(&lost, Err(StoreError::Conflict { lost, .. }) if lost == &vec![("conf:order".to_owned(), 3)]),
            "rewrite of seqs 3-4 must conflict, got {lost:?}"
        );
        let got = store.read_range("conf:order", 2, 10).await?;
        assert_eq!(got[0].data, bytes::Bytes::from_static(b"{\"n\":3}"));

        // A batch spanning two partitions (bucket = seq >> 16) reads back in order.
        let big = (65_530..=65_545).map(|s| entry("conf:bucket", s)).collect();
        store.append(AppendBatch { entries: big }).await?;
        let seqs: Vec<u64> = store
            .read_range("conf:bucket", 65_533, 100)
            .await?
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, (65_534..=65_545).collect::<Vec<_>>());

        // A writer that died between its message batch and its head update: channel_meta
        // repairs the head from the log (for an existing head and for a first write).
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(points)
            .build()
            .await?;
        let insert = format!(
            "INSERT INTO {keyspace}.messages (channel, bucket, seq, epoch, ts, event, data) \
         VALUES (?, 0, ?, 11, 1, 'message', 0x7b7d) IF NOT EXISTS"
        );
        for (channel, seq) in [("conf:meta", 8i64), ("conf:meta", 9), ("conf:orphan", 1)] {
            session
                .query_unpaged(insert.as_str(), (channel, seq))
                .await?;
        }
        let meta = store.channel_meta("conf:meta").await?.expect("meta");
        assert_eq!((meta.first_seq, meta.last_seq), (1, 9));
        assert_eq!(store.read_range("conf:meta", 0, 100).await?.len(), 9);
        let meta = store.channel_meta("conf:orphan").await?.expect("repaired");
        assert_eq!((meta.epoch, meta.last_seq), (11, 1));
        store
            .append(AppendBatch {
                entries: vec![entry("conf:meta", 10)],
            })
            .await?;

        // A writer that died after its idempotency record but before its message: the
        // record names a seq that holds nothing (or another message), so it does not dedupe.
        let record = format!(
            "INSERT INTO {keyspace}.idempotency (channel, key, epoch, seq, expires_at) \
             VALUES (?, ?, 11, ?, ?)"
        );
        let far = i64::MAX / 2;
        session
            .query_unpaged(record.as_str(), ("conf:meta", "died-before", 11i64, far))
            .await?;
        session
            .query_unpaged(record.as_str(), ("conf:meta", "other-msg", 10i64, far))
            .await?;
        assert_eq!(
            store.idempotency_get("conf:meta", "died-before", 1).await?,
            None
        );
        assert_eq!(
            store.idempotency_get("conf:meta", "other-msg", 1).await?,
            None
        );
        // Once the message carrying the key lands, the record counts.
        let mut keyed = entry("conf:meta", 11);
        keyed.idempotency = Some(("died-before".into(), u64::MAX / 4));
        store
            .append(AppendBatch {
                entries: vec![keyed],
            })
            .await?;
        let rec = store
            .idempotency_get("conf:meta", "died-before", 1)
            .await?
            .expect("record of a written message");
        assert_eq!(rec.seq, 11);

        // A second writer of a key already stored with a message (a paused dispatcher
        // waking up after another took over) loses: nothing is written from that entry on.
        let mut again = entry("conf:meta", 12);
        again.idempotency = Some(("died-before".into(), u64::MAX / 4));
        let dup = store
            .append(AppendBatch {
                entries: vec![again],
            })
            .await;
        assert!(
            matches!(&dup, Err(StoreError::Conflict { lost, .. }) if lost == &vec![("conf:meta".to_owned(), 12)]),
            "got {dup:?}"
        );
        assert_eq!(
            store
                .channel_meta("conf:meta")
                .await?
                .expect("meta")
                .last_seq,
            11
        );
        let rec = store
            .idempotency_get("conf:meta", "died-before", 1)
            .await?
            .expect("the first record stands");
        assert_eq!(rec.seq, 11);

        // Per-namespace TTL: a message written with ttl_secs expires by itself.
        let mut short = entry("conf:ttl", 1);
        short.ttl_secs = 1;
        store
            .append(AppendBatch {
                entries: vec![short, entry("conf:ttl", 2)],
            })
            .await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let seqs: Vec<u64> = store
                .read_range("conf:ttl", 0, 10)
                .await?
                .iter()
                .map(|m| m.seq)
                .collect();
            if seqs == vec![2] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "message with a 1 s TTL still there: {seqs:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        // A conflict on one channel leaves the other channels of the append written.
        let mixed = store
            .append(AppendBatch {
                entries: vec![entry("conf:meta", 11), entry("conf:fresh", 1)],
            })
            .await;
        assert!(
            matches!(&mixed, Err(StoreError::Conflict { lost, .. }) if lost == &vec![("conf:meta".to_owned(), 11)]),
            "got {mixed:?}"
        );
        assert_eq!(store.read_range("conf:fresh", 0, 10).await?.len(), 1);
        Ok(())
    }
}
