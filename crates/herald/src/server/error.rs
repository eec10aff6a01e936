//! Errors before a stream starts: a status and `{"error":{"code","message"}}`.

use super::body::ResponseBody;
use http::{Response, StatusCode};

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
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
