//! The cluster backend: ScyllaDB (or Apache Cassandra) through the official `scylla` driver.
//!
//! Layout (after Discord's): `messages` is partitioned by `(channel, bucket)` with
//! `bucket = seq >> 16` and clustered by `seq`, so a partition holds at most 65 536 messages
//! and a resume read touches one or two partitions. `heads` holds each channel's epoch and
//! last seq, `lows` its first retained seq, `idempotency` the publish records (with a TTL).
//!
//! Writes of messages are conditional (`INSERT … IF NOT EXISTS`), one conditional batch per
//! `(channel, bucket)` partition, so two dispatchers can never both write the same seq: the
//! loser gets [`StoreError::Conflict`]. Everything runs at QUORUM, conditions at SERIAL.

use crate::{
    Ack, AppendBatch, AppendEntry, ChannelMeta, IdempotencyRecord, Retention, Store, StoreError,
    StoredMessage, TrimOutcome,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::{QueryResult, QueryRowsResult};
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use std::fmt::Display;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// log2 of the number of seqs per `messages` partition.
const BUCKET_BITS: u32 = 16;
/// Payload bytes per conditional batch; Cassandra's default `batch_size_fail_threshold` is
/// 50 KiB, so larger group commits are split into several batches.
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Statements per conditional batch.
const MAX_BATCH_ENTRIES: usize = 256;
/// Rows fetched per query when walking a channel's log.
const PAGE_ROWS: i32 = 1_000;
/// Extra life of an idempotency row past its logical expiry (clock skew between the
/// publisher's `ts_ms` and the coordinator; reads filter on `expires_at` exactly).
const IDEMPOTENCY_GRACE_SECS: u64 = 60;

const TABLES: [&str; 6] = [
    "messages",
    "heads",
    "lows",
    "idempotency",
    "members",
    "acks",
];
/// Columns added to existing tables since their first release, as `(table, column, type)`;
/// `herald migrate` adds them, and start-up refuses a schema that lacks them.
const ADDED_COLUMNS: [(&str, &str, &str); 1] = [("messages", "idem_key", "text")];

/// One live process of a cluster, as its heartbeat row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    /// Where its HTTP API listens (`host:port`).
    pub addr: String,
}

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
    /// Consistency of the Paxos phase of conditional writes.
    pub serial_consistency: SerialConsistency,
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
        }
    }
}

struct Statements {
    insert_message: PreparedStatement,
    insert_idempotency: PreparedStatement,
    move_idempotency: PreparedStatement,
    get_head: PreparedStatement,
    insert_head: PreparedStatement,
    advance_head: PreparedStatement,
    get_low: PreparedStatement,
    set_low: PreparedStatement,
    read_messages: PreparedStatement,
    read_timestamps: PreparedStatement,
    probe_tail: PreparedStatement,
    delete_below: PreparedStatement,
    delete_bucket: PreparedStatement,
    get_idempotency: PreparedStatement,
    delete_idempotency: PreparedStatement,
    list_heads: PreparedStatement,
    scan_idempotency: PreparedStatement,
    message_key: PreparedStatement,
    heartbeat: PreparedStatement,
    leave: PreparedStatement,
    members: PreparedStatement,
    get_ack: PreparedStatement,
    set_ack: PreparedStatement,
    list_acks: PreparedStatement,
}

struct Inner {
    session: Session,
    keyspace: String,
    replication: String,
    message_ttl: i32,
    statements: OnceCell<Statements>,
}

/// [`Store`] over ScyllaDB / Cassandra.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

fn engine(what: &str) -> impl Fn(&dyn Display) -> StoreError + '_ {
    move |e| StoreError::Engine(format!("{what}: {e}"))
}

macro_rules! eng {
    ($what:expr) => {
        |e| engine($what)(&e)
    };
}

fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} exceeds i64::MAX")))
}

fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("negative value {v}"),
    })
}

/// A TTL as CQL takes it: at most 10 years. CQL's limit is 20 years, and Cassandra in its
/// default storage mode refuses expirations past 2038-01-19 (CASSANDRA-14092).
fn cql_ttl(secs: u64) -> i32 {
    const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
    secs.min(MAX_TTL_SECS) as i32
}

fn bucket(seq: u64) -> u64 {
    seq >> BUCKET_BITS
}

fn rows(res: QueryResult, what: &str) -> Result<QueryRowsResult, StoreError> {
    res.into_rows_result().map_err(eng!(what))
}

