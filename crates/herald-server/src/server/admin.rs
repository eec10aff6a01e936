//! The operator's dashboard: `/admin` (a page and its script, served from the binary) and
//! `/admin/stream`, a server-sent event stream of the cluster's figures once a second, asked
//! of every process over NATS. Its data needs `HERALD_ADMIN_KEY`.

use super::body::ResponseBody;
use super::error::ApiError;
use super::State;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("admin/index.html");
const SCRIPT: &str = include_str!("admin/app.js");
/// The NATS topic of figure requests.
pub const TOPIC: &str = "stats";
/// How often the stream sends the figures.
const EVERY: Duration = Duration::from_secs(1);
/// How long the other processes have to answer each time.
const WAIT: Duration = Duration::from_millis(300);
/// Channels each node lists, by subscribers.
const TOP: usize = 10;

/// One process's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProcessStats {
    pub process: String,
    pub role: String,
    pub connections: i64,
    pub subscriptions: i64,
    pub channels: i64,
    pub publishes: u64,
    pub deliveries: u64,
    pub slow_consumer_disconnects: u64,
    pub stalled_disconnects: u64,
    pub ephemeral_dropped: u64,
    pub resets: u64,
    /// Per hop: `[p50, p99]` in milliseconds, for hops this process measured.
    pub hops: BTreeMap<String, [f64; 2]>,
    /// This node's channels with the most subscribers: `(channel, subscribers, last seq)`.
    pub top: Vec<(String, u64, u64)>,
}

/// This process's figures now.
pub fn local(state: &State) -> ProcessStats {
    let journal = &state.tracing.journal;
    let mut s = ProcessStats {
        process: journal.process().to_owned(),
        role: journal.role().to_owned(),
        ..ProcessStats::default()
    };
    if let Some(node) = &state.node {
        let n = node.stats();
        s.connections = n.connections;
        s.subscriptions = n.subscriptions;
        s.channels = n.channels;
        s.deliveries = n.deliveries;
        s.slow_consumer_disconnects = n.slow_disconnects + n.ephemeral_disconnects;
        s.stalled_disconnects = n.stalled_disconnects;
        s.ephemeral_dropped = n.ephemeral_dropped + n.ephemeral_shed;
        s.resets = n.resets;
        s.top = node.top_channels(TOP);
    }
    if let Some(d) = &state.dispatcher {
        let d = d.stats();
        s.publishes = d.published_reliable + d.published_ephemeral;
    }
    let l = &journal.latency;
    for (name, h) in [
        ("publish_to_commit", &l.publish_to_commit),
        ("commit_to_fabric", &l.commit_to_fabric),
        ("fabric_to_node", &l.fabric_to_node),
        ("node_to_socket", &l.node_to_socket),
    ] {
        if let (Some(p50), Some(p99)) = (h.quantile(0.5), h.quantile(0.99)) {
            s.hops.insert(name.to_owned(), [p50 * 1000.0, p99 * 1000.0]);
        }
    }
    s
}

/// Every process's figures: this one's, and in a cluster those that answer in time.
async fn cluster(state: &State) -> Vec<ProcessStats> {
    let me = local(state);
    let mut all = Vec::new();
    if let Some(peers) = state.tracing.peers() {
        if let Ok(answers) = peers.ask_all(TOPIC, Bytes::new(), WAIT, 4096).await {
            all.extend(
                answers
                    .iter()
                    .filter_map(|a| serde_json::from_slice::<ProcessStats>(a).ok())
                    .filter(|p| p.process != me.process),
            );
        }
    }
    all.push(me);
    all.sort_by(|a, b| (a.role.as_str(), &a.process).cmp(&(b.role.as_str(), &b.process)));
    all
}

/// What the other processes ask: this process's figures.
pub fn answer(state: &State) -> Option<Bytes> {
    serde_json::to_vec(&local(state)).ok().map(Bytes::from)
}

pub async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    match req.uri().path() {
        "/admin" | "/admin/" => Ok(asset(PAGE, "text/html; charset=utf-8")),
        "/admin/app.js" => Ok(asset(SCRIPT, "text/javascript; charset=utf-8")),
        "/admin/stream" => {
            state.auth.admin(req.headers())?;
            Ok(stream(state.clone()))
        }
        _ => Err(ApiError::new(404, "not_found", "no such route")),
    }
}

/// The page and its script: nothing in them is secret (the figures come with the key), and
/// they may not be framed or load anything from elsewhere.
fn asset(body: &'static str, content_type: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}

/// `event: stats` with every process's figures, once a second, while the client reads.
fn stream(state: Arc<State>) -> Response<ResponseBody> {
    let ticks = futures_util::stream::unfold((state, true), |(state, first)| async move {
        if !first {
            tokio::time::sleep(EVERY).await;
        }
        // Shutdown waits for open responses: this one ends then.
        if state
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        let at_ms = herald_trace::now_us() / 1000;
        let body = serde_json::json!({ "at_ms": at_ms, "processes": cluster(&state).await });
        let frame = format!("event: stats\ndata: {body}\n\n");
        Some((Bytes::from(frame), (state, false)))
    });
    let mut resp = Response::new(ResponseBody::Stream(Box::pin(ticks)));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp
}
