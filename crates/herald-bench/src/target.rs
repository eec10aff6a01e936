//! The server under test: Herald, or nginx + nchan configured as an equivalent EventSource
//! pub/sub (see scripts/bench-compare).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Kind {
    Herald,
    Nchan,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Herald publisher key.
    pub api_key: Option<String>,
    /// Herald subscriber token.
    pub token: Option<String>,
}

pub fn channel_name(i: usize) -> String {
    format!("bench-{i}")
}

impl Target {
    /// The raw HTTP/1.1 request that opens a stream of one channel, resuming after
    /// `last_event_id` when given.
    pub fn subscribe_request(&self, channel: usize, last_event_id: Option<&str>) -> String {
        let path = match self.kind {
            Kind::Herald => match &self.token {
                Some(t) => format!("/v1/sse?channel={}&token={t}", channel_name(channel)),
                None => format!("/v1/sse?channel={}", channel_name(channel)),
            },
            Kind::Nchan => format!("/sub/{}", channel_name(channel)),
        };
        let resume = last_event_id
            .map(|id| format!("Last-Event-ID: {id}\r\n"))
            .unwrap_or_default();
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
            self.addr
        )
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A request publishing one payload to `channel`.
    pub fn publish(
        &self,
        http: &reqwest::Client,
        channel: usize,
        payload: &str,
    ) -> reqwest::RequestBuilder {
        match self.kind {
            Kind::Herald => {
                let body = format!(
                    "{{\"channel\":\"{}\",\"data\":{payload}}}",
                    channel_name(channel)
                );
                let rb = http
                    .post(format!("{}/v1/publish", self.base()))
                    .header("content-type", "application/json")
                    .body(body);
                match &self.api_key {
                    Some(k) => rb.bearer_auth(k),
                    None => rb,
                }
            }
            Kind::Nchan => http
                .post(format!("{}/pub/{}", self.base(), channel_name(channel)))
                .header("content-type", "application/json")
                .body(payload.to_owned()),
        }
    }

    /// A Herald batch publish of `(channel, payload)` pairs.
    pub fn publish_batch(
        &self,
        http: &reqwest::Client,
        items: &[(usize, String)],
    ) -> reqwest::RequestBuilder {
        let mut body = String::from("{\"messages\":[");
        for (i, (c, p)) in items.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                "{{\"channel\":\"{}\",\"data\":{p}}}",
                channel_name(*c)
            ));
        }
        body.push_str("]}");
        let rb = http
            .post(format!("{}/v1/publish/batch", self.base()))
            .header("content-type", "application/json")
            .body(body);
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }
}

/// The bench's own payload: per-channel counter `s` (the order and loss check, independent of
/// the server's envelope) and send time `t` in µs since the Unix epoch.
pub fn payload(s: u64, pad: &str) -> String {
    format!("{{\"s\":{s},\"t\":{},\"p\":\"{pad}\"}}", now_us())
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
