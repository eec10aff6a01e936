//! Errors before a stream starts: a status and `{"error":{"code","message"}}`.

use super::body::ResponseBody;
use http::{Response, StatusCode};
use std::time::Duration;

/// `Retry-After` of a 429 or 503 that does not know better.
const DEFAULT_RETRY_AFTER_SECS: u64 = 5;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// When to come back, for 429 and 503 (default 5 s).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Says when a retry may succeed (rounded up to whole seconds on the wire).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The `Retry-After` value in seconds, for statuses that carry one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        (self.status == 503 || self.status == 429).then(|| {
            self.retry_after.map_or(DEFAULT_RETRY_AFTER_SECS, |d| {
                d.as_secs_f64().ceil().max(1.0) as u64
            })
        })
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(ResponseBody::full(herald_proto::error_json(
            self.code,
            &self.message,
        )));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the upload is never read: the connection cannot carry another request.
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        if let Some(secs) = self.retry_after_secs() {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<herald_dispatcher::PublishError> for ApiError {
    fn from(e: herald_dispatcher::PublishError) -> Self {
        use herald_dispatcher::ErrorKind;
        let status = match e.kind {
            ErrorKind::BadRequest => 400,
            ErrorKind::TooLarge => 413,
            ErrorKind::Forbidden => 403,
            ErrorKind::Unavailable => 503,
        };
        ApiError::new(status, e.code, e.message)
    }
}
