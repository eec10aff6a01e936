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

    /// Publishes `items` (validated by the caller), each on its channel's owner.
    pub async fn publish(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        items: Vec<PublishItem>,
    ) -> Result<Vec<PublishResult>, ApiError> {
        dispatcher.validate(publisher, &items)?;
        let mut local: Vec<(usize, PublishItem)> = Vec::new();
        let mut remote: BTreeMap<String, (Member, Vec<(usize, PublishItem)>)> = BTreeMap::new();
        for (i, item) in items.into_iter().enumerate() {
            let route = (!item.ephemeral).then(|| self.leases.route(&item.channel));
            match route.and_then(|r| match r {
                Route::There(m) => Some(m),
                Route::Here => None,
            }) {
                Some(owner) => remote
                    .entry(owner.id.clone())
                    .or_insert_with(|| (owner, Vec::new()))
                    .1
                    .push((i, item)),
                None => local.push((i, item)),
            }
        }
        let total = local.len() + remote.values().map(|(_, v)| v.len()).sum::<usize>();
        let mut results: Vec<Option<PublishResult>> = vec![None; total];
        let remote_calls = remote
            .into_values()
            .map(|(owner, items)| self.forward_or_local(dispatcher, publisher, owner, items));
        let local_call = async {
            if local.is_empty() {
                return Ok(Vec::new());
            }
            let (idx, items): (Vec<usize>, Vec<PublishItem>) = local.into_iter().unzip();
            let out = dispatcher.publish(publisher, items).await?;
            Ok::<_, ApiError>(idx.into_iter().zip(out).collect::<Vec<_>>())
        };
        let (local_out, remote_out) =
            tokio::join!(local_call, futures_util::future::join_all(remote_calls));
        for part in std::iter::once(local_out).chain(remote_out) {
            for (i, r) in part? {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| ApiError::new(500, "internal", "a publish result was lost")))
            .collect()
    }

    async fn forward_or_local(
        &self,
        dispatcher: &Dispatcher,
        publisher: &str,
        owner: Member,
        items: Vec<(usize, PublishItem)>,
    ) -> Result<Vec<(usize, PublishResult)>, ApiError> {
        let (idx, items): (Vec<usize>, Vec<PublishItem>) = items.into_iter().unzip();
        let results = match self.forward(publisher, &owner, &items).await {
            Ok(r) => r,
            Err(Forward::Unreachable(e)) => {
                // Nothing reached the owner, so publishing here cannot duplicate anything.
                tracing::info!(owner = %owner.id, error = %e, "channel owner unreachable; publishing here");
                dispatcher.publish(publisher, items).await?
            }
            Err(Forward::Failed(e)) => return Err(e),
        };
        if results.len() != idx.len() {
            return Err(ApiError::new(
                502,
                "forward_failed",
                format!(
                    "owner {} answered {} results for {}",
                    owner.id,
                    results.len(),
                    idx.len()
                ),
            ));
        }
        Ok(idx.into_iter().zip(results).collect())
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
