//! Maps method and path to a handler; every answer gets CORS headers for allowed origins.

use super::body::ResponseBody;
use super::error::ApiError;
use super::exchange::MAX_HEADERS;
use super::{ack, admin, history, ops, presence, publish, sse, trace, State};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use std::sync::Arc;
use tokio::sync::Notify;

pub async fn handle(
    state: Arc<State>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let origin = req.headers().get(http::header::ORIGIN).cloned();
    let mut resp = match route(&state, kill, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    state.cors.apply(origin.as_ref(), &mut resp);
    resp
}

async fn route(
    state: &Arc<State>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ApiError> {
    if req.headers().len() > MAX_HEADERS {
        return Err(ApiError::new(
            431,
            "headers_too_large",
            format!("at most {MAX_HEADERS} request headers"),
        ));
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return preflight(state, &req);
    }
    let allowed: &str = match path.as_str() {
        "/v1/sse" => "GET",
        "/v1/publish" | "/v1/publish/batch" | "/v1/ack" => "POST",
        "/healthz" | "/readyz" | "/metrics" | "/v1/trace" => "GET",
        "/admin" | "/admin/" | "/admin/app.js" | "/admin/stream" => "GET",
        p if history::channel_of(p).is_some()
            || ack::is_acks_path(p)
            || presence::channel_of(p).is_some() =>
        {
            "GET"
        }
        _ => {
            return Err(ApiError::new(
                404,
                "not_found",
                format!("no route for {path}"),
            ))
        }
    };
    if method.as_str() != allowed {
        let mut resp = ApiError::new(405, "method_not_allowed", format!("{path} takes {allowed}"))
            .into_response();
        if let Ok(v) = http::HeaderValue::from_str(&format!("{allowed}, OPTIONS")) {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        return Ok(resp);
    }
    match path.as_str() {
        "/v1/sse" => sse::handle(state, kill, req).await,
        "/v1/publish" => publish::single(state, req).await,
        "/v1/publish/batch" => publish::batch(state, req).await,
        "/healthz" => Ok(ops::healthz()),
        "/readyz" => Ok(ops::readyz(state).await),
        "/metrics" => {
            state.auth.scraper(req.headers())?;
            Ok(ops::metrics(state))
        }
        "/v1/ack" => ack::post(state, req).await,
        "/v1/trace" => trace::handle(state, req).await,
        p if p.starts_with("/admin") => admin::handle(state, req).await,
        p if ack::is_acks_path(p) => ack::list(state, req).await,
        p if presence::channel_of(p).is_some() => presence::handle(state, req).await,
        _ => history::handle(state, req).await,
    }
}

fn preflight(state: &State, req: &Request<Incoming>) -> Result<Response<ResponseBody>, ApiError> {
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing_origin", "preflight without Origin"))?;
    if !state.cors.allows(origin) {
        return Err(ApiError::new(
            403,
            "origin_not_allowed",
            "this origin is not in HERALD_CORS_ORIGINS",
        ));
    }
    Ok(state.cors.preflight())
}
