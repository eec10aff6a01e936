//! `GET /v1/channels/{ch}/history?after=SEQ&limit=N`, for publishers and for subscribers
//! whose token allows the channel.

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::{json, parse_limit, query_pairs};
use super::State;
use herald_proto::{HistoryMessage, HistoryResponse};
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The percent-encoded channel of a history path, if `path` is one.
pub fn channel_of(path: &str) -> Option<&str> {
    channel_path(path, "/history")
}

/// The (still percent-encoded) channel of `/v1/channels/{ch}{suffix}`.
pub fn channel_path<'a>(path: &'a str, suffix: &str) -> Option<&'a str> {
    path.strip_prefix("/v1/channels/")?
        .strip_suffix(suffix)
        .filter(|c| !c.is_empty() && !c.contains('/'))
}

/// A channel named in a path: percent-decoded and validated.
pub fn decode_channel(raw: &str) -> Result<String, ApiError> {
    let channel = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("invalid_channel", "channel is not UTF-8"))?
        .into_owned();
    herald_proto::validate_channel(&channel)
        .map_err(|e| ApiError::bad_request("invalid_channel", e.to_string()))?;
    Ok(channel)
}

/// Who may read about a channel: a publisher key allowed its namespace, or a subscriber
/// token allowing the channel.
pub fn may_read(
    state: &State,
    headers: &http::HeaderMap,
    token: Option<&str>,
    channel: &str,
) -> Result<(), ApiError> {
    if let Some(publisher) = state.auth.publisher_name(headers) {
        return state.publisher_may_read(publisher, channel);
    }
    let sub = state.auth.subscriber(headers, token)?;
    if !sub.may_read(channel) {
        return Err(ApiError::new(
            403,
            "channel_forbidden",
            format!("the token does not allow channel '{channel}'"),
        ));
    }
    Ok(())
}

pub async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let raw = channel_of(req.uri().path())
        .ok_or_else(|| ApiError::new(404, "not_found", "no such route"))?;
    let channel = decode_channel(raw)?;
    let mut after = 0u64;
    let mut limit = DEFAULT_LIMIT;
    let mut token = None;
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            "after" => {
                after = v.parse().map_err(|_| {
                    ApiError::bad_request("invalid_query", "`after` must be a seq number")
                })?
            }
            "limit" => limit = parse_limit(&v, MAX_LIMIT)?,
            "token" => token = Some(v),
            _ => {}
        }
    }
    may_read(state, req.headers(), token.as_deref(), &channel)?;
    let store = &state.store;
    let unavailable =
        |e: herald_store::StoreError| ApiError::new(503, "store_unavailable", e.to_string());
    // Meta and page in one read: read apart, a retention trim between them would report a
    // first_seq whose messages are already gone (a gap at the start of the history).
    let (meta, page) = store
        .read_page(&channel, after, limit + 1)
        .await
        .map_err(unavailable)?;
    let Some(meta) = meta else {
        return json(&HistoryResponse {
            channel,
            epoch: 0,
            first_seq: 0,
            last_seq: 0,
            messages: Vec::new(),
            next_after: after,
            has_more: false,
        });
    };
    let has_more = page.len() > limit;
    let mut messages = Vec::with_capacity(page.len().min(limit));
    for m in page.into_iter().take(limit) {
        let text = String::from_utf8(m.data.to_vec())
            .map_err(|_| ApiError::new(500, "internal", "stored data is not UTF-8"))?;
        let data = serde_json::value::RawValue::from_string(text)
            .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        messages.push(HistoryMessage {
            seq: m.seq,
            event: m.event,
            data,
            ts: m.ts_ms,
        });
    }
    let next_after = messages.last().map_or(after, |m| m.seq);
    json(&HistoryResponse {
        channel,
        epoch: meta.epoch,
        first_seq: meta.first_seq,
        last_seq: meta.last_seq,
        messages,
        next_after,
        has_more,
    })
}
