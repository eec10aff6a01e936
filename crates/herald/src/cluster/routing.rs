//! Sends each reliable publish to the dispatcher that holds its channel's partition lease
//! (or should take it), so one process assigns a channel's seqs at a time. Items this
//! process holds, and ephemeral ones (they take no seq), are published here. When the
//! holder cannot be reached at all, this process publishes itself: its dispatcher waits
//! until the lease comes here (the holder's expires, or it is given up), never writing
//! without one.

use super::leases::{Leases, Member, Route};
use crate::server::error::ApiError;
use herald_dispatcher::{Dispatcher, PublishItem};
use herald_proto::{PublishBatchResponse, PublishResult};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Header naming the publisher a forwarded request acts for.
pub const FORWARDED_FOR: &str = "x-herald-forwarded-for";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a publish keeps being routed again while leases move under it (a handoff takes
/// up to two lease rounds).
const REROUTE_FOR: Duration = Duration::from_secs(5);
const REROUTE_PAUSE: Duration = Duration::from_millis(50);

pub struct Routing {
    leases: Arc<Leases>,
    http: reqwest::Client,
    secret: String,
}

#[derive(Serialize)]
struct Forwarded<'a> {
    messages: Vec<ForwardedItem<'a>>,
}

#[derive(Serialize)]
struct ForwardedItem<'a> {
    channel: &'a str,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

impl Routing {
    pub fn new(leases: Arc<Leases>, secret: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            leases,
            http,
            secret,
        })
    }

    /// Whether `presented` is the cluster secret (constant-time).
    pub fn is_cluster_secret(&self, presented: &str) -> bool {
        let (a, b) = (presented.as_bytes(), self.secret.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in b.iter().enumerate() {
            diff |= usize::from(x ^ a.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }

    /// Publishes `items` (validated by the caller), each on its channel's owner. Items
    /// refused with `not_owner` (the lease moved before anything was written) are routed
    /// again, a few times, as the lease table is re-read.
    pub async fn publish(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        items: Vec<PublishItem>,
    ) -> Result<Vec<PublishResult>, ApiError> {
        dispatcher.validate(publisher, &items)?;
        let mut results: Vec<Option<PublishResult>> = vec![None; items.len()];
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
            for part in std::iter::once(local_out).chain(remote_out) {
                match part {
                    Ok(done) => {
                        for (i, r) in done {
                            results[i] = Some(r);
                        }
                    }
                    Err((e, items)) if e.code == "not_owner" && !last_try => pending.extend(items),
                    Err((e, _)) => return Err(e),
                }
            }
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| ApiError::new(500, "internal", "a publish result was lost")))
            .collect()
    }

    async fn local(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        items: Vec<(usize, PublishItem)>,
    ) -> Result<Vec<(usize, PublishResult)>, (ApiError, Vec<(usize, PublishItem)>)> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (idx, list): (Vec<usize>, Vec<PublishItem>) = items.iter().cloned().unzip();
        match dispatcher.publish(publisher, list).await {
            Ok(out) => Ok(idx.into_iter().zip(out).collect()),
            Err(e) => Err((e.into(), items)),
        }
    }

    async fn forward_or_local(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        owner: Member,
        items: Vec<(usize, PublishItem)>,
    ) -> Result<Vec<(usize, PublishResult)>, (ApiError, Vec<(usize, PublishItem)>)> {
        let list: Vec<PublishItem> = items.iter().map(|(_, it)| it.clone()).collect();
        let results = match self.forward(publisher, &owner, &list).await {
            Ok(r) => r,
            Err(Forward::Unreachable(e)) => {
                // Nothing reached the owner, so publishing here cannot duplicate anything;
                // this dispatcher waits for the lease (the owner's expires if it is gone).
                tracing::info!(owner = %owner.id, error = %e, "channel owner unreachable; publishing here");
                return self.local(dispatcher, publisher, items).await;
            }
            Err(Forward::Failed(e)) => return Err((e, items)),
        };
        if results.len() != items.len() {
            let e = ApiError::new(
                502,
                "forward_failed",
                format!(
                    "owner {} answered {} results for {}",
                    owner.id,
                    results.len(),
                    items.len()
                ),
            );
            return Err((e, items));
        }
        Ok(items.into_iter().map(|(i, _)| i).zip(results).collect())
    }

    async fn forward(
        &self,
        publisher: &str,
        owner: &Member,
        items: &[PublishItem],
    ) -> Result<Vec<PublishResult>, Forward> {
        let mut messages = Vec::with_capacity(items.len());
        let mut raws = Vec::with_capacity(items.len());
        for item in items {
            let text = String::from_utf8(item.data.to_vec())
                .map_err(|e| Forward::Failed(ApiError::new(500, "internal", e.to_string())))?;
            raws.push(
                RawValue::from_string(text)
                    .map_err(|e| Forward::Failed(ApiError::new(500, "internal", e.to_string())))?,
            );
        }
        for (item, raw) in items.iter().zip(&raws) {
            messages.push(ForwardedItem {
                channel: &item.channel,
                data: raw,
                event: item.event.as_deref(),
                idempotency_key: item.idempotency_key.as_deref(),
            });
        }
        let url = format!("http://{}/v1/publish/batch", owner.addr);
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.secret)
            .header(FORWARDED_FOR, publisher)
            .json(&Forwarded { messages })
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Forward::Unreachable(e.to_string())
                } else {
                    // It may have been received: only the publisher's retry (with its
                    // idempotency key) can settle that.
                    Forward::Failed(ApiError::new(
                        503,
                        "forward_failed",
                        format!("forwarding to {}: {e}", owner.id),
                    ))
                }
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Forward::Failed(ApiError::new(503, "forward_failed", e.to_string())))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            if status.as_u16() == 503 && text.contains("\"not_owner\"") {
                // The lease moved before anything was written there: route again.
                return Err(Forward::Failed(ApiError::new(
                    503,
                    "not_owner",
                    format!("{} no longer holds the channel's lease", owner.id),
                )));
            }
            return Err(Forward::Failed(ApiError::new(
                if status.as_u16() == 503 { 503 } else { 502 },
                "owner_refused",
                format!("channel owner {} answered {status}: {text}", owner.id),
            )));
        }
        let parsed: PublishBatchResponse = serde_json::from_slice(&body)
            .map_err(|e| Forward::Failed(ApiError::new(502, "forward_failed", e.to_string())))?;
        Ok(parsed.results)
    }
}

enum Forward {
    /// The request never reached the owner.
    Unreachable(String),
    Failed(ApiError),
}
