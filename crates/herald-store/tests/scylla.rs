//! The ScyllaDB store against a real Cassandra / ScyllaDB node named by `HERALD_CQL`
//! (`host:port`): the conformance suite every store passes, then what is particular to a
//! store shared by dispatchers that take turns under leases (seal, late writes of an
//! earlier owner, readers during an owner change, idempotency records, TTLs, the lease
//! table). Without `HERALD_CQL` it fails, unless `HERALD_SKIP_CLUSTER=1` says to skip.

#[cfg(not(feature = "scylla"))]
#[test]
fn scylla_store() {
    println!("SKIPPED scylla_store: herald-store built without `--features scylla`");
}

#[cfg(feature = "scylla")]
mod cql {
    use herald_store::{
        conformance, AppendBatch, AppendEntry, ScyllaOptions, ScyllaStore, Store, StoreError, Take,
    };
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    fn contact_points() -> anyhow::Result<Option<Vec<String>>> {
        if std::env::var("HERALD_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
            return Ok(None);
        }
        let v = std::env::var("HERALD_CQL").map_err(|_| {
            anyhow::anyhow!(
                "HERALD_CQL is not set (e.g. HERALD_CQL=127.0.0.1:9042; scripts/test starts a \
                 Cassandra); set HERALD_SKIP_CLUSTER=1 to skip the ScyllaDB store tests"
            )
        })?;
        let points: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        anyhow::ensure!(!points.is_empty(), "HERALD_CQL names no contact point");
        Ok(Some(points))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scylla_store() -> anyhow::Result<()> {
        let Some(points) = contact_points()? else {
            println!("SKIPPED scylla_store: HERALD_SKIP_CLUSTER=1");
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
        admin.migrate().await?; // idempotent, and keeps the leases
        let store = ScyllaStore::connect(opts.clone()).await?;
        let result = checks(&store, &opts, &points, &keyspace).await;
        admin.drop_keyspace().await?;
        result?;
        println!("scylla store checks passed against keyspace {keyspace}");
        Ok(())
    }

    fn entry(channel: &str, epoch: u64, seq: u64, fence: u64, body: &str) -> AppendEntry {
        AppendEntry {
            channel: channel.into(),
            epoch,
            seq,
            ts_ms: 1,
            event: "message".into(),
            data: bytes::Bytes::from(body.to_owned()),
            idempotency: None,
            ttl_secs: 0,
            fence,
        }
    }

    async fn append(store: &ScyllaStore, entries: Vec<AppendEntry>) -> Result<(), StoreError> {
        store.append(AppendBatch { entries }).await
    }

    async fn bodies(store: &ScyllaStore, channel: &str) -> anyhow::Result<Vec<(u64, String)>> {
        Ok(store
            .read_range(channel, 0, 1000)
            .await?
            .into_iter()
            .map(|m| (m.seq, String::from_utf8_lossy(&m.data).into_owned()))
            .collect())
    }

    async fn until<F, Fut>(what: &str, mut f: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !f().await? {
            anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn checks(
        store: &ScyllaStore,
        opts: &ScyllaOptions,
        points: &[String],
        keyspace: &str,
    ) -> anyhow::Result<()> {
        conformance::run_all(store).await?;
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(points)
            .build()
            .await?;

        // A write spanning two partitions (bucket = seq >> 16) reads back in order, and
        // the head is found in the new bucket.
        let big = (1..=3)
            .chain(65_530..=65_545)
            .map(|s| entry("conf:bucket", 11, s, 0, "{}"))
            .collect::<Vec<_>>();
        append(store, big[..3].to_vec()).await?;
        // (seqs 4..65529 are not written: the check is about the partition boundary)
        append(store, big[3..].to_vec()).await?;
        let seqs: Vec<u64> = store
            .read_range("conf:bucket", 65_533, 100)
            .await?
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, (65_534..=65_545).collect::<Vec<_>>());
        let meta = store.channel_meta("conf:bucket").await?.expect("meta");
        assert_eq!(meta.last_seq, 65_545);
        append(store, vec![entry("conf:bucket", 11, 65_546, 0, "{}")]).await?;
        assert_eq!(
            store
                .channel_meta("conf:bucket")
                .await?
                .expect("meta")
                .last_seq,
            65_546
        );

        // A group commit far larger than one batch may carry (Cassandra refuses batches
        // over 50 KiB): it is cut into batches, each partition's rows whole in one.
        let big: Vec<AppendEntry> = (1..=600)
            .flat_map(|s| {
                ["conf:big1", "conf:big2", "conf:big3"]
                    .map(|c| entry(c, 12, s, 0, &format!("\"{}\"", "x".repeat(1000))))
            })
            .collect();
        append(store, big).await?;
        for c in ["conf:big1", "conf:big2", "conf:big3"] {
            assert_eq!(store.channel_meta(c).await?.expect("meta").last_seq, 600);
            assert_eq!(store.read_range(c, 0, 1000).await?.len(), 600);
        }

        // Two writers taking turns: A under fence 1, then B under fence 2. B's write
        // timestamps start above A's ceiling, as the lease table arranges.
        let a = ScyllaStore::connect(opts.clone()).await?;
        let b = ScyllaStore::connect(opts.clone()).await?;
        let new = a.claim("t:x", 1).await?.expect("a new channel is created");
        assert_eq!((new.last_seq, new.first_seq), (0, 1));
        let ex = new.epoch;
        append(
            &a,
            (1..=3)
                .map(|s| entry("t:x", ex, s, 1, &format!("\"a{s}\"")))
                .collect(),
        )
        .await?;
        let ceiling = a.clock().last() + 1_000_000;
        a.clock().set_ceiling(ceiling);
        b.clock().raise_floor(ceiling + 1);
        let meta = b.claim("t:x", 2).await?.expect("B sees A's log");
        assert_eq!((meta.epoch, meta.last_seq), (ex, 3));
        // A's writes still in flight land after B's seal: nobody ever sees them.
        append(
            &a,
            (4..=5)
                .map(|s| entry("t:x", ex, s, 1, &format!("\"late{s}\"")))
                .collect(),
        )
        .await?;
        assert_eq!(store.channel_meta("t:x").await?.expect("meta").last_seq, 3);
        assert_eq!(bodies(store, "t:x").await?.len(), 3);
        // B writes on from 3, replacing A's late row 4; A's late row 5 stays invisible.
        append(&b, vec![entry("t:x", ex, 4, 2, "\"b4\"")]).await?;
        assert_eq!(
            bodies(store, "t:x").await?,
            vec![
                (1, "\"a1\"".into()),
                (2, "\"a2\"".into()),
                (3, "\"a3\"".into()),
                (4, "\"b4\"".into())
            ]
        );
        // A, still holding fence 1, can no longer take the channel.
        assert!(
            matches!(a.claim("t:x", 1).await, Err(StoreError::Fenced(_))),
            "an older fence must be refused"
        );
        // A write A had sent before B's seal is adopted by B, not overwritten.
        let ey = a.claim("t:y", 1).await?.expect("created").epoch;
        append(&a, vec![entry("t:y", ey, 1, 1, "\"y1\"")]).await?;
        append(
            &a,
            vec![entry("t:y", ey, 2, 1, "\"y2-late-but-before-seal\"")],
        )
        .await?;
        assert_eq!(b.claim("t:y", 2).await?.expect("meta").last_seq, 2);

        // A new owner that sealed but has not settled yet: readers wait (and then give up
        // with InTransition) rather than trust the old owner's head.
        let c = ScyllaStore::connect(opts.clone()).await?;
        c.clock().raise_floor(b.clock().last() + 1);
        let seal =
            format!("UPDATE {keyspace}.channels USING TIMESTAMP ? SET fence = 3 WHERE channel = ?");
        session
            .query_unpaged(seal.as_str(), (c.clock().next()?, "t:x"))
            .await?;
        let started = Instant::now();
        let got = store.channel_meta("t:x").await;
        assert!(
            matches!(got, Err(StoreError::InTransition(_))),
            "a reader must not use a head older than the seal, got {got:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "it waited first"
        );
        assert_eq!(c.claim("t:x", 3).await?.expect("meta").last_seq, 4);
        assert_eq!(store.channel_meta("t:x").await?.expect("meta").last_seq, 4);

        // Idempotency records count only when their message landed (or landed and expired).
        let mut keyed = entry("t:idem", 9, 1, 0, "{}");
        keyed.idempotency = Some(("k1".into(), u64::MAX / 4));
        keyed.ttl_secs = 1;
        append(store, vec![keyed]).await?;
        let rec = store.idempotency_get("t:idem", "k1", 1).await?.expect("k1");
        assert_eq!((rec.epoch, rec.seq), (9, 1));
        let record = format!(
            "INSERT INTO {keyspace}.idempotency (channel, key, epoch, seq, expires_at) \
             VALUES ('t:idem', ?, 9, ?, ?)"
        );
        let far = i64::MAX / 2;
        // A writer that died after its record but before its message.
        session
            .query_unpaged(record.as_str(), ("died", 2i64, far))
            .await?;
        assert_eq!(store.idempotency_get("t:idem", "died", 1).await?, None);
        append(store, vec![entry("t:idem", 9, 2, 0, "{}")]).await?;
        // Seq 2 holds another message now: the record still does not count.
        assert_eq!(store.idempotency_get("t:idem", "died", 1).await?, None);
        // Seq 1 expired by TTL; its record still dedupes (the window is the record's).
        until("seq 1 to expire", || async {
            Ok(store.read_range("t:idem", 0, 10).await?.len() == 1)
        })
        .await?;
        assert!(store.idempotency_get("t:idem", "k1", 1).await?.is_some());

        // Every message of a channel expired: its head went with them, and the next owner
        // starts a new epoch (old cursors reset).
        let mut short = entry("t:ttl", 5, 1, 0, "{}");
        short.ttl_secs = 1;
        append(store, vec![short]).await?;
        until("t:ttl to expire", || async {
            Ok(store
                .channel_meta("t:ttl")
                .await?
                .is_some_and(|m| m.last_seq == 0 && m.epoch == 5))
        })
        .await?;
        let renewed = b.claim("t:ttl", 4).await?.expect("a new epoch");
        assert!(renewed.epoch != 5 && renewed.last_seq == 0);
        assert_eq!(
            store.channel_meta("t:ttl").await?.expect("meta").epoch,
            renewed.epoch
        );

        // A namespace keeping messages for a second still dedupes for its whole window: the
        // record of an acknowledged message is marked landed and stands on its own once
        // every row (and the head with them) expired. Unmarked, it would not count then.
        for (channel, mark) in [("t:kept", true), ("t:gone", false)] {
            let mut m = entry(channel, 5, 1, 0, "{}");
            m.idempotency = Some(("k".into(), u64::MAX / 4));
            m.ttl_secs = 1;
            append(store, vec![m.clone()]).await?;
            if mark {
                store.idempotency_landed(&[m]).await?;
            }
        }
        for channel in ["t:kept", "t:gone"] {
            until("every row to expire", || async {
                Ok(store
                    .channel_meta(channel)
                    .await?
                    .is_some_and(|m| m.last_seq == 0))
            })
            .await?;
        }
        let kept = store.idempotency_get("t:kept", "k", 1).await?;
        assert_eq!(
            kept.map(|r| (r.epoch, r.seq)),
            Some((5, 1)),
            "marked record"
        );
        assert_eq!(store.idempotency_get("t:gone", "k", 1).await?, None);

        leases(store).await?;
        Ok(())
    }

    async fn leases(store: &ScyllaStore) -> anyhow::Result<()> {
        let t = store.lease_table();
        let snap = t.read().await?;
        assert_eq!(snap.partitions.len() as u32, herald_proto::PARTITIONS);
        assert!(snap
            .partitions
            .iter()
            .all(|p| p.owner.is_none() && p.fence == 0));
        assert!(t.register("d1#1", "d1", "127.0.0.1:1", 100).await?);
        assert!(
            !t.register("d1#1", "d1", "127.0.0.1:1", 100).await?,
            "keys are unique"
        );
        assert!(t.renew("d1#1", 0, 200).await?);
        assert!(
            !t.renew("d1#1", 0, 300).await?,
            "a stale version is refused"
        );
        let take = |p, from: Option<&str>, fence| Take {
            partition: p,
            from: from.map(str::to_owned),
            fence,
            lo: 201,
        };
        let taken = t
            .take("d1#1", &[take(0, None, 0), take(1, None, 0)])
            .await?;
        assert_eq!(taken.len(), 2);
        // A second taker that read before the first took loses, whole batch.
        assert!(t
            .take("d2#1", &[take(1, None, 0), take(2, None, 0)])
            .await?
            .is_empty());
        let snap = t.read().await?;
        assert_eq!(snap.partitions[1].owner.as_deref(), Some("d1#1"));
        assert_eq!((snap.partitions[1].fence, snap.partitions[1].lo), (1, 201));
        assert_eq!(snap.partitions[2].owner, None);
        // Declared dead: its renewals fail from then on.
        let row = snap
            .dispatchers
            .iter()
            .find(|r| r.key == "d1#1")
            .expect("row")
            .clone();
        assert_eq!((row.version, row.ceiling), (1, 200));
        assert!(t.mark_dead(&row, 60).await?);
        assert!(!t.renew("d1#1", 1, 400).await?);
        assert!(t
            .read()
            .await?
            .dispatchers
            .iter()
            .any(|r| r.key == "d1#1" && r.dead));
        // Its partitions move with the fence bumped; a release by the old owner fails.
        assert_eq!(t.take("d2#1", &[take(0, Some("d1#1"), 1)]).await?.len(), 1);
        assert!(t.release("d1#1", &[(0, 1)], 500).await?.is_empty());
        assert_eq!(t.release("d2#1", &[(0, 2)], 500).await?, vec![0]);
        let p0 = t.read().await?.partitions[0].clone();
        assert_eq!((p0.owner, p0.fence, p0.lo), (None, 2, 500));
        Ok(())
    }
}
