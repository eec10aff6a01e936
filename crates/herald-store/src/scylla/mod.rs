//! The cluster backend: ScyllaDB (or Apache Cassandra) through the official `scylla` driver.
//!
//! Several dispatchers write the log, taking turns per partition of channels under leases
//! (`leases.rs`): consensus (a Paxos round) is paid once per change of owner, and every
//! message is a plain QUORUM write carrying a write timestamp from the owner's lease window
//! (`clock.rs`). A new owner seals each channel before reading where it stands
//! (`claim.rs`), so nothing an earlier owner left in flight can surface later. Layout in
//! `schema.rs`; the argument for why this is safe is in docs/ARCHITECTURE.md.

mod acks;
mod append;
mod claim;
mod clock;
mod cql;
mod leases;
mod reads;
mod retention;
mod schema;
mod statements;
mod util;

pub use clock::WriteClock;
pub use leases::{DispatcherRow, LeaseSnapshot, LeaseTable, PartitionRow, Take};

use crate::{
    Ack, AppendBatch, AppendEntry, ChannelMeta, CqlCounts, IdempotencyRecord, Retention, Store,
    StoreError, StoredMessage, TrimOutcome,
};
use async_trait::async_trait;
use cql::Cql;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{Consistency, SerialConsistency};
use statements::Statements;
use std::sync::Arc;
use tokio::sync::OnceCell;
use util::{cql_ttl, eng, to_u64};

/// Settings of the cluster store.
#[derive(Clone, Debug)]
pub struct ScyllaOptions {
    /// `host:port` of one or more nodes.
    pub contact_points: Vec<String>,
    /// Keyspace holding Herald's tables (letters, digits and `_`).
    pub keyspace: String,
    /// CQL replication map used by [`ScyllaStore::migrate`], e.g.
    /// `{'class':'SimpleStrategy','replication_factor':1}`.
    pub replication: String,
    /// TTL of every message in seconds; 0 keeps messages until trimmed.
    pub message_ttl_secs: u32,
    /// Consistency of reads and writes (QUORUM: a 2xx publish survives a node loss).
    pub consistency: Consistency,
    /// Consistency of the Paxos phase of conditional writes (leases only).
    pub serial_consistency: SerialConsistency,
    /// Username and password (Cassandra's PasswordAuthenticator, ScyllaDB's authenticator).
    pub credentials: Option<CqlCredentials>,
    /// PEM file of the CA that signs the database nodes' certificates; set, every
    /// connection uses TLS and checks the node's certificate against it.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// A CQL username and password; the password never prints.
#[derive(Clone)]
pub struct CqlCredentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for CqlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CqlCredentials({}, <redacted>)", self.user)
    }
}

/// A TLS client configuration trusting only the CA in `ca` (PEM).
fn tls_client(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |what: String| StoreError::Invalid(format!("CQL TLS CA {}: {what}", ca.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))?
    {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl ScyllaOptions {
    pub fn new(contact_points: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            contact_points,
            keyspace: keyspace.into(),
            replication: "{'class':'SimpleStrategy','replication_factor':1}".to_owned(),
            message_ttl_secs: 0,
            consistency: Consistency::Quorum,
            serial_consistency: SerialConsistency::Serial,
            credentials: None,
            tls_ca: None,
        }
    }
}

struct Inner {
    cql: Cql,
    keyspace: String,
    replication: String,
    message_ttl: i32,
    statements: OnceCell<Statements>,
    clock: Arc<WriteClock>,
}

/// [`Store`] over ScyllaDB / Cassandra.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

impl ScyllaStore {
    /// Connects and checks that [`ScyllaStore::migrate`] has created the schema.
    pub async fn connect(opts: ScyllaOptions) -> Result<Self, StoreError> {
        let store = Self::connect_unchecked(opts).await?;
        let missing = store.missing_schema().await?;
        if !missing.is_empty() {
            return Err(StoreError::Engine(format!(
                "keyspace {} lacks {missing:?}; run `herald migrate` first",
                store.inner.keyspace
            )));
        }
        store.statements().await?;
        Ok(store)
    }

    /// Connects without checking the schema (for [`ScyllaStore::migrate`]). Statements are
    /// prepared on first use.
    pub async fn connect_unchecked(opts: ScyllaOptions) -> Result<Self, StoreError> {
        if opts.keyspace.is_empty()
            || !opts
                .keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(StoreError::Invalid(format!(
                "keyspace name {:?} must be letters, digits and _",
                opts.keyspace
            )));
        }
        if opts.contact_points.is_empty() {
            return Err(StoreError::Invalid("no contact points".into()));
        }
        let profile = ExecutionProfile::builder()
            .consistency(opts.consistency)
            .serial_consistency(Some(opts.serial_consistency))
            .build()
            .into_handle();
        let mut builder = SessionBuilder::new()
            .known_nodes(&opts.contact_points)
            .default_execution_profile_handle(profile);
        if let Some(c) = &opts.credentials {
            builder = builder.user(c.user.clone(), c.password.clone());
        }
        if let Some(ca) = &opts.tls_ca {
            builder = builder.tls_context(Some(tls_client(ca)?));
        }
        let session = builder.build().await.map_err(eng("connect"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                cql: Cql::new(session),
                keyspace: opts.keyspace,
                replication: opts.replication,
                message_ttl: cql_ttl(u64::from(opts.message_ttl_secs)),
                statements: OnceCell::new(),
                clock: Arc::new(WriteClock::unbounded()),
            }),
        })
    }

    /// The clock stamping this store's writes; a dispatcher's lease bounds it.
    pub fn clock(&self) -> &Arc<WriteClock> {
        &self.inner.clock
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.inner
            .statements
            .get_or_try_init(|| Statements::prepare(&self.inner.cql, &self.inner.keyspace))
            .await
    }
}

