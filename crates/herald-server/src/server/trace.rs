//! Message tracing at the edge: which publishes are traced (asked for with `"trace": true`
//! or a sampled `traceparent`, or falling in `HERALD_TRACE_SAMPLE`), and `GET /v1/trace`,
//! which gathers a traced message's hops from every process of the cluster into one
//! timeline.

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::{json, query_pairs};
use super::State;
use bytes::Bytes;
use herald_fabric::NatsFabric;
use herald_trace::{Hop, Journal, Query, TraceContext, TraceId};
use http::{Request, Response};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The NATS topic of trace questions.
const TOPIC: &str = "trace";
/// How long the other processes have to answer, unless the caller says (`wait_ms`).
const DEFAULT_WAIT: Duration = Duration::from_millis(500);
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Answers gathered at most (processes of a cluster).
const MOST_ANSWERS: usize = 4096;

/// Tracing of one process: its journal, the sampled fraction, and the cluster to ask.
pub struct Tracing {
    pub journal: Arc<Journal>,
    sample: f64,
    peers: Option<NatsFabric>,
    /// What the OTLP exporter did, when there is one.
    pub otlp: Option<Arc<herald_otlp::Counters>>,
}

/// A question to the other processes, and what each answers.
#[derive(Serialize, Deserialize)]
struct Question {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Said {
    trace_id: String,
    hops: Vec<Hop>,
}

/// A message's journey: every hop heard of, in time order.
#[derive(Serialize)]
pub struct Journey {
    pub trace_id: String,
    pub channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Processes that told of a hop.
    pub processes: Vec<String>,
    pub hops: Vec<Hop>,
}

impl Tracing {
    /// `peers`: the cluster's NATS connection (none for `herald serve`).
    pub fn new(journal: Arc<Journal>, sample: f64, peers: Option<NatsFabric>) -> Self {
        Self {
            journal,
            sample,
            peers,
            otlp: None,
        }
    }

    /// Reports the OTLP exporter's counters in `/metrics`.
    pub fn with_otlp(mut self, exporter: Option<&herald_otlp::Exporter>) -> Self {
        self.otlp = exporter.map(|e| e.counters.clone());
        self
    }

    /// The cluster's other processes, when there are any.
    pub fn peers(&self) -> Option<&NatsFabric> {
        self.peers.as_ref()
    }

    /// Answers the other processes' questions about traced messages (cluster roles).
    pub async fn answer_peers(&self) -> anyhow::Result<()> {
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let journal = self.journal.clone();
        let answer: herald_fabric::Answer = Arc::new(move |question: Bytes| {
            let q: Question = serde_json::from_slice(&question).ok()?;
            let (id, hops) = journal.find(&to_query(&q).ok()?)?;
            let said = Said {
                trace_id: id.to_string(),
                hops,
            };
            serde_json::to_vec(&said).ok().map(Bytes::from)
        });
        peers.answer(TOPIC, answer).await?;
        Ok(())
    }

    /// The trace context of one published item: the item's own `traceparent`, else the
    /// request's, else a new one when the item asks (`trace`) or is sampled. A publisher
    /// whose tracer did not sample the message (flags `00`) is not second-guessed.
    pub fn context_for(
        &self,
        request: Parent,
        asked: bool,
        own: Option<&str>,
    ) -> Result<Option<Traced>, ApiError> {
        let parent = match own {
            Some(tp) => parse(tp)?,
            None => request,
        };
        match parent {
            Parent::Sampled(ctx) => Ok(Some(Traced { ctx, began: false })),
            Parent::NotSampled => Ok(None),
            Parent::None => {
                let sampled = self.sample > 0.0 && rand::random::<f64>() < self.sample;
                Ok((asked || sampled).then(|| Traced {
                    ctx: TraceContext::random(),
                    began: true,
                }))
            }
        }
    }

    /// The `traceparent` header of a request.
    pub fn from_header(headers: &http::HeaderMap) -> Result<Parent, ApiError> {
        let Some(v) = headers.get("traceparent") else {
            return Ok(Parent::None);
        };
        let v = v
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_traceparent", "not ASCII"))?;
        parse(v)
    }

    /// Records that this process took a traced publish; returns the context the message
    /// goes on with (naming this process's span).
    pub fn accepted(&self, traced: Traced, channel: &str, forwarded: bool) -> TraceContext {
        let note = forwarded.then(|| "forwarded by another dispatcher".to_owned());
        self.journal
            .accept(&traced.ctx, traced.began, channel, note)
    }

