//! What every handler shares about a request and its answer: the header limit, the query
//! string, `limit` values, JSON answers. (Kept apart from the router, so handlers do not
//! depend on what routes to them.)

use super::body::ResponseBody;
use super::error::ApiError;
use http::{Request, Response};
use hyper::body::Incoming;

/// Requests with more headers than this are refused (a browser sends about 20).
pub const MAX_HEADERS: usize = 64;

/// Builds a JSON 200 response.
pub fn json<T: serde::Serialize>(value: &T) -> Result<Response<ResponseBody>, ApiError> {
    let body =
        serde_json::to_vec(value).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    let mut resp = Response::new(ResponseBody::full(body));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// A `limit` query value: 1..=`max`.
pub fn parse_limit(v: &str, max: usize) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|l| (1..=max).contains(l))
        .ok_or_else(|| ApiError::bad_request("invalid_query", format!("`limit` must be 1..={max}")))
}

/// The query string's pairs, percent-decoded.
pub fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}
