//! The ScyllaDB store against a database that requires a password and TLS from its clients
//! (`scripts/cassandra-up` with `CASSANDRA_SECURE=1`): the store gets in with the right
//! username, password and CA, and is refused without any one of them.
//!
//! `HERALD_CQL_SECURE` names the node (`host:port`), `HERALD_CQL_SECURE_CA` the PEM file of
//! the certificate to trust; the superuser `cassandra`/`cassandra` logs in. Without them the
//! test fails, unless `HERALD_SKIP_CLUSTER=1` says to skip.

#[cfg(not(feature = "scylla"))]
#[test]
fn scylla_secure() {
    println!("SKIPPED scylla_secure: herald-store built without `--features scylla`");
}

#[cfg(feature = "scylla")]
mod secure {
    use herald_store::{
        AppendBatch, AppendEntry, CqlCredentials, ScyllaOptions, ScyllaStore, Store,
    };
    use std::path::PathBuf;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    struct Target {
        point: String,
        ca: PathBuf,
    }

    fn target() -> anyhow::Result<Option<Target>> {
        if std::env::var("HERALD_SKIP_CLUSTER").is_ok_and(|v| v == "1") {
            return Ok(None);
        }
        let need = |name: &str| {
            std::env::var(name).map_err(|_| {
                anyhow::anyhow!(
                    "{name} is not set (scripts/test starts a Cassandra with CASSANDRA_SECURE=1); \
                     set HERALD_SKIP_CLUSTER=1 to skip the secure ScyllaDB store test"
                )
            })
        };
        Ok(Some(Target {
            point: need("HERALD_CQL_SECURE")?,
            ca: need("HERALD_CQL_SECURE_CA")?.into(),
        }))
    }

    fn options(
        t: &Target,
        keyspace: &str,
        password: Option<&str>,
        ca: Option<PathBuf>,
    ) -> ScyllaOptions {
        let mut opts = ScyllaOptions::new(vec![t.point.clone()], keyspace);
        opts.credentials = password.map(|p| CqlCredentials {
            user: "cassandra".into(),
            password: p.into(),
        });
        opts.tls_ca = ca;
        opts
    }

    /// Connects with the right credentials, waiting out the superuser's creation after start.
    async fn admin(t: &Target, keyspace: &str) -> anyhow::Result<ScyllaStore> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ScyllaStore::connect_unchecked(options(
                t,
                keyspace,
                Some("cassandra"),
                Some(t.ca.clone()),
            ))
            .await
            {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() < deadline => {
                    println!("waiting for the secure node: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("the right credentials and CA never got in: {e}"),
            }
        }
    }

    /// A connection that must be refused; returns the refusal for the message.
    async fn refused(what: &str, opts: ScyllaOptions) -> anyhow::Result<String> {
        let attempt = tokio::time::timeout(Duration::from_secs(30), async {
            let store = ScyllaStore::connect_unchecked(opts).await?;
            // A session may open lazily: a query shows whether it really got in.
            store.channel_meta("secure:probe").await
        })
        .await;
        match attempt {
            Err(_) => Ok(format!("{what}: timed out")),
            Ok(Err(e)) => Ok(e.to_string()),
            Ok(Ok(_)) => anyhow::bail!("{what}: the database let the store in"),
        }
    }

    fn other_ca() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
        let dir = tempfile::tempdir()?;
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let path = dir.path().join("other-ca.pem");
        std::fs::write(&path, cert.cert.pem())?;
        Ok((dir, path))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scylla_store_logs_in_over_tls() -> anyhow::Result<()> {
        let Some(t) = target()? else {
            println!("SKIPPED scylla_secure: HERALD_SKIP_CLUSTER=1");
            return Ok(());
        };
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        let keyspace = format!("herald_secure_{stamp}_{}", std::process::id());

        let admin = admin(&t, &keyspace).await?;
        admin.migrate().await?;
        let result = async {
            let store = ScyllaStore::connect(options(
                &t,
                &keyspace,
                Some("cassandra"),
                Some(t.ca.clone()),
            ))
            .await?;
            store
                .append(AppendBatch {
                    entries: vec![AppendEntry {
                        channel: "secure:c".into(),
                        epoch: 1,
                        seq: 1,
                        ts_ms: 1,
                        event: "message".into(),
                        data: bytes::Bytes::from_static(b"{\"n\":1}"),
                        idempotency: None,
                        ttl_secs: 0,
                        fence: 0,
                    }],
                })
                .await?;
            let read = store.read_range("secure:c", 0, 10).await?;
            anyhow::ensure!(read.len() == 1 && read[0].seq == 1, "read back {read:?}");

            let (_dir, other) = other_ca()?;
            for (what, opts, why) in [
                (
                    "no TLS",
                    options(&t, &keyspace, Some("cassandra"), None),
                    "",
                ),
                (
                    "no password",
                    options(&t, &keyspace, None, Some(t.ca.clone())),
                    "uthenticat",
                ),
                (
                    "a wrong password",
                    options(&t, &keyspace, Some("not-it"), Some(t.ca.clone())),
                    "uthenticat",
                ),
                (
                    "an untrusted certificate",
                    options(&t, &keyspace, Some("cassandra"), Some(other.clone())),
                    "certificate",
                ),
            ] {
                let refusal = refused(what, opts).await?;
                println!("refused with {what}: {refusal}");
                anyhow::ensure!(
                    refusal.contains(why),
                    "{what}: refused for another reason: {refusal}"
                );
                anyhow::ensure!(
                    !refusal.contains("not-it"),
                    "a password in an error: {refusal}"
                );
            }
            anyhow::Ok(())
        }
        .await;
        admin.drop_keyspace().await?;
        result
    }
}
