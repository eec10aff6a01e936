use thiserror::Error;

/// What kind of failure a publish met; the HTTP layer maps it to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    TooLarge,
    Forbidden,
    Unavailable,
}

/// A publish (or one item of it) that was refused or failed. Nothing of it was stored
/// unless `maybe_stored` says it may have been: then only a retry with the same idempotency
/// key tells (it answers `duplicate` with the position if it was).
#[derive(Clone, Debug, Error)]
#[error("{code}: {message}")]
pub struct PublishError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
    /// The write may have landed (it failed or timed out after being sent to the store).
    pub maybe_stored: bool,
}

impl PublishError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            maybe_stored: false,
        }
    }

    /// An item whose outcome went missing (a bug): it may have been stored.
    pub fn lost_result() -> Self {
        Self::unavailable("internal", "a publish result was lost").maybe_stored()
    }

    /// What became of each item, from slots every item should have filled.
    pub fn fill(results: Vec<Option<crate::ItemResult>>) -> Vec<crate::ItemResult> {
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Self::lost_result())))
            .collect()
    }

    /// Marks the failure as one after which the message may have been stored.
    pub fn maybe_stored(mut self) -> Self {
        self.maybe_stored = true;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
}
