//! Validation errors for names (channels, events).

/// A name (channel or event) failed validation. The payload is a human-readable reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The channel name is not valid; the string says why.
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    /// The event name is not valid; the string says why.
    #[error("invalid event name: {0}")]
    InvalidEvent(String),
}
