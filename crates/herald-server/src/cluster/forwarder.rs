//! Publishes forwarded to the dispatcher holding their channels, coalesced: while one
//! request to an owner is in flight, the publishes queued for it meanwhile go together in
//! the next one (per publisher identity), as the sequencer's group commit does. Under load
//! an owner then handles a few batch requests instead of one request per forwarded publish.

use super::leases::Member;
use herald_dispatcher::{ErrorKind, ItemResult, PublishError, PublishItem};
use herald_proto::{ErrorBody, PublishBatchResponse, PublishResult};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Header naming the publisher a forwarded request acts for.
pub const FORWARDED_FOR: &str = "x-herald-forwarded-for";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Items per forwarded request (an owner takes up to its `max_batch`, 1,000 by default).
const MAX_ITEMS: usize = 500;
/// Publishes queued per owner before callers wait to queue.
const QUEUE: usize = 4096;

/// Why a forward failed as a whole.
#[derive(Clone, Debug)]
pub enum Forward {
    /// The request never reached the owner.
    Unreachable(String),
    /// It failed for every item; the error says whether they may have been stored.
    Failed(PublishError),
}

impl Forward {
    fn failed(status: u16, code: &str, message: impl Into<String>, maybe_stored: bool) -> Self {
        Forward::Failed(publish_error(status, code, message.into(), maybe_stored))
    }
}

/// Error codes an owner answers for a publish (others are reported as `owner_refused`).
const KNOWN_CODES: [&str; 12] = [
    "not_owner",
    "lease_lost",
    "store_unavailable",
    "store_timeout",
    "fabric_unavailable",
    "shutting_down",
    "overloaded",
    "forward_failed",
    "owner_refused",
    "acquiring_leases",
    "internal",
    "rate_limited",
];

/// An owner's error as this dispatcher's own.
fn publish_error(status: u16, code: &str, message: String, maybe_stored: bool) -> PublishError {
    let kind = match status {
        400 => ErrorKind::BadRequest,
        403 => ErrorKind::Forbidden,
        413 => ErrorKind::TooLarge,
        _ => ErrorKind::Unavailable,
    };
    let (code, message) = match KNOWN_CODES.iter().find(|c| **c == code) {
        Some(c) => (*c, message),
        None => ("owner_refused", format!("{code}: {message}")),
    };
    let e = PublishError::new(kind, code, message);
    if maybe_stored {
        e.maybe_stored()
    } else {
        e
    }
}

/// One item's result as the owner answered it.
fn item_outcome(r: PublishResult) -> ItemResult {
    match r.error {
        None => Ok(r),
        Some(d) => Err(publish_error(
            503,
            &d.code,
            d.message,
            d.maybe_stored.unwrap_or(true),
        )),
    }
}

type Reply = oneshot::Sender<Result<Vec<ItemResult>, Forward>>;

struct Pending {
    publisher: String,
    items: Vec<PublishItem>,
    reply: Reply,
}

struct Client {
    http: reqwest::Client,
    secret: String,
    /// `https` when the dispatchers serve TLS to each other.
    scheme: &'static str,
}

pub struct Forwarder {
    client: std::sync::Arc<Client>,
    /// One queue (and one draining task) per owner address; the tasks end when this is
    /// dropped (their queues close).
    queues: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
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
    /// The publish's trace continues on the owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
}

impl Forwarder {
    /// Forwards with `secret`; over HTTPS, trusting only the CA in `tls_ca` (PEM), when given.
    pub fn new(secret: String, tls_ca: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(64);
        let scheme = match tls_ca {
            Some(ca) => {
                use anyhow::Context;
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading the cluster CA {}", ca.display()))?;
                builder = builder
                    .use_rustls_tls()
                    .tls_built_in_root_certs(false)
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(&pem)
                            .with_context(|| format!("the cluster CA {}", ca.display()))?,
                    )
                    .https_only(true);
                "https"
            }
            None => "http",
        };
        let http = builder.build()?;
        Ok(Self {
            client: std::sync::Arc::new(Client {
                http,
                secret,
                scheme,
            }),
            queues: Mutex::new(HashMap::new()),
        })
    }

    pub fn secret(&self) -> &str {
        &self.client.secret
    }

    /// Publishes `items` on `owner` for `publisher`; what became of each, in order.
    pub async fn forward(
        &self,
        publisher: &str,
        owner: &Member,
        items: Vec<PublishItem>,
    ) -> Result<Vec<ItemResult>, Forward> {
        let queue = self.queue(owner);
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            publisher: publisher.to_owned(),
            items,
            reply,
        };
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, queue.send(pending)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(Forward::failed(
                503,
                "forward_failed",
                format!("the queue to {} stayed full", owner.id),
                false,
            ));
        }
        match tokio::time::timeout(REQUEST_TIMEOUT * 2, answer).await {
            Ok(Ok(r)) => r,
            _ => Err(Forward::failed(
                503,
                "forward_failed",
                format!("no answer from {} in time", owner.id),
                true,
            )),
        }
    }

    fn queue(&self, owner: &Member) -> mpsc::Sender<Pending> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(&owner.addr).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(drain(self.client.clone(), owner.clone(), rx));
        queues.insert(owner.addr.clone(), tx.clone());
        tx
    }
}