    /// Gathers the hops of `q` from this process and, in a cluster, from every process that
    /// answers within `wait`.
    async fn gather(&self, q: &Question, wait: Duration) -> Result<Option<Journey>, ApiError> {
        let query = to_query(q)?;
        let mut found: Vec<(TraceId, Vec<Hop>)> = self.journal.find(&query).into_iter().collect();
        if let Some(peers) = &self.peers {
            let question =
                serde_json::to_vec(q).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
            let answers = peers
                .ask_all(TOPIC, Bytes::from(question), wait, MOST_ANSWERS)
                .await
                .map_err(|e| ApiError::new(503, "cluster_unavailable", e.to_string()))?;
            for a in answers {
                let Ok(said) = serde_json::from_slice::<Said>(&a) else {
                    continue;
                };
                if let Ok(id) = TraceId::parse(&said.trace_id) {
                    found.push((id, said.hops));
                }
            }
        }
        // By position, the same message could in principle carry two ids (a publish retried
        // by its key is traced anew): keep the first id heard, here first.
        let Some(id) = found.first().map(|f| f.0) else {
            return Ok(None);
        };
        let mut hops: Vec<Hop> = Vec::new();
        for (fid, h) in found {
            if fid != id {
                continue;
            }
            for hop in h {
                // This process answers its own question too (NATS echoes it).
                if !hops.contains(&hop) {
                    hops.push(hop);
                }
            }
        }
        hops.sort_by_key(|h| (h.at_us, h.step));
        let processes: BTreeSet<String> = hops.iter().map(|h| h.process.clone()).collect();
        let channel = hops.first().map(|h| h.channel.clone()).unwrap_or_default();
        let seq = hops.iter().find_map(|h| h.seq);
        Ok(Some(Journey {
            trace_id: id.to_string(),
            channel,
            seq,
            processes: processes.into_iter().collect(),
            hops,
        }))
    }
}

/// A traced publish as it reached this process.
#[derive(Clone, Copy, Debug)]
pub struct Traced {
    /// The trace, and the span that handed the message here.
    pub ctx: TraceContext,
    /// Herald began the trace here (no span handed it over).
    pub began: bool,
}

/// What a publisher's `traceparent` says.
#[derive(Clone, Copy, Debug)]
pub enum Parent {
    /// None given.
    None,
    /// Given, not sampled: the publisher's tracer does not record this message.
    NotSampled,
    Sampled(TraceContext),
}

fn parse(traceparent: &str) -> Result<Parent, ApiError> {
    match TraceContext::parse_traceparent(traceparent) {
        Ok(Some(ctx)) => Ok(Parent::Sampled(ctx)),
        Ok(None) => Ok(Parent::NotSampled),
        Err(e) => Err(ApiError::bad_request("invalid_traceparent", e.to_string())),
    }
}

fn to_query(q: &Question) -> Result<Query, ApiError> {
    match (&q.trace_id, &q.channel, q.seq) {
        (Some(id), _, _) => TraceId::parse(id)
            .map(Query::Id)
            .map_err(|e| ApiError::bad_request("invalid_trace_id", e.to_string())),
        (None, Some(channel), Some(seq)) => Ok(Query::Position {
            channel: channel.clone(),
            seq,
        }),
        _ => Err(ApiError::bad_request(
            "invalid_query",
            "name a message by `trace_id`, or by `channel` and `seq`",
        )),
    }
}

/// `GET /v1/trace?channel=CH&seq=N` or `?trace_id=ID` (`&wait_ms=` for the cluster's
/// answers): a publisher key that may read the channel's namespace.
pub async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    // The dashboard's key may trace any message; a publisher key, its namespaces'.
    let publisher = match state.auth.admin(req.headers()) {
        Ok(()) if state.auth.publisher_name(req.headers()).is_none() => None,
        _ => Some(state.auth.publisher(req.headers())?),
    };
    let mut q = Question {
        trace_id: None,
        channel: None,
        seq: None,
    };
    let mut wait = DEFAULT_WAIT;
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            "trace_id" => q.trace_id = Some(v),
            "channel" => q.channel = Some(v),
            "seq" => {
                q.seq = Some(v.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "`seq` must be a number")
                })?)
            }
            "wait_ms" => {
                let ms: u64 = v.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "`wait_ms` must be a number")
                })?;
                wait = Duration::from_millis(ms).min(MAX_WAIT);
            }
            _ => {}
        }
    }
    if let (Some(p), Some(channel)) = (&publisher, &q.channel) {
        state.publisher_may_read(p, channel)?;
    }
    match state.tracing.gather(&q, wait).await? {
        Some(journey) => {
            // A lookup by id learns the channel only now.
            if let Some(p) = &publisher {
                state.publisher_may_read(p, &journey.channel)?;
            }
            json(&journey)
        }
        None => Err(ApiError::new(
            404,
            "trace_not_found",
            "no process remembers this message traced (it was not traced, or it is older \
             than what HERALD_TRACE_KEEP keeps)",
        )),
    }
}