/// Whether a conditional statement or batch applied, and the value of `column` in the
/// current row when it did not (absent or null: the row does not exist).
fn lwt_outcome(
    res: QueryResult,
    what: &str,
    column: Option<&str>,
) -> Result<(bool, Option<CqlValue>), StoreError> {
    let rows = rows(res, what)?;
    let idx = column.and_then(|c| rows.column_specs().get_by_name(c).map(|(i, _)| i));
    let row: Row = rows.first_row().map_err(eng!(what))?;
    let applied = match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => *b,
        other => {
            return Err(StoreError::Engine(format!(
                "{what}: no [applied] column in LWT result: {other:?}"
            )))
        }
    };
    let current = idx.and_then(|i| row.columns.get(i).cloned().flatten());
    Ok((applied, current))
}

impl ScyllaStore {
    /// Connects and checks that [`ScyllaStore::migrate`] has created the schema.
    pub async fn connect(opts: ScyllaOptions) -> Result<Self, StoreError> {
        let store = Self::connect_unchecked(opts).await?;
        let mut missing: Vec<String> = store
            .missing_tables()
            .await?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            missing = store
                .missing_columns()
                .await?
                .into_iter()
                .map(|(t, c, _)| format!("{t}.{c}"))
                .collect();
        }
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
        let session = SessionBuilder::new()
            .known_nodes(&opts.contact_points)
            .default_execution_profile_handle(profile)
            .build()
            .await
            .map_err(eng!("connect"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                keyspace: opts.keyspace,
                replication: opts.replication,
                message_ttl: cql_ttl(u64::from(opts.message_ttl_secs)),
                statements: OnceCell::new(),
            }),
        })
    }

    /// Creates the keyspace and tables if they do not exist (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let ks = &self.inner.keyspace;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                self.inner.replication
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.messages (channel text, bucket bigint, \
                 seq bigint, epoch bigint, ts bigint, event text, data blob, idem_key text, \
                 PRIMARY KEY ((channel, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC) \
                 AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
                 'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.heads (channel text PRIMARY KEY, \
                 epoch bigint, last_seq bigint)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.lows (channel text PRIMARY KEY, \
                 first_seq bigint)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.idempotency (channel text, key text, \
                 epoch bigint, seq bigint, expires_at bigint, PRIMARY KEY ((channel, key)))"
            ),
            // Cluster membership: one row per live process, kept alive by heartbeats
            // written with a TTL, so a killed process drops out by itself.
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.members (role text, id text, addr text, \
                 PRIMARY KEY (role, id))"
            ),
            // Last acknowledged position per (channel, user).
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.acks (channel text, user text, epoch bigint, \
                 seq bigint, ts bigint, PRIMARY KEY (channel, user))"
            ),
        ];
        for stmt in ddl {
            self.inner
                .session
                .query_unpaged(stmt.as_str(), ())
                .await
                .map_err(eng!("migrate"))?;
        }
        for (table, column, ty) in self.missing_columns().await? {
            let stmt = format!("ALTER TABLE {ks}.{table} ADD {column} {ty}");
            self.inner
                .session
                .query_unpaged(stmt.as_str(), ())
                .await
                .map_err(eng!("migrate"))?;
        }
        self.inner
            .session
            .await_schema_agreement()
            .await
            .map_err(eng!("schema agreement"))?;
        Ok(())
    }

    async fn missing_columns(
        &self,
    ) -> Result<Vec<(&'static str, &'static str, &'static str)>, StoreError> {
        let mut missing = Vec::new();
        for (table, column, ty) in ADDED_COLUMNS {
            let res = self
                .inner
                .session
                .query_unpaged(
                    "SELECT column_name FROM system_schema.columns \
                     WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                    (self.inner.keyspace.as_str(), table, column),
                )
                .await
                .map_err(eng!("schema check"))?;
            if rows(res, "schema check")?.rows_num() == 0 {
                missing.push((table, column, ty));
            }
        }
        Ok(missing)
    }

    /// Records that `id` (of `role`) is alive at `addr` for the next `ttl_secs`.
    pub async fn heartbeat(
        &self,
        role: &str,
        id: &str,
        addr: &str,
        ttl_secs: u32,
    ) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let ttl = i32::try_from(ttl_secs.max(1)).unwrap_or(i32::MAX);
        self.inner
            .session
            .execute_unpaged(&st.heartbeat, (role, id, addr, ttl))
            .await
            .map_err(eng!("heartbeat"))?;
        Ok(())
    }

    /// Removes `id` from the live members of `role` (a clean leave).
    pub async fn leave(&self, role: &str, id: &str) -> Result<(), StoreError> {
        let st = self.statements().await?;
        self.inner
            .session
            .execute_unpaged(&st.leave, (role, id))
            .await
            .map_err(eng!("leave"))?;
        Ok(())
    }

    /// The live members of `role`, by id.
    pub async fn members(&self, role: &str) -> Result<Vec<Member>, StoreError> {
        let st = self.statements().await?;
        let res = self
            .inner
            .session
            .execute_unpaged(&st.members, (role,))
            .await
            .map_err(eng!("members"))?;
        let mut out = Vec::new();
        for r in rows(res, "members")?
            .rows::<(String, String)>()
            .map_err(eng!("members"))?
        {
            let (id, addr) = r.map_err(eng!("members"))?;
            out.push(Member { id, addr });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Drops the keyspace and everything in it (tests).
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        let stmt = format!("DROP KEYSPACE IF EXISTS {}", self.inner.keyspace);
        self.inner
            .session
            .query_unpaged(stmt.as_str(), ())
            .await
            .map_err(eng!("drop keyspace"))?;
        Ok(())
    }

    async fn missing_tables(&self) -> Result<Vec<&'static str>, StoreError> {
        let res = self
            .inner
            .session
            .query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (self.inner.keyspace.as_str(),),
            )
            .await
            .map_err(eng!("schema check"))?;
        let rows = rows(res, "schema check")?;
        let mut present = Vec::new();
        for r in rows.rows::<(String,)>().map_err(eng!("schema check"))? {
            present.push(r.map_err(eng!("schema check"))?.0);
        }
        Ok(TABLES
            .into_iter()
            .filter(|t| !present.iter().any(|p| p == t))
            .collect())
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.inner
            .statements
            .get_or_try_init(|| self.prepare_all())
            .await
    }

    async fn prepare_all(&self) -> Result<Statements, StoreError> {
        let ks = &self.inner.keyspace;
        let s = &self.inner.session;
        let p = |q: String| async move { s.prepare(q.clone()).await.map_err(eng!(&q)) };
        Ok(Statements {
            insert_message: p(format!(
                "INSERT INTO {ks}.messages (channel, bucket, seq, epoch, ts, event, data, \
                 idem_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ))
            .await?,
            insert_idempotency: p(format!(
                "INSERT INTO {ks}.idempotency (channel, key, epoch, seq, expires_at) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?"
            ))
            .await?,
            move_idempotency: p(format!(
                "UPDATE {ks}.idempotency USING TTL ? SET epoch = ?, seq = ?, expires_at = ? \
                 WHERE channel = ? AND key = ? IF seq = ?"
            ))
            .await?,
            get_head: p(format!(
                "SELECT epoch, last_seq FROM {ks}.heads WHERE channel = ?"
            ))
            .await?,
            insert_head: p(format!(
                "INSERT INTO {ks}.heads (channel, epoch, last_seq) VALUES (?, ?, ?) \
                 IF NOT EXISTS"
            ))
            .await?,
            advance_head: p(format!(
                "UPDATE {ks}.heads SET epoch = ?, last_seq = ? WHERE channel = ? \
                 IF last_seq < ?"
            ))
            .await?,
            get_low: p(format!("SELECT first_seq FROM {ks}.lows WHERE channel = ?")).await?,
            set_low: p(format!(
                "UPDATE {ks}.lows SET first_seq = ? WHERE channel = ?"
            ))
            .await?,
            read_messages: p(format!(
                "SELECT seq, epoch, ts, event, data FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? LIMIT ?"
            ))
            .await?,
            read_timestamps: p(format!(
                "SELECT seq, ts FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq >= ? AND seq <= ? LIMIT ?"
            ))
            .await?,
            probe_tail: p(format!(
                "SELECT seq, epoch FROM {ks}.messages \
                 WHERE channel = ? AND bucket = ? AND seq >= ? LIMIT ?"
            ))
            .await?,
            delete_below: p(format!(
                "DELETE FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq < ?"
            ))
            .await?,
            delete_bucket: p(format!(
                "DELETE FROM {ks}.messages WHERE channel = ? AND bucket = ?"
            ))
            .await?,
            get_idempotency: p(format!(
                "SELECT epoch, seq, expires_at FROM {ks}.idempotency \
                 WHERE channel = ? AND key = ?"
            ))
            .await?,
            delete_idempotency: p(format!(
                "DELETE FROM {ks}.idempotency WHERE channel = ? AND key = ?"
            ))
            .await?,
            list_heads: p(format!("SELECT channel FROM {ks}.heads")).await?,
            scan_idempotency: p(format!(
                "SELECT channel, key, expires_at FROM {ks}.idempotency"
            ))
            .await?,
            message_key: p(format!(
                "SELECT idem_key FROM {ks}.messages WHERE channel = ? AND bucket = ? AND seq = ?"
            ))
            .await?,
            heartbeat: p(format!(
                "INSERT INTO {ks}.members (role, id, addr) VALUES (?, ?, ?) USING TTL ?"
            ))
            .await?,
            leave: p(format!(
                "DELETE FROM {ks}.members WHERE role = ? AND id = ?"
            ))
            .await?,
            members: p(format!("SELECT id, addr FROM {ks}.members WHERE role = ?")).await?,
            get_ack: p(format!(
                "SELECT epoch, seq, ts FROM {ks}.acks WHERE channel = ? AND user = ?"
            ))
            .await?,
            set_ack: p(format!(
                "INSERT INTO {ks}.acks (channel, user, epoch, seq, ts) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            list_acks: p(format!(
                "SELECT user, epoch, seq, ts FROM {ks}.acks WHERE channel = ? AND user > ? LIMIT ?"
            ))
            .await?,
        })
    }

    async fn meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let (head, low) = tokio::try_join!(
            async {
                s.execute_unpaged(&st.get_head, (channel,))
                    .await
                    .map_err(eng!("read head"))
            },
            async {
                s.execute_unpaged(&st.get_low, (channel,))
                    .await
                    .map_err(eng!("read low"))
            },
        )?;
        let head = rows(head, "read head")?
            .maybe_first_row::<(Option<i64>, Option<i64>)>()
            .map_err(eng!("read head"))?;
        let Some((Some(epoch), Some(last_seq))) = head else {
            return Ok(None);
        };
        let low = rows(low, "read low")?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(eng!("read low"))?;
        let last_seq = to_u64("channel head", last_seq)?;
        let first_seq = match low {
            Some((Some(f),)) => to_u64("channel low", f)?,
            _ => 1,
        };
        Ok(Some(ChannelMeta {
            epoch: to_u64("channel head", epoch)?,
            last_seq,
            first_seq: first_seq.min(last_seq + 1),
        }))
    }

    /// Writes one channel's entries (in seq order): idempotency records, conditional
    /// batches per partition, then the head.
    ///
    /// The idempotency records go first and name the seq they were given; the message row
    /// carries its key. A record counts only while the row at its seq carries the same key
    /// (see `idempotency_get`), so a writer that dies anywhere in between leaves either a
    /// record that is ignored or a message a retry finds: never a message twice.
    async fn append_channel(
        &self,
        channel: &str,
        entries: Vec<&AppendEntry>,
    ) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        // A writer with a stale view of the channel (ownership moved while it cached the
        // head) must not write behind the head: rows there may have been trimmed or expired,
        // and `IF NOT EXISTS` would then apply to positions the channel has long passed,
        // acknowledging messages nobody will ever read.
        let first = entries[0].seq;
        if let Some(meta) = self.meta(channel).await? {
            if first <= meta.last_seq {
                return Err(StoreError::Conflict {
                    detail: format!(
                        "{channel}: seq {first} is at or behind the head {}",
                        meta.last_seq
                    ),
                    lost: vec![(channel.to_owned(), first)],
                });
            }
        }
        let mut entries = entries;
        let mut duplicate = None;
        if let Some(i) = self.write_idempotency(channel, &entries).await? {
            // From this entry on nothing may be written: its key is stored with another
            // message, and the seqs after it must not leave a hole.
            duplicate = Some(entries[i].seq);
            entries.truncate(i);
        }
        let mut start = 0;
        while start < entries.len() {
            let b = bucket(entries[start].seq);
            let mut end = start;
            let mut bytes = 0;
            while end < entries.len()
                && bucket(entries[end].seq) == b
                && end - start < MAX_BATCH_ENTRIES
                && (end == start || bytes + entries[end].data.len() <= MAX_BATCH_BYTES)
            {
                bytes += entries[end].data.len() + entries[end].event.len();
                end += 1;
            }
            let chunk = &entries[start..end];
            let mut batch = Batch::new(BatchType::Logged);
            let mut values = Vec::with_capacity(chunk.len());
            for e in chunk {
                batch.append_statement(st.insert_message.clone());
                values.push((
                    channel,
                    to_i64("bucket", b)?,
                    to_i64("seq", e.seq)?,
                    to_i64("epoch", e.epoch)?,
                    to_i64("ts", e.ts_ms)?,
                    e.event.as_str(),
                    e.data.as_ref(),
                    e.idempotency.as_ref().map(|(k, _)| k.as_str()),
                    self.ttl_of(e),
                ));
            }
            let res = s.batch(&batch, values).await.map_err(eng!("append"))?;
            let (applied, _) = lwt_outcome(res, "append", None)?;
            if !applied {
                // Earlier chunks are written: move the head past them before reporting.
                if start > 0 {
                    let last = entries[start - 1];
                    self.advance_head(channel, last.epoch, last.seq).await?;
                }
                return Err(StoreError::Conflict {
                    detail: format!(
                        "{channel}: some of seqs {}..={} already written",
                        chunk[0].seq,
                        chunk[chunk.len() - 1].seq
                    ),
                    lost: vec![(channel.to_owned(), chunk[0].seq)],
                });
            }
            start = end;
        }
        if let Some(last) = entries.last() {
            self.advance_head(channel, last.epoch, last.seq).await?;
        }
        match duplicate {
            None => Ok(()),
            Some(seq) => Err(StoreError::Conflict {
                detail: format!("{channel}: the idempotency key of seq {seq} is already stored"),
                lost: vec![(channel.to_owned(), seq)],
            }),
        }
    }

    /// TTL of a message row: the entry's own (its namespace's retention age), else the
    /// store's default.
    fn ttl_of(&self, e: &AppendEntry) -> i32 {
        if e.ttl_secs > 0 {
            cql_ttl(u64::from(e.ttl_secs))
        } else {
            self.inner.message_ttl
        }
    }

    /// Claims each entry's idempotency key for its seq. The claim is the one point where
    /// two writers of a key (dispatchers racing after an ownership change, or a paused one
    /// waking up) are ordered: it is conditional, and a claim whose message landed is never
    /// taken over. Returns the index of the first entry whose key is already stored with
    /// another message (a duplicate: it and what follows must not be written), if any.
    async fn write_idempotency(
        &self,
        channel: &str,
        entries: &[&AppendEntry],
    ) -> Result<Option<usize>, StoreError> {
        let claims = entries.iter().enumerate().filter_map(|(i, e)| {
            let (key, expires) = e.idempotency.as_ref()?;
            Some(async move {
                self.claim_key(channel, key, e, *expires)
                    .await
                    .map(|won| (!won).then_some(i))
            })
        });
        let lost = futures_util::future::try_join_all(claims).await?;
        Ok(lost.into_iter().flatten().min())
    }

    /// Claims `key` for entry `e`; false when the key's message is already stored elsewhere.
    async fn claim_key(
        &self,
        channel: &str,
        key: &str,
        e: &AppendEntry,
        expires: u64,
    ) -> Result<bool, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let secs = expires.saturating_sub(e.ts_ms).div_ceil(1000) + IDEMPOTENCY_GRACE_SECS;
        let ttl = cql_ttl(secs);
        let (epoch, seq, exp) = (
            to_i64("epoch", e.epoch)?,
            to_i64("seq", e.seq)?,
            to_i64("expires_at", expires)?,
        );
        let res = s
            .execute_unpaged(&st.insert_idempotency, (channel, key, epoch, seq, exp, ttl))
            .await
            .map_err(eng!("idempotency claim"))?;
        let (applied, mut current) = lwt_outcome(res, "idempotency claim", Some("seq"))?;
        for _ in 0..8 {
            if applied {
                return Ok(true);
            }
            let Some(CqlValue::BigInt(held)) = current else {
                // The record expired between the two statements: claim afresh.
                return Box::pin(self.claim_key(channel, key, e, expires)).await;
            };
            if held == seq {
                return Ok(true);
            }
            if self.message_key_at(channel, held).await?.as_deref() == Some(key) {
                return Ok(false);
            }
            // A claim whose message never landed (its writer died or lost the seq): take it
            // over, unless it moved meanwhile.
            let res = s
                .execute_unpaged(
                    &st.move_idempotency,
                    (ttl, epoch, seq, exp, channel, key, held),
                )
                .await
                .map_err(eng!("idempotency claim"))?;
            let (moved, now) = lwt_outcome(res, "idempotency claim", Some("seq"))?;
            if moved {
                return Ok(true);
            }
            current = now;
        }
        Err(StoreError::Engine(format!(
            "{channel}: idempotency key kept moving under 8 claims"
        )))
    }

    /// The idempotency key carried by the message at `seq`, if the message exists.
    async fn message_key_at(&self, channel: &str, seq: i64) -> Result<Option<String>, StoreError> {
        let st = self.statements().await?;
        let b = to_i64("bucket", bucket(to_u64("seq", seq)?))?;
        let res = self
            .inner
            .session
            .execute_unpaged(&st.message_key, (channel, b, seq))
            .await
            .map_err(eng!("read message key"))?;
        let row = rows(res, "read message key")?
            .maybe_first_row::<(Option<String>,)>()
            .map_err(eng!("read message key"))?;
        Ok(row.and_then(|(k,)| k))
    }

    /// Moves the head forward to `seq` (never back): `UPDATE … IF last_seq < seq`, or
    /// `INSERT … IF NOT EXISTS` for a channel's first write; retried if the two race.
    async fn advance_head(&self, channel: &str, epoch: u64, seq: u64) -> Result<(), StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let (epoch, seq) = (to_i64("epoch", epoch)?, to_i64("seq", seq)?);
        for _ in 0..16 {
            let res = s
                .execute_unpaged(&st.advance_head, (epoch, seq, channel, seq))
                .await
                .map_err(eng!("advance head"))?;
            let (applied, current) = lwt_outcome(res, "advance head", Some("last_seq"))?;
            if applied || current.is_some() {
                // Applied, or the head is already at or past `seq`.
                return Ok(());
            }
            let res = s
                .execute_unpaged(&st.insert_head, (channel, epoch, seq))
                .await
                .map_err(eng!("create head"))?;
            if lwt_outcome(res, "create head", None)?.0 {
                return Ok(());
            }
        }
        Err(StoreError::Engine(format!(
            "{channel}: could not advance head to {seq} after 16 attempts"
        )))
    }

    /// Epoch and seq of the last message of the contiguous run starting at `from`, if any.
    async fn probe_tail(&self, channel: &str, from: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let mut next = from;
        let mut found = None;
        'buckets: loop {
            let res = s
                .execute_unpaged(
                    &st.probe_tail,
                    (
                        channel,
                        to_i64("bucket", bucket(next))?,
                        to_i64("seq", next)?,
                        PAGE_ROWS,
                    ),
                )
                .await
                .map_err(eng!("probe tail"))?;
            let rows = rows(res, "probe tail")?;
            let before = next;
            for r in rows.rows::<(i64, i64)>().map_err(eng!("probe tail"))? {
                let (seq, epoch) = r.map_err(eng!("probe tail"))?;
                if to_u64("message", seq)? != next {
                    break 'buckets;
                }
                found = Some((to_u64("message", epoch)?, next));
                next += 1;
            }
            if next == before {
                break;
            }
        }
        Ok(found)
    }

    /// Messages with `from <= seq <= to`, ascending, at most `limit`.
    async fn read_messages(
        &self,
        channel: &str,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let mut out = Vec::with_capacity(limit.min(1024));
        let to_i = to_i64("seq", to)?;
        for b in bucket(from)..=bucket(to) {
            let remaining = limit - out.len();
            if remaining == 0 {
                break;
            }
            let lo = from.max(b << BUCKET_BITS);
            let n = i32::try_from(remaining).unwrap_or(i32::MAX);
            let mut pager = s
                .execute_iter(
                    st.read_messages.clone(),
                    (channel, to_i64("bucket", b)?, to_i64("seq", lo)?, to_i, n),
                )
                .await
                .map_err(eng!("read messages"))?
                .rows_stream::<(i64, i64, i64, String, Vec<u8>)>()
                .map_err(eng!("read messages"))?;
            while let Some((seq, epoch, ts, event, data)) =
                pager.try_next().await.map_err(eng!("read messages"))?
            {
                out.push(StoredMessage {
                    seq: to_u64("message", seq)?,
                    epoch: to_u64("message", epoch)?,
                    ts_ms: to_u64("message", ts)?,
                    event,
                    data: Bytes::from(data),
                });
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The first seq at or after `from` whose message is younger than `cutoff_ms`
    /// (`to + 1` when all are older).
    async fn first_young(
        &self,
        channel: &str,
        from: u64,
        to: u64,
        cutoff_ms: u64,
    ) -> Result<u64, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let mut new_first = from;
        let mut cursor = from;
        while cursor <= to {
            let b = bucket(cursor);
            let res = s
                .execute_unpaged(
                    &st.read_timestamps,
                    (
                        channel,
                        to_i64("bucket", b)?,
                        to_i64("seq", cursor)?,
                        to_i64("seq", to)?,
                        PAGE_ROWS,
                    ),
                )
                .await
                .map_err(eng!("read timestamps"))?;
            let rows = rows(res, "read timestamps")?;
            let mut last = None;
            for r in rows.rows::<(i64, i64)>().map_err(eng!("read timestamps"))? {
                let (seq, ts) = r.map_err(eng!("read timestamps"))?;
                let (seq, ts) = (to_u64("message", seq)?, to_u64("message", ts)?);
                if ts >= cutoff_ms {
                    return Ok(new_first);
                }
                new_first = seq + 1;
                last = Some(seq);
            }
            cursor = match last {
                Some(seq) => seq + 1,
                // Bucket exhausted: go on with the next one.
                None => (b + 1) << BUCKET_BITS,
            };
        }
        Ok(to + 1)
    }
}

#[async_trait]
impl Store for ScyllaStore {
    /// Also repairs a head that lags the log (a writer died between its message batch and
    /// its head update), so the sequencer that re-reads after a conflict moves on.
    async fn channel_meta(&self, channel: &str) -> Result<Option<ChannelMeta>, StoreError> {
        let meta = self.meta(channel).await?;
        let start = meta.map_or(1, |m| m.last_seq + 1);
        let Some((epoch, last_seq)) = self.probe_tail(channel, start).await? else {
            return Ok(meta);
        };
        // Usually a writer between its message batch and its head update (a normal race);
        // after a writer died, this is what moves the head on.
        tracing::debug!(
            channel,
            last_seq,
            "channel head lagged the log; advancing it"
        );
        self.advance_head(channel, epoch, last_seq).await?;
        self.meta(channel).await
    }

    async fn append(&self, batch: AppendBatch) -> Result<(), StoreError> {
        // Group by channel, keeping each channel's seq order; channels go in parallel.
        let mut channels: Vec<(&str, Vec<&AppendEntry>)> = Vec::new();
        for e in &batch.entries {
            match channels.iter_mut().find(|(c, _)| *c == e.channel) {
                Some((_, v)) => v.push(e),
                None => channels.push((e.channel.as_str(), vec![e])),
            }
        }
        // Every channel's write runs to its end (none is abandoned half-way because another
        // failed), so a conflict can say exactly what was not written.
        let outcomes = futures_util::future::join_all(
            channels
                .into_iter()
                .map(|(c, entries)| self.append_channel(c, entries)),
        )
        .await;
        let mut lost = Vec::new();
        let mut details = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(()) => {}
                Err(StoreError::Conflict { detail, lost: l }) => {
                    details.push(detail);
                    lost.extend(l);
                }
                Err(other) => return Err(other),
            }
        }
        if lost.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Conflict {
                detail: details.join("; "),
                lost,
            })
        }
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
        let Some(meta) = self.meta(channel).await? else {
            return Ok(Vec::new());
        };
        let from = from.max(meta.first_seq);
        if from > meta.last_seq {
            return Ok(Vec::new());
        }
        self.read_messages(channel, from, meta.last_seq, limit)
            .await
    }

    async fn idempotency_get(
        &self,
        channel: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let st = self.statements().await?;
        let res = self
            .inner
            .session
            .execute_unpaged(&st.get_idempotency, (channel, key))
            .await
            .map_err(eng!("read idempotency"))?;
        let row = rows(res, "read idempotency")?
            .maybe_first_row::<(i64, i64, i64)>()
            .map_err(eng!("read idempotency"))?;
        let Some((epoch, seq, expires)) = row else {
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
        // The record is written before its message: it counts only if the message landed.
        if self.message_key_at(channel, seq).await?.as_deref() == Some(key) {
            Ok(Some(rec))
        } else {
            // Not written, or since trimmed / expired: the key no longer dedupes, like a
            // record past its window. A seq taken by another message means the write lost.
            Ok(None)
        }
    }

    async fn trim(
        &self,
        channel: &str,
        retention: Retention,
        now_ms: u64,
    ) -> Result<TrimOutcome, StoreError> {
        let Some(meta) = self.meta(channel).await? else {
            return Ok(TrimOutcome::default());
        };
        let by_count = meta
            .last_seq
            .saturating_sub(retention.max_count)
            .saturating_add(1);
        let mut new_first = meta.first_seq.max(by_count);
        let age_ms = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(age_ms);
        if new_first <= meta.last_seq {
            new_first = self
                .first_young(channel, new_first, meta.last_seq, cutoff)
                .await?;
        }
        if new_first <= meta.first_seq {
            return Ok(TrimOutcome {
                removed: 0,
                first_seq: meta.first_seq,
            });
        }
        let st = self.statements().await?;
        let s = &self.inner.session;
        // The watermark first: from here on readers no longer see the trimmed rows.
        s.execute_unpaged(&st.set_low, (to_i64("seq", new_first)?, channel))
            .await
            .map_err(eng!("write low"))?;
        for b in bucket(meta.first_seq)..=bucket(new_first - 1) {
            let bi = to_i64("bucket", b)?;
            if (b + 1) << BUCKET_BITS <= new_first {
                s.execute_unpaged(&st.delete_bucket, (channel, bi))
                    .await
                    .map_err(eng!("trim"))?;
            } else {
                s.execute_unpaged(&st.delete_below, (channel, bi, to_i64("seq", new_first)?))
                    .await
                    .map_err(eng!("trim"))?;
            }
        }
        Ok(TrimOutcome {
            removed: new_first - meta.first_seq,
            first_seq: new_first,
        })
    }

    async fn list_channels(&self) -> Result<Vec<String>, StoreError> {
        let st = self.statements().await?;
        let mut stream = self
            .inner
            .session
            .execute_iter(st.list_heads.clone(), ())
            .await
            .map_err(eng!("list channels"))?
            .rows_stream::<(String,)>()
            .map_err(eng!("list channels"))?;
        let mut out = Vec::new();
        while let Some((c,)) = stream.try_next().await.map_err(eng!("list channels"))? {
            out.push(c);
        }
        Ok(out)
    }

    /// Read, compare, write: two acks of one user racing may leave the older one (a
    /// client then resumes a little earlier and sees messages again, never fewer).
    async fn ack_set(&self, channel: &str, user: &str, ack: Ack) -> Result<Ack, StoreError> {
        if let Some(current) = self.ack_get(channel, user).await? {
            if !ack.is_after(&current) {
                return Ok(current);
            }
        }
        let st = self.statements().await?;
        self.inner
            .session
            .execute_unpaged(
                &st.set_ack,
                (
                    channel,
                    user,
                    to_i64("epoch", ack.epoch)?,
                    to_i64("seq", ack.seq)?,
                    to_i64("ts", ack.ts_ms)?,
                ),
            )
            .await
            .map_err(eng!("write ack"))?;
        Ok(ack)
    }

    async fn ack_get(&self, channel: &str, user: &str) -> Result<Option<Ack>, StoreError> {
        let st = self.statements().await?;
        let res = self
            .inner
            .session
            .execute_unpaged(&st.get_ack, (channel, user))
            .await
            .map_err(eng!("read ack"))?;
        let row = rows(res, "read ack")?
            .maybe_first_row::<(i64, i64, i64)>()
            .map_err(eng!("read ack"))?;
        row.map(|(epoch, seq, ts)| {
            Ok(Ack {
                epoch: to_u64("ack", epoch)?,
                seq: to_u64("ack", seq)?,
                ts_ms: to_u64("ack", ts)?,
            })
        })
        .transpose()
    }

    async fn acks(
        &self,
        channel: &str,
        after_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, Ack)>, StoreError> {
        let st = self.statements().await?;
        let n = i32::try_from(limit).unwrap_or(i32::MAX);
        let res = self
            .inner
            .session
            .execute_unpaged(&st.list_acks, (channel, after_user, n))
            .await
            .map_err(eng!("list acks"))?;
        let mut out = Vec::new();
        for r in rows(res, "list acks")?
            .rows::<(String, i64, i64, i64)>()
            .map_err(eng!("list acks"))?
        {
            let (user, epoch, seq, ts) = r.map_err(eng!("list acks"))?;
            out.push((
                user,
                Ack {
                    epoch: to_u64("ack", epoch)?,
                    seq: to_u64("ack", seq)?,
                    ts_ms: to_u64("ack", ts)?,
                },
            ));
        }
        Ok(out)
    }

    /// Rows expire by TTL on their own; this sweep deletes the ones logically expired but
    /// still in their grace period. It scans the whole table: fine for tests and small
    /// deployments, a cluster can skip calling it.
    async fn expire_idempotency(&self, now_ms: u64) -> Result<u64, StoreError> {
        let st = self.statements().await?;
        let s = &self.inner.session;
        let mut stream = s
            .execute_iter(st.scan_idempotency.clone(), ())
            .await
            .map_err(eng!("scan idempotency"))?
            .rows_stream::<(String, String, i64)>()
            .map_err(eng!("scan idempotency"))?;
        let mut expired = Vec::new();
        while let Some((channel, key, expires)) =
            stream.try_next().await.map_err(eng!("scan idempotency"))?
        {
            if u64::try_from(expires).unwrap_or(0) <= now_ms {
                expired.push((channel, key));
            }
        }
        for (channel, key) in &expired {
            s.execute_unpaged(&st.delete_idempotency, (channel.as_str(), key.as_str()))
                .await
                .map_err(eng!("expire idempotency"))?;
        }
        Ok(expired.len() as u64)
    }

    /// Every acknowledged write is already at QUORUM; nothing is buffered here.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
