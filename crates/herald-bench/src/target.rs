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
    /// Where this target's publishes go (a single server: also where it subscribes).
    pub addr: SocketAddr,
    /// Cluster mode: the dispatchers; publisher task k publishes to `publish_addrs[k % n]`.
    /// Empty: everything goes to `addr`.
    #[serde(default)]
    pub publish_addrs: Vec<SocketAddr>,
    /// Cluster mode: the nodes; connection i subscribes at `node_addrs[i % n]`. Empty: `addr`.
    #[serde(default)]
    pub node_addrs: Vec<SocketAddr>,
    /// Herald publisher key.
    pub api_key: Option<String>,
    /// Herald subscriber token.
    pub token: Option<String>,
}

pub fn channel_name(i: usize) -> String {
    format!("bench-{i}")
}

impl Target {
    /// Whether publishes and subscriptions go to different processes.
    pub fn is_cluster(&self) -> bool {
        !self.publish_addrs.is_empty() || !self.node_addrs.is_empty()
    }

    /// The target publisher task `k` uses: the same, with `addr` one of the publish addresses
    /// (round-robin, so publishers spread evenly over the dispatchers).
    pub fn publisher(&self, k: usize) -> Target {
        let mut t = self.clone();
        if !self.publish_addrs.is_empty() {
            t.addr = self.publish_addrs[k % self.publish_addrs.len()];
        }
        t
    }

    /// Where connection `i` subscribes first: node `i % n` (round-robin), or `addr`.
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        self.node_at(i)
    }

    /// How many places there are to subscribe at (1 for a single server).
    pub fn node_count(&self) -> usize {
        self.node_addrs.len().max(1)
    }

    /// The address of node `k mod node_count()`.
    pub fn node_at(&self, k: usize) -> SocketAddr {
        self.node_addrs
            .get(k % self.node_count())
            .copied()
            .unwrap_or(self.addr)
    }

    /// One line naming where publishes and subscriptions go.
    pub fn describe(&self) -> String {
        let kind = format!("{:?}", self.kind).to_lowercase();
        if !self.is_cluster() {
            return format!("{kind} at {}", self.addr);
        }
        let list = |v: &[SocketAddr]| {
            if v.is_empty() {
                self.addr.to_string()
            } else {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        format!(
            "{kind} cluster: publish {}; subscribe {}",
            list(&self.publish_addrs),
            list(&self.node_addrs)
        )
    }

    /// The raw HTTP/1.1 request that opens a stream of one channel at `host`, resuming after
    /// `last_event_id` when given.
    pub fn subscribe_request(
        &self,
        host: SocketAddr,
        channel: usize,
        last_event_id: Option<&str>,
    ) -> String {
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
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{resume}\r\n")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn target(publish: &[u16], nodes: &[u16]) -> Target {
        let a = |p: &u16| SocketAddr::from(([127, 0, 0, 1], *p));
        Target {
            kind: Kind::Herald,
            addr: a(&7070),
            publish_addrs: publish.iter().map(a).collect(),
            node_addrs: nodes.iter().map(a).collect(),
            api_key: None,
            token: None,
        }
    }

    #[test]
    fn spreads_publishers_and_connections_round_robin() {
        let t = target(&[1, 2], &[11, 12, 13]);
        let ports: Vec<u16> = (0..4).map(|k| t.publisher(k).addr.port()).collect();
        assert_eq!(ports, vec![1, 2, 1, 2]);
        let ports: Vec<u16> = (0..5).map(|i| t.node_addr(i).port()).collect();
        assert_eq!(ports, vec![11, 12, 13, 11, 12]);
        assert!(t.describe().contains("publish 127.0.0.1:1,127.0.0.1:2"));
        let single = target(&[], &[]);
        assert!(!single.is_cluster());
        assert_eq!(single.publisher(3).addr.port(), 7070);
        assert_eq!(single.node_addr(3).port(), 7070);
        assert_eq!(single.describe(), "herald at 127.0.0.1:7070");
        let req = single.subscribe_request(single.node_addr(0), 4, Some("c1"));
        assert!(req.starts_with("GET /v1/sse?channel=bench-4 HTTP/1.1\r\nHost: 127.0.0.1:7070\r\n"));
        assert!(req.contains("Last-Event-ID: c1\r\n"));
    }
}
