//! The lease table: who may write which partition, and with which fence.
//!
//! Every row lives in one Cassandra partition, so a dispatcher can change many leases with
//! one conditional batch (one Paxos round). Two kinds of rows:
//! - `d:<key>`: a live dispatcher process (`key` = its id and incarnation): its address, a
//!   `version` bumped by each renewal, the `ceiling` its write timestamps stay below until
//!   the next renewal, and `dead` once another dispatcher declared it expired.
//! - `p:<partition>`: the partition's owner (a dispatcher key, or none), its `fence` (bumped
//!   at every change of owner) and `lo`, the lowest write timestamp the owner may use (one
//!   past the previous owner's ceiling).
//!
//! This module only runs the statements; the protocol (when to renew, take, release, or
//! declare a dispatcher dead) belongs to the dispatcher (crates/herald-server/src/cluster/leases.rs).

use super::util::{eng, to_i64, to_u64};
use super::ScyllaStore;
use crate::StoreError;
use scylla::statement::batch::{Batch, BatchType};

/// The Cassandra partition holding every lease row.
pub(super) const SCOPE: &str = "dispatch";
/// The row recording how many partitions the keyspace was created for (in `fence`).
pub(super) const CONFIG_ROW: &str = "config";
/// Lease rows changed per conditional batch (Cassandra warns above 5 KiB per batch).
const ROWS_PER_LWT: usize = 64;

pub(super) fn partition_row(p: u32) -> String {
    format!("p:{p:04}")
}

fn dispatcher_row(key: &str) -> String {
    format!("d:{key}")
}

/// A partition's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: u32,
    /// The holder's dispatcher key; `None`: free.
    pub owner: Option<String>,
    pub fence: u64,
    /// Lowest write timestamp its holder may use.
    pub lo: i64,
}

/// A dispatcher process's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherRow {
    /// `<id>#<incarnation>`.
    pub key: String,
    pub id: String,
    /// Where its HTTP API listens (`host:port`).
    pub addr: String,
    pub version: u64,
    pub ceiling: i64,
    pub dead: bool,
}

/// The whole table at one read.
#[derive(Clone, Debug, Default)]
pub struct LeaseSnapshot {
    /// By partition number.
    pub partitions: Vec<PartitionRow>,
    pub dispatchers: Vec<DispatcherRow>,
}

/// One partition to take: from whom (as last read) and with which floor.
#[derive(Clone, Debug)]
pub struct Take {
    pub partition: u32,
    pub from: Option<String>,
    pub fence: u64,
    pub lo: i64,
}

/// Statements on the lease table.
#[derive(Clone)]
pub struct LeaseTable {
    store: ScyllaStore,
}

impl ScyllaStore {
    pub fn lease_table(&self) -> LeaseTable {
        LeaseTable {
            store: self.clone(),
        }
    }
}

type LeaseRowValues = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<bool>,
);

impl LeaseTable {
    pub async fn read(&self) -> Result<LeaseSnapshot, StoreError> {
        let st = self.store.statements().await?;
        let rows = self
            .store
            .inner
            .cql
            .read(&st.lease_rows, (SCOPE,), "read leases")
            .await?;
        let mut snap = LeaseSnapshot::default();
        for r in rows.rows::<LeaseRowValues>().map_err(eng("read leases"))? {
            let (name, owner, fence, lo, id, addr, version, ceiling, dead) =
                r.map_err(eng("read leases"))?;
            if let Some(p) = name.strip_prefix("p:") {
                let Ok(partition) = p.parse::<u32>() else {
                    continue;
                };
                snap.partitions.push(PartitionRow {
                    partition,
                    owner,
                    fence: to_u64("lease fence", fence.unwrap_or(0))?,
                    lo: lo.unwrap_or(0),
                });
            } else if let Some(key) = name.strip_prefix("d:") {
                snap.dispatchers.push(DispatcherRow {
                    key: key.to_owned(),
                    id: id.unwrap_or_default(),
                    addr: addr.unwrap_or_default(),
                    version: to_u64("lease version", version.unwrap_or(0))?,
                    ceiling: ceiling.unwrap_or(0),
                    dead: dead.unwrap_or(false),
                });
            }
        }
        snap.partitions.sort_by_key(|p| p.partition);
        Ok(snap)
    }

