use thiserror::Error;

/// Errors of a store backend.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("corrupt record in {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("storage task failed: {0}")]
    Task(String),
    #[error("invalid store input: {0}")]
    Invalid(String),
    /// A conditional write lost: another writer already holds this position. The sequencer
    /// re-reads the channel head and retries.
    #[error("write conflict: {0}")]
    Conflict(String),
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}
