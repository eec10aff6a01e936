//! Sends the spans of traced messages to an OpenTelemetry collector over OTLP/HTTP: each
//! process reports its own part of a message's journey (a `herald.publish` span where the
//! publish was taken, a `herald.deliver` span per node fan-out), under the publisher's W3C
//! `traceparent`, so a backend's trace continues into Herald.

#![forbid(unsafe_code)]

mod client;
mod convert;
mod pump;

pub use pump::{Counters, Exporter};

use thiserror::Error;

/// Where and how to send spans.
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    /// The collector's base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`): spans go to
    /// `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// PEM CA bundle an `https` endpoint is checked against (Herald carries no built-in
    /// roots, so an `https` endpoint needs it).
    pub ca_pem: Option<Vec<u8>>,
    /// `service.name` of the spans.
    pub service: String,
    /// This process: its cluster id (or `serve`) and role.
    pub process: String,
    pub role: String,
}

#[derive(Debug, Error)]
pub enum OtlpError {
    #[error("OTLP endpoint {0:?} must be an http:// or https:// URL")]
    Endpoint(String),
    #[error("OTLP CA bundle: {0}")]
    Ca(String),
    #[error("building the OTLP client: {0}")]
    Client(String),
}

/// The URL spans are posted to.
pub fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let base = endpoint.trim().trim_end_matches('/');
    let scheme_ok = base.starts_with("http://") || base.starts_with("https://");
    if !scheme_ok || base.parse::<http::Uri>().is_err() {
        return Err(OtlpError::Endpoint(endpoint.to_owned()));
    }
    Ok(if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(
            traces_url("http://c:4318").expect("url"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c/otlp/").expect("url"),
            "https://c/otlp/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").expect("url"),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("ftp://c").is_err());
    }
}
