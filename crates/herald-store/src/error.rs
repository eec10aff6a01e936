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
    /// The writer's ownership of the channel ended (its lease was lost, or another writer
    /// with a newer fence sealed the channel): nothing more may be acknowledged under it.
    #[error("not the channel's writer: {0}")]
    Fenced(String),
    /// A new owner sealed the channel and has not yet recorded where its log stands; a
    /// reader retries shortly.
    #[error("channel {0} is changing owner; retry")]
    InTransition(String),
}

impl From<fjall::Error> for StoreError {
    fn from(e: fjall::Error) -> Self {
        StoreError::Engine(e.to_string())
    }
}
