//! Sends each reliable publish to the dispatcher that holds its channel's partition lease
//! (or should take it), so one process assigns a channel's seqs at a time. Items this
//! process holds, and ephemeral ones (they take no seq), are published here. When the
//! holder cannot be reached at all, this process publishes itself: its dispatcher waits
//! until the lease comes here (the holder's expires, or it is given up), never writing
//! without one.

use super::forwarder::{Forward, Forwarder};
use super::leases::{Leases, Member, Route};
use crate::server::error::ApiError;
use herald_dispatcher::{Dispatcher, ItemResult, PublishError, PublishItem};
use herald_trace::{Journal, Step};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use super::forwarder::FORWARDED_FOR;

/// How long a publish keeps being routed again while leases move under it (a handoff takes
/// up to two lease rounds).
const REROUTE_FOR: Duration = Duration::from_secs(5);
const REROUTE_PAUSE: Duration = Duration::from_millis(50);

pub struct Routing {
    leases: Arc<Leases>,
    forwarder: Forwarder,
    journal: Arc<Journal>,
}

impl Routing {
    pub fn new(
        leases: Arc<Leases>,
        secret: String,
        tls_ca: Option<&std::path::Path>,
        journal: Arc<Journal>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            leases,
            forwarder: Forwarder::new(secret, tls_ca)?,
            journal,
        })
    }

    /// Whether `presented` is the cluster secret (constant-time).
    pub fn is_cluster_secret(&self, presented: &str) -> bool {
        crate::auth::same_secret(presented, self.forwarder.secret())
    }

    /// Publishes `items`, each on its channel's owner: what became of each, in order. Items
    /// refused with `not_owner` (the lease moved before anything of them was written) are
    /// routed again, a few times, as the lease table is re-read. An `Err` refuses the whole
    /// request before anything was written.
    pub async fn publish(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        items: Vec<PublishItem>,
    ) -> Result<Vec<ItemResult>, ApiError> {
        dispatcher.validate(publisher, &items)?;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut pending: Vec<(usize, PublishItem)> = items.into_iter().enumerate().collect();
        let deadline = tokio::time::Instant::now() + REROUTE_FOR;
        let mut pause = REROUTE_PAUSE;
        loop {
            let last_try = tokio::time::Instant::now() >= deadline;
            let mut local: Vec<(usize, PublishItem)> = Vec::new();
            let mut remote: BTreeMap<String, (Member, Vec<(usize, PublishItem)>)> = BTreeMap::new();
            for (i, item) in pending.drain(..) {
                match (!item.ephemeral).then(|| self.leases.route(&item.channel)) {
                    Some(Route::There(owner)) => remote
                        .entry(owner.id.clone())
                        .or_insert_with(|| (owner, Vec::new()))
                        .1
                        .push((i, item)),
                    _ => local.push((i, item)),
                }
            }
            let remote_calls = remote
                .into_values()
                .map(|(owner, items)| self.forward_or_local(dispatcher, publisher, owner, items));
            let local_call = self.local(dispatcher, publisher, local);
            let (local_out, remote_out) =
                tokio::join!(local_call, futures_util::future::join_all(remote_calls));
            for ((i, item), outcome) in local_out
                .into_iter()
                .chain(remote_out.into_iter().flatten())
            {
                match outcome {
                    Err(e) if e.code == "not_owner" && !last_try => pending.push((i, item)),
                    other => results[i] = Some(other),
                }
            }
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
        Ok(PublishError::fill(results))
    }

    /// Publishes `items` here: each with its outcome.
    async fn local(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        items: Vec<(usize, PublishItem)>,
    ) -> Vec<((usize, PublishItem), ItemResult)> {
        if items.is_empty() {
            return Vec::new();
        }
        let list: Vec<PublishItem> = items.iter().map(|(_, it)| it.clone()).collect();
        match dispatcher.publish(publisher, list).await {
            Ok(out) => items.into_iter().zip(out).collect(),
            Err(e) => items.into_iter().map(|it| (it, Err(e.clone()))).collect(),
        }
    }

    async fn forward_or_local(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        owner: Member,
        items: Vec<(usize, PublishItem)>,
    ) -> Vec<((usize, PublishItem), ItemResult)> {
        let list: Vec<PublishItem> = items.iter().map(|(_, it)| it.clone()).collect();
        for it in &list {
            if let Some(ctx) = &it.trace {
                let note = Some(format!("to {}", owner.id));
                self.journal
                    .record(ctx, &it.channel, None, Step::Forwarded, note);
            }
        }
        match self.forwarder.forward(publisher, &owner, list).await {
            // The forwarder answers each caller exactly as many results as it sent.
            Ok(results) => items.into_iter().zip(results).collect(),
            Err(Forward::Unreachable(e)) => {
                // Nothing reached the owner, so publishing here cannot duplicate anything;
                // this dispatcher waits for the lease (the owner's expires if it is gone).
                tracing::info!(owner = %owner.id, error = %e, "channel owner unreachable; publishing here");
                self.local(dispatcher, publisher, items).await
            }
            Err(Forward::Failed(e)) => items.into_iter().map(|it| (it, Err(e.clone()))).collect(),
        }
    }
}
