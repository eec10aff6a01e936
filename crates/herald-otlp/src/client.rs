//! The OTLP exporter's HTTP client: the reqwest client Herald already links, so the
//! exporter runs on Herald's own runtime and trusts the CA it is given.

use crate::OtlpError;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use std::time::Duration;

/// Largest collector answer read (the exporter only looks at its status).
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Client(reqwest::Client);

impl Client {
    pub(crate) fn new(timeout: Duration, ca_pem: Option<&[u8]>) -> Result<Self, OtlpError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| OtlpError::Ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(OtlpError::Ca("no certificate in the bundle".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        b.build()
            .map(Client)
            .map_err(|e| OtlpError::Client(e.to_string()))
    }
}

#[async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut answer = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = answer.status();
        let mut got = bytes::BytesMut::new();
        while let Some(chunk) = answer.chunk().await? {
            if got.len() + chunk.len() > MAX_ANSWER {
                return Err("the collector's answer is too large".into());
            }
            got.extend_from_slice(&chunk);
        }
        Ok(Response::builder().status(status).body(got.freeze())?)
    }
}
