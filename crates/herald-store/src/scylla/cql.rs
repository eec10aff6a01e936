//! The session, with every request counted by kind (plain write, conditional, read), so a
//! process can say what its work costs the database.

use super::util::{eng, lwt_applied, rows};
use crate::{CqlCounts, StoreError};
use scylla::client::pager::QueryPager;
use scylla::client::session::Session;
use scylla::response::query_result::QueryRowsResult;
use scylla::serialize::batch::BatchValues;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
struct Counters {
    write_requests: AtomicU64,
    write_statements: AtomicU64,
    lwt_requests: AtomicU64,
    lwt_statements: AtomicU64,
    read_requests: AtomicU64,
}

pub(super) struct Cql {
    pub session: Session,
    counters: Counters,
}

impl Cql {
    pub fn new(session: Session) -> Self {
        Self {
            session,
            counters: Counters::default(),
        }
    }

    pub fn counts(&self) -> CqlCounts {
        let c = &self.counters;
        CqlCounts {
            write_requests: c.write_requests.load(Relaxed),
            write_statements: c.write_statements.load(Relaxed),
            lwt_requests: c.lwt_requests.load(Relaxed),
            lwt_statements: c.lwt_statements.load(Relaxed),
            read_requests: c.read_requests.load(Relaxed),
        }
    }

    fn wrote(&self, statements: usize) {
        self.counters.write_requests.fetch_add(1, Relaxed);
        self.counters
            .write_statements
            .fetch_add(statements as u64, Relaxed);
    }

    fn conditional(&self, statements: usize) {
        self.counters.lwt_requests.fetch_add(1, Relaxed);
        self.counters
            .lwt_statements
            .fetch_add(statements as u64, Relaxed);
    }

    pub async fn read(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<QueryRowsResult, StoreError> {
        self.counters.read_requests.fetch_add(1, Relaxed);
        let res = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(eng(what))?;
        rows(res, what)
    }

    /// A paged read (each page is a request; counted once, as the first).
    pub async fn read_pages(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<QueryPager, StoreError> {
        self.counters.read_requests.fetch_add(1, Relaxed);
        self.session
            .execute_iter(st.clone(), values)
            .await
            .map_err(eng(what))
    }

    pub async fn write(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<(), StoreError> {
        self.wrote(1);
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(eng(what))?;
        Ok(())
    }

    pub async fn write_batch(
        &self,
        batch: &Batch,
        values: impl BatchValues,
        what: &str,
    ) -> Result<(), StoreError> {
        self.wrote(batch.statements.len());
        self.session.batch(batch, values).await.map_err(eng(what))?;
        Ok(())
    }

    /// A conditional statement; whether it applied.
    pub async fn lwt(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<bool, StoreError> {
        self.conditional(1);
        let res = self
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(eng(what))?;
        lwt_applied(res, what)
    }

    /// A conditional batch (all statements in one partition); whether it applied.
    pub async fn lwt_batch(
        &self,
        batch: &Batch,
        values: impl BatchValues,
        what: &str,
    ) -> Result<bool, StoreError> {
        self.conditional(batch.statements.len());
        let res = self.session.batch(batch, values).await.map_err(eng(what))?;
        lwt_applied(res, what)
    }

    /// Schema statements (not counted: not per message).
    pub async fn ddl(&self, text: &str, what: &str) -> Result<(), StoreError> {
        self.session
            .query_unpaged(text, ())
            .await
            .map_err(eng(what))?;
        Ok(())
    }

    /// A one-off read by text (schema checks; not counted).
    pub async fn query(
        &self,
        text: &str,
        values: impl SerializeRow,
        what: &str,
    ) -> Result<QueryRowsResult, StoreError> {
        let res = self
            .session
            .query_unpaged(text, values)
            .await
            .map_err(eng(what))?;
        rows(res, what)
    }
}
