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
    /// On the publish endpoints: whether anything of the request may have been stored.
    pub maybe_stored: Option<bool>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            maybe_stored: None,
        }
    }

    /// Says whether anything may have been stored (the publish endpoints say it always).
    pub fn stored(mut self, maybe: bool) -> Self {
        self.maybe_stored = Some(maybe);
        self
    }

    /// The error object of the body.
    pub fn detail(&self) -> herald_proto::ErrorDetail {
        herald_proto::ErrorDetail {
            code: self.code.to_owned(),
            message: self.message.clone(),
            maybe_stored: self.maybe_stored,
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
        let body = match self.maybe_stored {
            None => herald_proto::error_json(self.code, &self.message),
            Some(_) => error_body(self.detail(), None),
        };
        self.response_with(body)
    }

    /// The response of a batch whose every item failed: this error, and each item's.
    pub fn into_batch_response(
        self,
        results: Vec<herald_proto::PublishResult>,
    ) -> Response<ResponseBody> {
        let body = error_body(self.detail(), Some(results));
        self.response_with(body)
    }

    fn response_with(self, body: Vec<u8>) -> Response<ResponseBody> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(ResponseBody::full(body));
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

fn error_body(
    error: herald_proto::ErrorDetail,
    results: Option<Vec<herald_proto::PublishResult>>,
) -> Vec<u8> {
    let body = herald_proto::ErrorBody { error, results };
    serde_json::to_vec(&body)
        .unwrap_or_else(|_| herald_proto::error_json("internal", "unserializable error"))
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
        ApiError::new(status, e.code, e.message).stored(e.maybe_stored)
    }
}