#[async_trait]
impl Store for ScyllaStore {
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        self.reader_meta(channel).await
    }

    async fn claim(&self, channel: &str, fence: u64) -> Result<Option<ChannelMeta>, StoreError> {
        self.claim_channel(channel, fence).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        self.append_batch(batch).await
    }

    async fn read_range(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let Some(meta) = self.reader_meta(channel).await? else {
            return Ok(Vec::new());
        };
        let from = from.max(meta.first_seq);
        if from > meta.last_seq {
            return Ok(Vec::new());
        }
        self.read_messages(channel, from, meta.last_seq, limit)
            .await
    }

    async fn idempotency_landed(&self, entries: &[AppendEntry]) -> Result<(), StoreError> {
        self.mark_landed(entries).await
    }

    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let st = self.statements().await?;
        let rows = self
            .inner
            .cql
            .read(&st.get_idempotency, (channel, key), "read idempotency")
            .await?;
        let row = rows
            .maybe_first_row::<(Option<i64>, Option<i64>, Option<i64>, Option<bool>)>()
            .map_err(eng("read idempotency"))?;
        // A mark outliving its record by a moment has no position: no record.
        let Some((Some(epoch), Some(seq), Some(expires), landed)) = row else {
            return Ok(None);
        };
        let rec = IdempotencyRecord {
            epoch: to_u64("idempotency", epoch)?,
            seq: to_u64("idempotency", seq)?,
            expires_at_ms: to_u64("idempotency", expires)?,
        };
        if rec.expires_at_ms <= now_ms {
            return Ok(None);
        }
        if landed == Some(true) {
            return Ok(Some(rec));
        }
        // The record is written before its message: it counts only if the message landed
        // (the row carries the key), or landed and has since expired (it is gone, but at or
        // below the head, where every row once landed).
        match self.message_key_at(channel, rec.seq).await? {
            Some(k) => Ok((k.as_deref() == Some(key)).then_some(rec)),
            None => {
                let meta = self.reader_meta(channel).await?;
                Ok(meta
                    .filter(|m| m.epoch == rec.epoch && rec.seq <= m.last_seq)
                    .map(|_| rec))
            }
        }
    }

    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        self.trim_channel(channel, retention, now_ms).await
    }

    async fn list_channels(&self) -> Result<Vec<String>, StoreError> {
        self.all_channels().await
    }

    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError> {
        self.set_ack(channel, user, ack).await
    }

    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError> {
        self.get_ack(channel, user).await
    }

    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        self.list_acks(channel, after_user, limit).await
    }

    /// Records expire by their TTL; reads compare `expires_at` exactly, so nothing is
    /// swept (a sweep would scan the whole table).
    async fn expire_idempotency(&self, _now_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Every acknowledged write is already at QUORUM; nothing is buffered here.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn expires_by_ttl(&self) -> bool {
        true
    }

    fn cql_counts(&self) -> Option<CqlCounts> {
        Some(self.inner.cql.counts())
    }
}
