//! One CQL statement against Cassandra / ScyllaDB through the `scylla` driver: to check that
//! the database answers and to drop a test keyspace. [`exec`] is async; [`exec_blocking`] is
//! for callers that are not (or run in `Drop`), inside or outside a tokio runtime. Used by the
//! cluster target and by the cluster tests' harness.

use anyhow::Context;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::unprepared::Statement;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// Connects to the comma-separated `contact_points` and runs `statement` (no bind values, the
/// driver's default consistency LOCAL_QUORUM), all within `timeout`. Rows are discarded.
pub async fn exec(contact_points: &str, statement: &str, timeout: Duration) -> anyhow::Result<()> {
    let nodes: Vec<&str> = contact_points
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    anyhow::ensure!(
        !nodes.is_empty(),
        "no CQL contact points in {contact_points:?}"
    );
    let deadline = Instant::now()
        .checked_add(timeout)
        .with_context(|| format!("CQL timeout {timeout:?} is too long"))?;
    let session = timeout_at(
        deadline,
        SessionBuilder::new()
            .known_nodes(&nodes)
            .connection_timeout(timeout.min(Duration::from_secs(5)))
            .build(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no session within {timeout:?}"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("connecting to CQL at {contact_points}"))?;
    let mut st = Statement::new(statement);
    st.set_request_timeout(Some(timeout));
    timeout_at(deadline, session.query_unpaged(st, ()))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("CQL `{statement}` at {contact_points}"))?;
    Ok(())
}

/// [`exec`] from synchronous code: runs it on a fresh current-thread runtime in a scoped
/// thread, so it works inside a tokio runtime (even from `Drop`) as well as outside one.
/// Every failure, a panic of that thread included, comes back as an error.
pub fn exec_blocking(
    contact_points: &str,
    statement: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("herald-cql".into())
            .spawn_scoped(scope, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime for CQL")?;
                let res = rt.block_on(exec(contact_points, statement, timeout));
                // Do not wait for the driver's leftover (blocking) tasks.
                rt.shutdown_background();
                res
            })
            .context("spawning the CQL thread")?;
        worker
            .join()
            .map_err(|_| anyhow::anyhow!("the CQL thread panicked running `{statement}`"))?
    })
}