/// Sends what is queued for `owner`, one round at a time, until the queue closes.
async fn drain(client: std::sync::Arc<Client>, owner: Member, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut round = vec![first];
        let mut count = round[0].items.len();
        while count < MAX_ITEMS {
            match rx.try_recv() {
                Ok(p) => {
                    count += p.items.len();
                    round.push(p);
                }
                Err(_) => break,
            }
        }
        // One request per publisher identity (the owner checks each one's namespaces).
        let mut by_publisher: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for p in round {
            by_publisher.entry(p.publisher.clone()).or_default().push(p);
        }
        let sends = by_publisher
            .into_iter()
            .map(|(publisher, group)| send_group(&client, &owner, publisher, group));
        futures_util::future::join_all(sends).await;
    }
}

async fn send_group(client: &Client, owner: &Member, publisher: String, group: Vec<Pending>) {
    let items: Vec<&PublishItem> = group.iter().flat_map(|p| &p.items).collect();
    match send(client, owner, &publisher, &items).await {
        Ok(results) if results.len() == items.len() => {
            let mut results = results.into_iter();
            for p in group {
                let mine: Vec<ItemResult> = results.by_ref().take(p.items.len()).collect();
                let _ = p.reply.send(Ok(mine));
            }
        }
        Ok(results) => {
            let e = Forward::failed(
                502,
                "forward_failed",
                format!(
                    "owner {} answered {} results for {}",
                    owner.id,
                    results.len(),
                    items.len()
                ),
                true,
            );
            for p in group {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for p in group {
                let _ = p.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn send(
    client: &Client,
    owner: &Member,
    publisher: &str,
    items: &[&PublishItem],
) -> Result<Vec<ItemResult>, Forward> {
    let mut raws = Vec::with_capacity(items.len());
    for item in items {
        let text = String::from_utf8(item.data.to_vec())
            .map_err(|e| Forward::failed(500, "internal", e.to_string(), false))?;
        raws.push(
            RawValue::from_string(text)
                .map_err(|e| Forward::failed(500, "internal", e.to_string(), false))?,
        );
    }
    let messages = items
        .iter()
        .zip(&raws)
        .map(|(item, raw)| ForwardedItem {
            channel: &item.channel,
            data: raw,
            event: item.event.as_deref(),
            idempotency_key: item.idempotency_key.as_deref(),
            traceparent: item.trace.map(|t| t.traceparent()),
        })
        .collect();
    let url = format!("{}://{}/v1/publish/batch", client.scheme, owner.addr);
    let resp = client
        .http
        .post(&url)
        .bearer_auth(&client.secret)
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
                Forward::failed(
                    503,
                    "forward_failed",
                    format!("forwarding to {}: {e}", owner.id),
                    true,
                )
            }
        })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Forward::failed(503, "forward_failed", e.to_string(), true))?;
    if status.is_success() {
        let parsed: PublishBatchResponse = serde_json::from_slice(&body)
            .map_err(|e| Forward::failed(502, "forward_failed", e.to_string(), true))?;
        return Ok(parsed.results.into_iter().map(item_outcome).collect());
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        // Every item failed: each says how.
        Ok(ErrorBody {
            results: Some(results),
            ..
        }) => Ok(results.into_iter().map(item_outcome).collect()),
        // Refused as a whole: its `maybe_stored` says what may have been written
        // (`not_owner`: nothing, and routing sends the items to the new owner).
        Ok(ErrorBody { error, .. }) => Err(Forward::failed(
            status.as_u16(),
            &error.code,
            format!("channel owner {}: {}", owner.id, error.message),
            error.maybe_stored.unwrap_or(true),
        )),
        Err(_) => Err(Forward::failed(
            if status.as_u16() == 503 { 503 } else { 502 },
            "owner_refused",
            format!(
                "channel owner {} answered {status}: {}",
                owner.id,
                String::from_utf8_lossy(&body)
            ),
            true,
        )),
    }
}
