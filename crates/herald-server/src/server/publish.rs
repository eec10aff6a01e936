//! `POST /v1/publish` and `POST /v1/publish/batch`.

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::json;
use super::trace::{Parent, Tracing};
use super::State;
use crate::cluster::routing::FORWARDED_FOR;
use bytes::Bytes;
use herald_dispatcher::{ItemResult, PublishItem};
use herald_proto::{PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResult};
use herald_trace::TraceContext;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes a request may add around its payloads (channel, event, keys, JSON punctuation).
const ENVELOPE_ALLOWANCE: usize = 4096;
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn single(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    single_item(state, req).await.map_err(says_stored)
}

pub async fn batch(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    batch_items(state, req).await.map_err(says_stored)
}

/// An error of the publish endpoints says whether anything may have been stored; one that
/// came before any write (auth, parsing, limits) says it was not.
fn says_stored(e: ApiError) -> ApiError {
    match e.maybe_stored {
        Some(_) => e,
        None => e.stored(false),
    }
}

async fn single_item(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let dispatcher = state.dispatcher()?;
    let (publisher, forwarded) = publisher_of(state, req.headers())?;
    let request_trace = Tracing::from_header(req.headers())?;
    let limit = dispatcher.policies().largest_payload() + ENVELOPE_ALLOWANCE;
    let body = read_body(req, limit).await?;
    let parsed: PublishRequest = parse(&body)?;
    let item = item(state, request_trace, forwarded, parsed)?;
    let traces = [item.trace];
    let started = Instant::now();
    let mut results = publish(state, dispatcher, &publisher, forwarded, vec![item]).await?;
    state.publish_latency.observe(started.elapsed());
    traced(state, &traces, &mut results);
    match results.pop() {
        Some(Ok(result)) => json(&result),
        Some(Err(e)) => Err(e.into()),
        None => Err(ApiError::new(500, "internal", "no publish result").stored(true)),
    }
}

async fn batch_items(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let dispatcher = state.dispatcher()?;
    let (publisher, forwarded) = publisher_of(state, req.headers())?;
    let request_trace = Tracing::from_header(req.headers())?;
    let limit = state
        .max_batch
        .saturating_mul(dispatcher.policies().largest_payload() + ENVELOPE_ALLOWANCE)
        .min(64 * 1024 * 1024);
    let body = read_body(req, limit).await?;
    let parsed: PublishBatchRequest = parse(&body)?;
    if parsed.messages.is_empty() {
        return Err(ApiError::bad_request("empty_batch", "`messages` is empty"));
    }
    if parsed.messages.len() > state.max_batch {
        return Err(ApiError::new(
            413,
            "batch_too_large",
            format!("at most {} messages per batch", state.max_batch),
        ));
    }
    let items: Vec<PublishItem> = parsed
        .messages
        .into_iter()
        .map(|m| item(state, request_trace, forwarded, m))
        .collect::<Result<_, _>>()?;
    let channels: Vec<String> = items.iter().map(|i| i.channel.clone()).collect();
    let traces: Vec<Option<TraceContext>> = items.iter().map(|i| i.trace).collect();
    let started = Instant::now();
    let mut outcomes = publish(state, dispatcher, &publisher, forwarded, items).await?;
    state.publish_latency.observe(started.elapsed());
    traced(state, &traces, &mut outcomes);
    Ok(batch_response(channels, outcomes))
}

/// 200 when every item was published; 207 with each item's result or error when some
/// were and some were not; when none was, the first item's error status, with every item's
/// error beside it.
fn batch_response(channels: Vec<String>, outcomes: Vec<ItemResult>) -> Response<ResponseBody> {
    let failed = outcomes.iter().filter(|o| o.is_err()).count();
    let mut first_error: Option<ApiError> = None;
    let mut maybe_stored = false;
    let results: Vec<PublishResult> = channels
        .into_iter()
        .zip(outcomes)
        .map(|(channel, o)| match o {
            Ok(r) => r,
            Err(e) => {
                let e = ApiError::from(e);
                maybe_stored |= e.maybe_stored == Some(true);
                let detail = e.detail();
                first_error.get_or_insert(e);
                PublishResult {
                    channel,
                    error: Some(detail),
                    ..PublishResult::default()
                }
            }
        })
        .collect();
    match first_error {
        None => json(&PublishBatchResponse { results }).unwrap_or_else(ApiError::into_response),
        Some(e) if failed == results.len() => e.stored(maybe_stored).into_batch_response(results),
        Some(_) => {
            let mut resp =
                json(&PublishBatchResponse { results }).unwrap_or_else(ApiError::into_response);
            *resp.status_mut() = http::StatusCode::MULTI_STATUS;
            resp
        }
    }
}

