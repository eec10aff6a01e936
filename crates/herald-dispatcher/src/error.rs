use thiserror::Error;

/// What kind of failure a publish met; the HTTP layer maps it to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    TooLarge,
    Forbidden,
    Unavailable,
}

/// A publish that was refused or failed; nothing of it was stored.
#[derive(Clone, Debug, Error)]
#[error("{code}: {message}")]
pub struct PublishError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

impl PublishError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
}
