//! `POST /v1/ack` (a subscriber records the last position it processed on a channel; its
//! later connections without `Last-Event-ID` resume after it) and
//! `GET /v1/channels/{ch}/acks` (publishers see which position each user has acked).

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::{json, parse_limit, query_pairs};
use super::history::{channel_path, decode_channel};
use super::publish::{parse, read_body};
use super::State;
use herald_proto::Cursor;
use herald_store::Ack;
use http::{Request, Response};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

const MAX_BODY: usize = 16 * 1024;
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Longest user id (`sub`) an ack is recorded for.
const MAX_USER_LEN: usize = 256;

/// Body of `POST /v1/ack`: the channel and either the `id:` of the last event processed
/// (`last_event_id`) or its position (`epoch` + `seq`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    channel: String,
    #[serde(default)]
    last_event_id: Option<String>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Serialize)]
struct AckResponse<'a> {
    channel: &'a str,
    user: &'a str,
    epoch: u64,
    seq: u64,
    /// The position on record, which stays put when the ack was older than it.
    moved: bool,
}

#[derive(Serialize)]
struct AckEntry {
    user: String,
    epoch: u64,
    seq: u64,
    ts: u64,
}

#[derive(Serialize)]
struct AcksResponse {
    channel: String,
    /// Where the channel's log stands, to compare each ack with.
    epoch: u64,
    last_seq: u64,
    acks: Vec<AckEntry>,
    /// Pass as `after_user` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_user: Option<String>,
}

/// An ack carried by the cookie is taken only as a browser sends it for a page of an origin
/// allowed to act for the user (listed in `HERALD_CORS_ORIGINS`, or this server's own),
/// with a JSON body: a form or a `no-cors` fetch from any other site (cross-site request
/// forgery) would otherwise move the user's ack and skip their inbox. JSON is what makes
/// the browser ask first (a preflight), which other origins fail.
fn refuse_cross_site(state: &State, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "an ack made with the cookie token must be sent as application/json",
        ));
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    if same_origin || state.cors.listed(origin) {
        return Ok(());
    }
    Err(ApiError::new(
        403,
        "origin_not_allowed",
        "acks with the cookie token are taken from this server's own pages and from origins in HERALD_CORS_ORIGINS only",
    ))
}

pub fn is_acks_path(path: &str) -> bool {
    channel_path(path, "/acks").is_some()
}

pub async fn post(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let token = query_pairs(&req)
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    let subscriber = state.auth.subscriber(req.headers(), token.as_deref())?;
    if crate::auth::credential_is_cookie(req.headers(), token.as_deref()) {
        refuse_cross_site(state, req.headers())?;
    }
    let user = subscriber
        .user()
        .ok_or_else(|| {
            ApiError::new(
                401,
                "user_required",
                "acks are recorded per user: present a subscriber token with a `sub`",
            )
        })?
        .to_owned();
    if user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_user",
            format!("the token's sub must be 1..={MAX_USER_LEN} bytes without control characters"),
        ));
    }
    let body = read_body(req, MAX_BODY).await?;
    let ack: AckRequest = parse(&body)?;
    herald_proto::validate_channel(&ack.channel)
        .map_err(|e| ApiError::bad_request("invalid_channel", e.to_string()))?;
    if !subscriber.may_read(&ack.channel) {
        return Err(ApiError::new(
            403,
            "channel_forbidden",
            format!("the token does not allow channel '{}'", ack.channel),
        ));
    }
    let position = match (&ack.last_event_id, ack.epoch, ack.seq) {
        (Some(id), None, None) => Cursor::decode(id.trim())
            .map_err(|e| ApiError::bad_request("invalid_last_event_id", e.to_string()))?
            .get(&ack.channel)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_ack",
                    "the last_event_id holds no position of this channel",
                )
            })?,
        (None, Some(epoch), Some(seq)) => herald_proto::Position { epoch, seq },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_ack",
                "give either last_event_id, or epoch and seq",
            ))
        }
    };
    let unavailable =
        |e: herald_store::StoreError| ApiError::new(503, "store_unavailable", e.to_string());
    let meta = state
        .store
        .channel_meta(&ack.channel)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::bad_request("invalid_ack", "the channel has no messages"))?;
    if position.epoch != meta.epoch || position.seq > meta.last_seq {
        return Err(ApiError::bad_request(
            "invalid_ack",
            format!(
                "position {}:{} is not in the channel's log (epoch {}, last seq {})",
                position.epoch, position.seq, meta.epoch, meta.last_seq
            ),
        ));
    }
    let wanted = Ack {
        epoch: position.epoch,
        seq: position.seq,
        ts_ms: herald_dispatcher::now_ms(),
    };
    let on_record = state
        .store
        .ack_set(&ack.channel, &user, wanted)
        .await
        .map_err(unavailable)?;
    json(&AckResponse {
        channel: &ack.channel,
        user: &user,
        epoch: on_record.epoch,
        seq: on_record.seq,
        moved: on_record == wanted,
    })
}

pub async fn list(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let publisher = state.auth.publisher(req.headers())?;
    let raw = channel_path(req.uri().path(), "/acks")
        .ok_or_else(|| ApiError::new(404, "not_found", "no such route"))?;
    let channel = decode_channel(raw)?;
    state.publisher_may_read(&publisher, &channel)?;
    let mut after_user = String::new();
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in query_pairs(&req) {
        match k.as_str() {
            "after_user" => after_user = v,
            "limit" => limit = parse_limit(&v, MAX_LIMIT)?,
            _ => {}
        }
    }
    let unavailable =
        |e: herald_store::StoreError| ApiError::new(503, "store_unavailable", e.to_string());
    let meta = state
        .store
        .channel_meta(&channel)
        .await
        .map_err(unavailable)?;
    let mut page = state
        .store
        .acks(&channel, &after_user, limit + 1)
        .await
        .map_err(unavailable)?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next_after_user = more.then(|| page.last().map(|(u, _)| u.clone())).flatten();
    json(&AcksResponse {
        epoch: meta.map_or(0, |m| m.epoch),
        last_seq: meta.map_or(0, |m| m.last_seq),
        channel,
        acks: page
            .into_iter()
            .map(|(user, a)| AckEntry {
                user,
                epoch: a.epoch,
                seq: a.seq,
                ts: a.ts_ms,
            })
            .collect(),
        next_after_user,
    })
}
