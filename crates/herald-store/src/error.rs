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
    /// A conditional write lost: another writer already holds these positions. `lost` names
    /// each channel that conflicted and its first seq not written by this append; every
    /// other entry of the append was written. The sequencer re-reads those channels' heads
    /// and retries their entries.
    #[error("write conflict: {detail}")]
    Conflict {
        detail: String,
        lost: Vec<(String, u64)>,
    },
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}
