//! A CQL session to Cassandra / ScyllaDB for the bench's own reads (Cassandra's metrics) and
//! writes (the store's price), through the `scylla` driver. Every call has a deadline.

use anyhow::Context;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use scylla::statement::Consistency;
use scylla::value::{CqlValue, Row};
use std::future::Future;
use std::time::Duration;

/// Longest wait for one CQL request (Cassandra's own write timeout is 2 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the comma-separated `contact_points`; requests run at QUORUM by default.
pub async fn connect(contact_points: &str) -> anyhow::Result<Session> {
    let nodes: Vec<&str> = contact_points
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    anyhow::ensure!(!nodes.is_empty(), "--cql: no contact points");
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::Quorum)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .build()
        .into_handle();
    let builder = SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile);
    deadline(Duration::from_secs(30), builder.build())
        .await
        .with_context(|| format!("connecting to Cassandra at {contact_points}"))
}

/// `fut` within `limit`, its error and a timeout both as anyhow errors.
pub async fn deadline<T, E>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => anyhow::bail!("no answer within {limit:?}"),
    }
}

/// Runs a query without bind values and returns its rows, untyped. Local reads (virtual
/// tables) run at ONE.
pub async fn rows(session: &Session, cql: &str) -> anyhow::Result<Vec<Row>> {
    let mut st = Statement::new(cql);
    st.set_consistency(Consistency::One);
    let res = deadline(REQUEST_TIMEOUT, session.query_unpaged(st, ()))
        .await
        .with_context(|| cql.to_owned())?;
    let rows = res.into_rows_result().with_context(|| cql.to_owned())?;
    let mut out = Vec::with_capacity(rows.rows_num());
    for r in rows.rows::<Row>().with_context(|| cql.to_owned())? {
        out.push(r.with_context(|| cql.to_owned())?);
    }
    Ok(out)
}

/// Runs a statement (DDL and the like) at the session's consistency.
pub async fn exec(session: &Session, cql: &str) -> anyhow::Result<()> {
    deadline(Duration::from_secs(60), session.query_unpaged(cql, ()))
        .await
        .with_context(|| cql.to_owned())?;
    Ok(())
}

/// A text column.
pub fn text(row: &Row, i: usize) -> Option<&str> {
    match row.columns.get(i)? {
        Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => Some(s),
        _ => None,
    }
}

/// A numeric column as f64.
pub fn number(row: &Row, i: usize) -> Option<f64> {
    Some(match row.columns.get(i)?.as_ref()? {
        CqlValue::BigInt(v) => *v as f64,
        CqlValue::Int(v) => f64::from(*v),
        CqlValue::SmallInt(v) => f64::from(*v),
        CqlValue::TinyInt(v) => f64::from(*v),
        CqlValue::Counter(c) => c.0 as f64,
        CqlValue::Double(v) => *v,
        CqlValue::Float(v) => f64::from(*v),
        _ => return None,
    })
}

/// Whether `name` is a plain CQL identifier (safe to put into a statement).
pub fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}
