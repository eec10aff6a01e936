//! Rust client for Herald: publish, read history, and subscribe to an SSE stream with the
//! same cursor semantics a browser's EventSource has. Used by the CLI, the tests and the bench.

#![forbid(unsafe_code)]

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use herald_proto::{
    ErrorBody, HistoryResponse, PublishBatchResponse, PublishResult, SseEvent, SseParser,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;
use thiserror::Error;

/// Errors of the client.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    #[error("server answered {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The server's `error.code`, when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One message to publish.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Publish {
    pub channel: String,
    pub data: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflation_key: Option<String>,
    /// Trace it through the cluster ([`Client::trace`] shows its journey).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub trace: bool,
    /// W3C trace context of the publisher's span: a sampled one traces the message as a
    /// child of that span (in `herald trace` and in an OpenTelemetry collector).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Which traced message to look up.
#[derive(Clone, Debug)]
pub enum TraceOf {
    Id(String),
    Position { channel: String, seq: u64 },
}

/// A traced message's journey (`GET /v1/trace`): every hop heard of, in time order.
#[derive(Clone, Debug, Deserialize)]
pub struct Journey {
    pub trace_id: String,
    pub channel: String,
    #[serde(default)]
    pub seq: Option<u64>,
    pub processes: Vec<String>,
    pub hops: Vec<herald_trace::Hop>,
}

impl Publish {
    pub fn new(channel: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            channel: channel.into(),
            data,
            ..Self::default()
        }
    }
}

/// A Herald server.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    api_key: Option<String>,
    token: Option<String>,
}

impl Client {
    /// `base` like `http://127.0.0.1:7070`.
    pub fn new(base: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            base: base.into().trim_end_matches('/').to_owned(),
            http,
            api_key: None,
            token: None,
        }
    }

    /// Uses `http` for every request: e.g. one that trusts a private CA
    /// (`reqwest::ClientBuilder::add_root_certificate`) for a server with its own certificate.
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Publisher API key for publish and history.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Subscriber token (JWT) for subscribe and history.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn authorized(&self, rb: reqwest::RequestBuilder, prefer_key: bool) -> reqwest::RequestBuilder {
        let secret = if prefer_key {
            self.api_key.as_ref().or(self.token.as_ref())
        } else {
            self.token.as_ref().or(self.api_key.as_ref())
        };
        match secret {
            Some(s) => rb.bearer_auth(s),
            None => rb,
        }
    }

    pub async fn publish(&self, msg: &Publish) -> Result<PublishResult, ClientError> {
        let rb = self
            .http
            .post(format!("{}/v1/publish", self.base))
            .json(msg);
        let resp = self.authorized(rb, true).send().await?;
        json_or_error(resp).await
    }

    pub async fn publish_batch(&self, msgs: &[Publish]) -> Result<Vec<PublishResult>, ClientError> {
        #[derive(Serialize)]
        struct Batch<'a> {
            messages: &'a [Publish],
        }
        let rb = self
            .http
            .post(format!("{}/v1/publish/batch", self.base))
            .json(&Batch { messages: msgs });
        let resp = self.authorized(rb, true).send().await?;
        let out: PublishBatchResponse = json_or_error(resp).await?;
        Ok(out.results)
    }

    pub async fn history(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<HistoryResponse, ClientError> {
        let url = format!(
            "{}/v1/channels/{}/history?after={after}&limit={limit}",
            self.base,
            encode(channel)
        );
        let resp = self.authorized(self.http.get(url), true).send().await?;
        json_or_error(resp).await
    }

    /// The journey of a traced message, gathered from every process of the cluster that
    /// answers within `wait`.
    pub async fn trace(
        &self,
        of: &TraceOf,
        wait: Option<Duration>,
    ) -> Result<Journey, ClientError> {
        let mut url = match of {
            TraceOf::Id(id) => format!("{}/v1/trace?trace_id={}", self.base, encode(id)),
            TraceOf::Position { channel, seq } => format!(
                "{}/v1/trace?channel={}&seq={seq}",
                self.base,
                encode(channel)
            ),
        };
        if let Some(w) = wait {
            url.push_str(&format!("&wait_ms={}", w.as_millis()));
        }
        let resp = self.authorized(self.http.get(url), true).send().await?;
        json_or_error(resp).await
    }

    /// Opens a stream of `channels`, resuming from `last_event_id` (sent as the
    /// `Last-Event-ID` header, as a browser does on reconnect).
    pub async fn subscribe(
        &self,
        channels: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<Subscription, ClientError> {
        let query: Vec<String> = channels
            .iter()
            .map(|c| format!("channel={}", encode(c)))
            .collect();
        let url = format!("{}/v1/sse?{}", self.base, query.join("&"));
        let mut rb = self.http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = self.authorized(rb, false).send().await?;
        let resp = ok_or_error(resp).await?;
        let stream = resp.bytes_stream();
        Ok(Subscription {
            body: Box::pin(stream),
            parser: SseParser::new(),
            pending: VecDeque::new(),
            last_event_id: last_event_id.map(str::to_owned),
        })
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, reqwest::Error>> + Send>>;

/// An open SSE stream.
pub struct Subscription {
    body: ByteStream,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    last_event_id: Option<String>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("last_event_id", &self.last_event_id)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                if let Some(id) = &ev.id {
                    self.last_event_id = Some(id.clone());
                }
                return Ok(Some(ev));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.pending.extend(self.parser.push(&chunk)),
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(None),
            }
        }
    }

    /// The id of the last event returned by [`next`](Self::next) that carried one: what to
    /// resume from.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Heartbeat comments seen so far.
    pub fn comments_seen(&self) -> u64 {
        self.parser.comments_seen()
    }

    pub fn retry(&self) -> Option<u64> {
        self.parser.retry()
    }
}

/// Query and path escaping: everything but unreserved characters.
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ESCAPED).to_string()
}

async fn ok_or_error(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => Err(ClientError::Status {
            status,
            code: e.error.code,
            message: e.error.message,
        }),
        Err(_) => Err(ClientError::Status {
            status,
            code: String::new(),
            message: String::from_utf8_lossy(&body).into_owned(),
        }),
    }
}

async fn json_or_error<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
) -> Result<T, ClientError> {
    let resp = ok_or_error(resp).await?;
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))
}
