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
