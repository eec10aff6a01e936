//! `GET /v1/channels/{ch}/presence`: how many subscribers a channel has across the cluster
//! (and who, for small channels), as the nodes last reported.

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::{json, query_pairs};
use super::history::{channel_path, decode_channel, may_read};
use super::State;
use http::{Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;

/// The percent-encoded channel of a presence path, if `path` is one.
pub fn channel_of(path: &str) -> Option<&str> {
    channel_path(path, "/presence")
}

#[derive(serde::Serialize)]
struct Answer {
    channel: String,
    #[serde(flatten)]
    occupancy: herald_node::presence::Occupancy,
}

pub async fn handle(
    state: &Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    let raw = channel_of(req.uri().path())
        .ok_or_else(|| ApiError::new(404, "not_found", "no such route"))?;
    let channel = decode_channel(raw)?;
    let token = query_pairs(&req)
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v);
    may_read(state, req.headers(), token.as_deref(), &channel)?;
    let occupancy = match (&state.presence, &state.node) {
        (Some(view), _) => view.of(&channel),
        (None, Some(node)) => node.local_occupancy(&channel),
        (None, None) => {
            return Err(ApiError::new(
                503,
                "presence_unavailable",
                "this process hears no presence reports",
            ))
        }
    };
    json(&Answer { occupancy, channel })
}
