//! The embedded backend against the conformance suite, plus what only an embedded store has:
//! surviving a reopen of its directory.

use bytes::Bytes;
use herald_store::{conformance, AppendBatch, AppendEntry, FjallOptions, FjallStore, Store};

#[tokio::test]
async fn fjall_passes_conformance() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = FjallStore::open(FjallOptions::new(dir.path()))?;
    conformance::run_all(&store).await?;
    Ok(())
}

#[tokio::test]
async fn fjall_survives_reopen() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let store = FjallStore::open(FjallOptions::new(dir.path()))?;
        let entries = (1..=3)
            .map(|seq| AppendEntry {
                channel: "live:1".into(),
                epoch: 5,
                seq,
                ts_ms: 10,
                event: "comment".into(),
                data: Bytes::from_static(b"{}"),
                idempotency: None,
                ttl_secs: 0,
                fence: 0,
            })
            .collect();
        store.append(AppendBatch { entries }).await?;
    }
    let store = FjallStore::open(FjallOptions::new(dir.path()))?;
    let meta = store.channel_meta("live:1").await?.expect("meta survives");
    assert_eq!((meta.epoch, meta.last_seq), (5, 3));
    assert_eq!(store.read_range("live:1", 0, 10).await?.len(), 3);
    Ok(())
}

/// A history page read while retention trims the channel starts at the first seq it reports:
/// the meta and the rows come from one snapshot. Read apart (meta, then rows), about one page
/// in twenty reported a first seq whose messages a trim had just removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_read_during_trims_starts_at_its_first_seq() -> anyhow::Result<()> {
    use herald_store::Retention;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir()?;
    // Without an fsync per append the writer trims often enough to meet the reader.
    let mut opts = FjallOptions::new(dir.path());
    opts.fsync = false;
    let store = Arc::new(FjallStore::open(opts)?);
    let stop = Arc::new(AtomicBool::new(false));
    let keep = Retention {
        max_count: 20,
        max_age: Duration::MAX,
    };
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let entries = (0..4)
                    .map(|_| {
                        seq += 1;
                        AppendEntry {
                            channel: "race:c".into(),
                            epoch: 1,
                            seq,
                            ts_ms: 1,
                            event: "m".into(),
                            data: Bytes::from_static(b"{}"),
                            idempotency: None,
                            ttl_secs: 0,
                            fence: 0,
                        }
                    })
                    .collect();
                store.append(AppendBatch { entries }).await?;
                store.trim("race:c", keep, 2).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut pages = 0;
    while pages < 500 {
        let (Some(meta), page) = store.read_page("race:c", 0, 100).await? else {
            continue;
        };
        pages += 1;
        if let Some(first) = page.first() {
            assert_eq!(
                first.seq, meta.first_seq,
                "page {pages} starts after its first_seq ({meta:?})"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    Ok(())
}