    pub(super) async fn partition_count(&self) -> Result<Option<u64>, StoreError> {
        let ks = &self.store.inner.keyspace;
        let rows = self
            .store
            .inner
            .cql
            .query(
                &format!("SELECT fence FROM {ks}.leases WHERE scope = ? AND name = ?"),
                (SCOPE, CONFIG_ROW),
                "read lease config",
            )
            .await?;
        let row = rows
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(eng("read lease config"))?;
        row.and_then(|(n,)| n)
            .map(|n| to_u64("lease config", n))
            .transpose()
    }

    /// Creates this process's row (a new incarnation: never an existing one).
    pub async fn register(
        &self,
        key: &str,
        id: &str,
        addr: &str,
        ceiling: i64,
    ) -> Result<bool, StoreError> {
        let st = self.store.statements().await?;
        self.store
            .inner
            .cql
            .lwt(
                &st.lease_register,
                (SCOPE, dispatcher_row(key), id, addr, ceiling),
                "register lease",
            )
            .await
    }

    /// Bumps the version and publishes a new ceiling, if nobody declared this process dead
    /// and the version is still `version`.
    pub async fn renew(&self, key: &str, version: u64, ceiling: i64) -> Result<bool, StoreError> {
        let st = self.store.statements().await?;
        self.store
            .inner
            .cql
            .lwt(
                &st.lease_renew,
                (
                    to_i64("version", version + 1)?,
                    ceiling,
                    SCOPE,
                    dispatcher_row(key),
                    to_i64("version", version)?,
                ),
                "renew lease",
            )
            .await
    }

    /// Declares `row`'s process dead if it has not renewed since it was read. The row
    /// (with its last ceiling) expires after `ttl_secs`.
    pub async fn mark_dead(&self, row: &DispatcherRow, ttl_secs: i32) -> Result<bool, StoreError> {
        let st = self.store.statements().await?;
        let version = to_i64("version", row.version)?;
        self.store
            .inner
            .cql
            .lwt(
                &st.lease_mark_dead,
                (
                    ttl_secs,
                    row.id.as_str(),
                    row.addr.as_str(),
                    version,
                    row.ceiling,
                    SCOPE,
                    dispatcher_row(&row.key),
                    version,
                ),
                "declare dispatcher dead",
            )
            .await
    }

    /// Takes partitions for `owner`, each only if still held by whom it was read from with
    /// the same fence; returns the ones taken (a conditional batch applies whole or not at
    /// all, so a lost race costs only its batch).
    pub async fn take(&self, owner: &str, takes: &[Take]) -> Result<Vec<Take>, StoreError> {
        let st = self.store.statements().await?;
        let mut taken = Vec::new();
        for chunk in takes.chunks(ROWS_PER_LWT) {
            let mut batch = Batch::new(BatchType::Logged);
            let mut values = Vec::with_capacity(chunk.len());
            for t in chunk {
                batch.append_statement(st.lease_take.clone());
                values.push((
                    owner,
                    to_i64("fence", t.fence + 1)?,
                    t.lo,
                    SCOPE,
                    partition_row(t.partition),
                    t.from.as_deref(),
                    to_i64("fence", t.fence)?,
                ));
            }
            if self
                .store
                .inner
                .cql
                .lwt_batch(&batch, values, "take leases")
                .await?
            {
                taken.extend(chunk.iter().cloned());
            }
        }
        Ok(taken)
    }

    /// Gives partitions up (`(partition, fence)` as held); the next owner's timestamps
    /// start at `lo`. Returns the ones released.
    pub async fn release(
        &self,
        owner: &str,
        held: &[(u32, u64)],
        lo: i64,
    ) -> Result<Vec<u32>, StoreError> {
        let st = self.store.statements().await?;
        let mut released = Vec::new();
        for chunk in held.chunks(ROWS_PER_LWT) {
            let mut batch = Batch::new(BatchType::Logged);
            let mut values = Vec::with_capacity(chunk.len());
            for (p, fence) in chunk {
                batch.append_statement(st.lease_release.clone());
                values.push((
                    lo,
                    SCOPE,
                    partition_row(*p),
                    owner,
                    to_i64("fence", *fence)?,
                ));
            }
            if self
                .store
                .inner
                .cql
                .lwt_batch(&batch, values, "release leases")
                .await?
            {
                released.extend(chunk.iter().map(|(p, _)| *p));
            }
        }
        Ok(released)
    }
}
