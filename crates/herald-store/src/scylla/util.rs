//! Conversions between Herald's unsigned numbers and CQL's signed ones, and reading results.

use crate::StoreError;
use scylla::response::query_result::{QueryResult, QueryRowsResult};
use scylla::value::{CqlValue, Row};
use std::fmt::Display;

/// log2 of the number of seqs per `messages` partition.
pub(super) const BUCKET_BITS: u32 = 16;

pub(super) fn engine(what: &str, e: impl Display) -> StoreError {
    StoreError::Engine(format!("{what}: {e}"))
}

/// `map_err` adapter: `.map_err(eng("read head"))`.
pub(super) fn eng<E: Display>(what: &str) -> impl Fn(E) -> StoreError + '_ {
    move |e| engine(what, e)
}

pub(super) fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} exceeds i64::MAX")))
}

pub(super) fn to_u64(what: &'static str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt {
        what,
        detail: format!("negative value {v}"),
    })
}

/// A TTL as CQL takes it: at most 10 years. CQL's limit is 20 years, and Cassandra in its
/// default storage mode refuses expirations past 2038-01-19 (CASSANDRA-14092).
pub(super) fn cql_ttl(secs: u64) -> i32 {
    const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
    secs.min(MAX_TTL_SECS) as i32
}

pub(super) fn bucket(seq: u64) -> u64 {
    seq >> BUCKET_BITS
}

pub(super) fn rows(res: QueryResult, what: &str) -> Result<QueryRowsResult, StoreError> {
    res.into_rows_result().map_err(eng(what))
}

/// Whether a conditional statement or batch applied.
pub(super) fn lwt_applied(res: QueryResult, what: &str) -> Result<bool, StoreError> {
    let rows = rows(res, what)?;
    let row: Row = rows.first_row().map_err(eng(what))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => Err(StoreError::Engine(format!(
            "{what}: no [applied] column in LWT result: {other:?}"
        ))),
    }
}
