//! `GET /v1/sse`: authorize the channels, read the resume cursor, open the stream. Served
//! either on the connection's own socket (the usual case: [`lean`](super::lean)) or as a
//! hyper response body when the request came on a connection hyper already serves.

use super::body::ResponseBody;
use super::error::ApiError;
use super::State;
use herald_node::{NodeError, StreamPlan};
use herald_proto::{Cursor, MAX_CURSOR_LEN};
use http::{HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::sync::Notify;

/// The response headers of every stream (besides CORS).
pub const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

/// Validates and authorizes a stream request and reserves its stream.
pub async fn prepare(
    state: &State,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<StreamPlan, ApiError> {
    let mut channels: Vec<String> = Vec::new();
    let mut token = None;
    let mut query_cursor = None;
    let pairs = query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for (k, v) in pairs {
        match k.as_str() {
            "channel" => {
                herald_proto::validate_channel(&v)
                    .map_err(|e| ApiError::bad_request("invalid_channel", e.to_string()))?;
                if !channels.contains(&v) {
                    channels.push(v);
                }
            }
            "token" => token = Some(v),
            "last_event_id" => query_cursor = Some(v),
            _ => {}
        }
    }
    if channels.is_empty() {
        return Err(ApiError::bad_request(
            "missing_channel",
            "name at least one ?channel=",
        ));
    }
    let subscriber = state.auth.subscriber(headers, token.as_deref())?;
    if let Some(denied) = channels.iter().find(|c| !subscriber.may_read(c)) {
        return Err(ApiError::new(
            403,
            "channel_forbidden",
            format!("the token does not allow channel '{denied}'"),
        ));
    }
    state.admission.admit_stream()?;
    // The header wins: it is what the browser sends on its automatic reconnect, while the
    // query holds the position of the first connect.
    let header_cursor = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_last_event_id", "Last-Event-ID is not ASCII")
                })?
                .to_owned(),
        ),
        None => None,
    };
    let raw = header_cursor
        .filter(|s| !s.trim().is_empty())
        .or(query_cursor.filter(|s| !s.trim().is_empty()));
    let cursor = match raw {
        None => None,
        Some(s) => {
            if s.len() > MAX_CURSOR_LEN {
                return Err(ApiError::bad_request(
                    "invalid_last_event_id",
                    format!("Last-Event-ID longer than {MAX_CURSOR_LEN} bytes"),
                ));
            }
            Some(Cursor::decode(s.trim()).map_err(|e| {
                ApiError::bad_request("invalid_last_event_id", format!("Last-Event-ID: {e}"))
            })?)
        }
    };
    state
        .node()?
        .open_stream(&channels, cursor.as_ref(), subscriber.user())
        .await
        .map_err(|e| match e {
            NodeError::TooManyConnections => {
                ApiError::new(503, "too_many_connections", e.to_string())
            }
            NodeError::ShuttingDown => ApiError::new(503, "shutting_down", e.to_string()),
            NodeError::TooManyChannels(_) => {
                ApiError::bad_request("too_many_channels", e.to_string())
            }
            NodeError::TooManyNodeChannels(_) => {
                ApiError::new(503, "too_many_node_channels", e.to_string())
            }
            NodeError::NoChannels => ApiError::bad_request("missing_channel", e.to_string()),
            NodeError::Store(_) => ApiError::new(503, "store_unavailable", e.to_string()),
        })
}

/// A stream requested on a connection hyper serves: the stream is the response body.
pub async fn handle(
    state: &Arc<State>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let plan = prepare(state, req.headers(), req.uri().query()).await?;
    let mut resp = Response::new(ResponseBody::Sse(Box::new(plan.into_body(kill))));
    for (k, v) in STREAM_HEADERS {
        resp.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    Ok(resp)
}