/// The publisher's name, and whether the request was forwarded by another dispatcher of
/// the cluster (it then carries the cluster secret and the publisher it acts for).
fn publisher_of(state: &State, headers: &http::HeaderMap) -> Result<(String, bool), ApiError> {
    if let (Some(routing), Some(name)) = (&state.routing, headers.get(FORWARDED_FOR)) {
        let presented = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !routing.is_cluster_secret(presented) {
            return Err(ApiError::new(
                401,
                "invalid_cluster_secret",
                "forwarded publish without the cluster secret",
            ));
        }
        let name = name
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_header", "bad forwarded-for header"))?;
        return Ok((name.to_owned(), true));
    }
    Ok((state.auth.publisher(headers)?, false))
}

/// Each item's outcome; an `Err` refuses the whole request before anything was written.
async fn publish(
    state: &State,
    dispatcher: &herald_dispatcher::Dispatcher,
    publisher: &str,
    forwarded: bool,
    items: Vec<PublishItem>,
) -> Result<Vec<ItemResult>, ApiError> {
    // The dispatcher that took the request counted it; the owner it was forwarded to does not
    // count it again.
    if !forwarded {
        state
            .admission
            .admit_publish(publisher, items.iter().map(|i| i.channel.as_str()))?;
    }
    match &state.routing {
        // A forwarded request is published where it landed: no second hop, no loops.
        Some(routing) if !forwarded => routing.publish(dispatcher, publisher, items).await,
        _ => Ok(dispatcher.publish(publisher, items).await?),
    }
}

/// One item of a request, traced when it asks, its request asks, or it is sampled; a
/// forwarded item is traced only when the dispatcher that took it traced it.
fn item(
    state: &State,
    request_trace: Parent,
    forwarded: bool,
    r: PublishRequest,
) -> Result<PublishItem, ApiError> {
    let trace = if forwarded {
        match r.traceparent.as_deref() {
            Some(tp) => state.tracing.context_for(Parent::None, false, Some(tp))?,
            None => None,
        }
    } else {
        state
            .tracing
            .context_for(request_trace, r.trace, r.traceparent.as_deref())?
    };
    let trace = trace.map(|t| state.tracing.accepted(t, &r.channel, forwarded));
    let data = match &r.data {
        Some(raw) => Bytes::from(herald_proto::one_line_json(raw.get()).into_owned()),
        None => Bytes::new(),
    };
    Ok(PublishItem {
        channel: r.channel,
        event: r.event,
        data,
        idempotency_key: r.idempotency_key,
        ephemeral: r.ephemeral,
        conflation_key: r.conflation_key,
        trace,
    })
}

/// Traced items' answers name their trace, and the journal learns their positions.
fn traced(state: &State, traces: &[Option<TraceContext>], outcomes: &mut [ItemResult]) {
    for (ctx, outcome) in traces.iter().zip(outcomes.iter_mut()) {
        let (Some(ctx), Ok(result)) = (ctx, outcome) else {
            continue;
        };
        if let Some(seq) = result.seq {
            state.tracing.journal.positioned(ctx, &result.channel, seq);
        }
        result.trace_id = Some(ctx.trace_id.to_string());
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("empty_body", "request body is empty"));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(herald_proto::json_error_code(&e), e.to_string()))
}

pub(super) async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            413,
            "body_too_large",
            format!("request body larger than {limit} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let collected = tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(req.into_body(), limit).collect(),
    )
    .await
    .map_err(|_| ApiError::new(408, "body_timeout", "request body not received in time"))?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(ApiError::bad_request("bad_body", e.to_string())),
    }
}
