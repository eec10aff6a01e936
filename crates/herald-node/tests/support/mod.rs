//! What the node's integration tests share: stored entries and fabric messages of one
//! epoch, and reading a stream's bytes until they hold what a test waits for.

#![allow(dead_code)] // each test binary uses its own part

use anyhow::{bail, Context};
use bytes::Bytes;
use herald_fabric::{FabricMessage, Incoming};
use herald_store::AppendEntry;
use http_body::Body;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub const EPOCH: u64 = 7;

pub fn entry(channel: &str, seq: u64) -> AppendEntry {
    AppendEntry {
        channel: channel.to_owned(),
        epoch: EPOCH,
        seq,
        ts_ms: 1,
        event: "message".to_owned(),
        data: Bytes::from(format!("{{\"n\":{seq}}}")),
        idempotency: None,
        ttl_secs: 0,
        fence: 0,
    }
}

pub fn fabric_msg(channel: &str, seq: u64) -> Incoming {
    Incoming::Message(FabricMessage {
        channel: Arc::from(channel),
        epoch: EPOCH,
        seq,
        ts_ms: 1,
        event: Arc::from("message"),
        data: Bytes::from(format!("{{\"n\":{seq}}}")),
        conflation_key: None,
        trace: None,
        sent_us: 0,
    })
}

/// Reads a stream's bytes until `want` holds for them or the deadline passes.
pub async fn read_until(
    body: &mut herald_node::SseBody,
    seen: &mut String,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !want(seen) {
        let frame = tokio::time::timeout_at(
            deadline,
            std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .with_context(|| format!("timed out; the stream so far: {seen:?}"))?;
        match frame {
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    seen.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Some(Err(e)) => match e {},
            None => bail!("the stream ended; so far: {seen:?}"),
        }
    }
    Ok(())
}

/// `"n":K` values of the data lines of a stream, in order.
pub fn numbers(stream: &str) -> Vec<u64> {
    stream
        .lines()
        .filter_map(|l| l.split("\"n\":").nth(1))
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}
