//! The keyspace's tables: created and brought up to date by `herald migrate`, checked at
//! connect.
//!
//! - `messages`: the log, partitioned by `(channel, bucket)` with `bucket = seq >> 16` and
//!   clustered by `seq` (after Discord's layout), TimeWindowCompactionStrategy, rows expiring
//!   by TTL. Its static columns hold the channel's head as of the last write to that
//!   partition, written in the same mutation as the rows, so the head never runs ahead of
//!   the rows and costs no extra write.
//! - `channels`: one row per channel: epoch, the bucket the head is in (or the one before),
//!   the fence of the newest owner that sealed it, and the first retained seq (count
//!   retention).
//! - `idempotency`: publish records by `(channel, key)`, expiring by TTL, marked `landed`
//!   once their message is stored.
//! - `acks`: last acknowledged position per `(channel, user)`.
//! - `leases`: one partition holding every write-ownership lease (see `leases.rs`).

use super::util::engine;
use super::ScyllaStore;
use crate::StoreError;
use herald_proto::PARTITIONS;
use scylla::statement::batch::{Batch, BatchType};

const TABLES: [&str; 5] = ["messages", "channels", "idempotency", "acks", "leases"];

/// Columns added to existing tables since their first release, as `(table, column, type)`;
/// `herald migrate` adds them, and start-up refuses a schema that lacks them.
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("messages", "idem_key", "text"),
    ("messages", "head_seq", "bigint static"),
    ("messages", "head_fence", "bigint static"),
    ("messages", "head_epoch", "bigint static"),
    ("idempotency", "landed", "boolean"),
];

/// Lease rows created per conditional batch by `migrate`.
const LEASE_ROWS_PER_BATCH: usize = 64;

impl ScyllaStore {
    /// Creates the keyspace, tables and lease rows if they do not exist (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let ks = &self.inner.keyspace;
        let cql = &self.inner.cql;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                self.inner.replication
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.messages (channel text, bucket bigint, \
                 seq bigint, epoch bigint, ts bigint, event text, data blob, idem_key text, \
                 head_seq bigint static, head_fence bigint static, head_epoch bigint static, \
                 PRIMARY KEY ((channel, bucket), seq)) WITH CLUSTERING ORDER BY (seq ASC) \
                 AND compaction = {{'class': 'TimeWindowCompactionStrategy', \
                 'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}}"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.channels (channel text PRIMARY KEY, \
                 epoch bigint, fence bigint, bucket bigint, low bigint)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.idempotency (channel text, key text, \
                 epoch bigint, seq bigint, expires_at bigint, landed boolean, \
                 PRIMARY KEY ((channel, key)))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.acks (channel text, user text, epoch bigint, \
                 seq bigint, ts bigint, PRIMARY KEY (channel, user))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.leases (scope text, name text, owner text, \
                 fence bigint, lo bigint, id text, addr text, version bigint, ceiling bigint, \
                 dead boolean, PRIMARY KEY (scope, name))"
            ),
        ];
        for stmt in ddl {
            cql.ddl(&stmt, "migrate").await?;
        }
        for (table, column, ty) in self.missing_columns().await? {
            cql.ddl(
                &format!("ALTER TABLE {ks}.{table} ADD {column} {ty}"),
                "migrate",
            )
            .await?;
        }
        cql.session
            .await_schema_agreement()
            .await
            .map_err(|e| engine("schema agreement", e))?;
        self.create_lease_rows().await
    }

    /// One row per partition (owner none, fence 0) plus the partition count, each created
    /// only if missing: a migrate never resets a lease in use.
    async fn create_lease_rows(&self) -> Result<(), StoreError> {
        let ks = &self.inner.keyspace;
        let cql = &self.inner.cql;
        let insert = cql
            .session
            .prepare(format!(
                "INSERT INTO {ks}.leases (scope, name, fence, lo) VALUES (?, ?, ?, 0) \
                 IF NOT EXISTS"
            ))
            .await
            .map_err(|e| engine("migrate", e))?;
        let mut rows: Vec<(String, i64)> =
            vec![(super::leases::CONFIG_ROW.into(), PARTITIONS.into())];
        rows.extend((0..PARTITIONS).map(|p| (super::leases::partition_row(p), 0)));
        for chunk in rows.chunks(LEASE_ROWS_PER_BATCH) {
            let mut batch = Batch::new(BatchType::Logged);
            let mut values = Vec::with_capacity(chunk.len());
            for (name, fence) in chunk {
                batch.append_statement(insert.clone());
                values.push((super::leases::SCOPE, name.as_str(), *fence));
            }
            // Not applied means some rows existed already; the others were not created,
            // so fall back to one row at a time.
            if !cql.lwt_batch(&batch, values, "create lease rows").await? {
                for (name, fence) in chunk {
                    cql.lwt(
                        &insert,
                        (super::leases::SCOPE, name.as_str(), *fence),
                        "create lease row",
                    )
                    .await?;
                }
            }
        }
        let count = self.lease_table().partition_count().await?;
        if count != Some(u64::from(PARTITIONS)) {
            return Err(StoreError::Invalid(format!(
                "keyspace {ks} was created for {count:?} partitions; this build uses {PARTITIONS}"
            )));
        }
        Ok(())
    }

    /// Everything `connect` needs that `migrate` creates, as a list of what is missing.
    pub(super) async fn missing_schema(&self) -> Result<Vec<String>, StoreError> {
        let mut missing: Vec<String> = self
            .missing_tables()
            .await?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if missing.is_empty() {
            missing = self
                .missing_columns()
                .await?
                .into_iter()
                .map(|(t, c, _)| format!("{t}.{c}"))
                .collect();
        }
        if missing.is_empty() {
            match self.lease_table().partition_count().await? {
                Some(n) if n == u64::from(PARTITIONS) => {}
                Some(n) => missing.push(format!(
                    "leases for {PARTITIONS} partitions (the keyspace has {n}; it belongs to another Herald version)"
                )),
                None => missing.push("leases rows".into()),
            }
        }
        Ok(missing)
    }

    async fn missing_tables(&self) -> Result<Vec<&'static str>, StoreError> {
        let rows = self
            .inner
            .cql
            .query(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (self.inner.keyspace.as_str(),),
                "schema check",
            )
            .await?;
        let mut present = Vec::new();
        for r in rows
            .rows::<(String,)>()
            .map_err(|e| engine("schema check", e))?
        {
            present.push(r.map_err(|e| engine("schema check", e))?.0);
        }
        Ok(TABLES
            .into_iter()
            .filter(|t| !present.iter().any(|p| p == t))
            .collect())
    }

    async fn missing_columns(
        &self,
    ) -> Result<Vec<(&'static str, &'static str, &'static str)>, StoreError> {
        let mut missing = Vec::new();
        for (table, column, ty) in ADDED_COLUMNS {
            let rows = self
                .inner
                .cql
                .query(
                    "SELECT column_name FROM system_schema.columns \
                     WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                    (self.inner.keyspace.as_str(), table, column),
                    "schema check",
                )
                .await?;
            if rows.rows_num() == 0 {
                missing.push((table, column, ty));
            }
        }
        Ok(missing)
    }

    /// Drops the keyspace and everything in it (tests).
    pub async fn drop_keyspace(&self) -> Result<(), StoreError> {
        let stmt = format!("DROP KEYSPACE IF EXISTS {}", self.inner.keyspace);
        self.inner.cql.ddl(&stmt, "drop keyspace").await
    }
}
