//! Message tracing on `herald serve`: a publish that asks to be traced (or carries a sampled
//! `traceparent`, or is sampled) records every hop, and `GET /v1/trace` / `herald trace`
//! show the journey; the per-hop latency histograms count every message.

use crate::common::*;
use anyhow::{ensure, Context};
use herald_client::{Publish, TraceOf};
use herald_trace::Step;
use serde_json::json;

/// The hops' steps in time order, and a check that the times never go back.
fn steps(j: &herald_client::Journey) -> anyhow::Result<Vec<Step>> {
    for w in j.hops.windows(2) {
        ensure!(w[0].at_us <= w[1].at_us, "hops out of order: {:?}", j.hops);
    }
    Ok(j.hops.iter().map(|h| h.step).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_publish_shows_every_hop_to_the_sockets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            server
                .subscriber(&["live:*"])
                .subscribe(&["live:traced"], None)
                .await?,
        );
    }
    // Both streams are attached once an untraced message reaches them.
    publisher
        .publish(&Publish::new("live:traced", json!({ "n": 0 })))
        .await?;
    for s in &mut subs {
        next_event(s, WAIT).await?;
    }
    let mut m = Publish::new("live:traced", json!({ "n": 1 }));
    m.trace = true;
    let r = publisher.publish(&m).await?;
    let trace_id = r
        .trace_id
        .clone()
        .context("a traced publish names its trace")?;
    let seq = r.seq.context("seq")?;
    for s in &mut subs {
        next_event(s, WAIT).await?;
    }

    let by_position = TraceOf::Position {
        channel: "live:traced".into(),
        seq,
    };
    // The last socket write is recorded when the socket has taken the bytes: wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    let journey = loop {
        let j = publisher.trace(&by_position, None).await?;
        let written = j
            .hops
            .iter()
            .find(|h| h.step == Step::WrittenLast)
            .map_or(0, |h| h.counts.get("written").copied().unwrap_or(0));
        if written == 2 {
            break j;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "not both connections written: {j:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    ensure!(journey.trace_id == trace_id, "{journey:?}");
    ensure!(journey.seq == Some(seq), "{journey:?}");
    assert_eq!(
        steps(&journey)?,
        vec![
            Step::Accepted,
            Step::Stored,
            Step::Fabric,
            Step::Received,
            Step::QueuedFirst,
            Step::QueuedLast,
            Step::WrittenFirst,
            Step::WrittenLast
        ],
        "{journey:?}"
    );
    let queued = journey
        .hops
        .iter()
        .find(|h| h.step == Step::QueuedLast)
        .context("queued_last")?;
    assert_eq!(queued.counts["queued"], 2, "{queued:?}");

    // The same journey by its id.
    let by_id = publisher
        .trace(&TraceOf::Id(trace_id.clone()), None)
        .await?;
    assert_eq!(by_id.hops.len(), journey.hops.len());

    // The untraced message is not there; a subscriber token is not a publisher key.
    let untraced = publisher
        .trace(
            &TraceOf::Position {
                channel: "live:traced".into(),
                seq: seq - 1,
            },
            None,
        )
        .await
        .expect_err("an untraced message has no journey");
    assert_eq!(untraced.code(), Some("trace_not_found"), "{untraced}");
    let refused = server
        .subscriber(&["live:*"])
        .trace(&by_position, None)
        .await
        .expect_err("a subscriber cannot trace");
    assert_eq!(refused.status(), Some(401), "{refused}");

    // Every message counts in the per-hop histograms.
    for name in [
        "herald_hop_publish_to_commit_seconds_count",
        "herald_hop_commit_to_fabric_seconds_count",
        "herald_hop_fabric_to_node_seconds_count",
        "herald_hop_node_to_socket_seconds_count",
    ] {
        let n = server.metric(name).await?;
        ensure!(n >= 2.0, "{name} = {n}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_continues_the_publishers_trace_and_sampling_traces_the_rest(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default().env("HERALD_TRACE_SAMPLE", "1"))?;
    let http = reqwest::Client::new();
    let publish = |traceparent: Option<&'static str>, body: serde_json::Value| {
        let mut rb = http
            .post(server.url("/v1/publish"))
            .bearer_auth(API_KEY)
            .json(&body);
        if let Some(tp) = traceparent {
            rb = rb.header("traceparent", tp);
        }
        rb.send()
    };
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = publish(Some(sampled), json!({"channel": "live:tp", "data": 1})).await?;
    ensure!(r.status() == 200, "{}", r.status());
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    // In the body, for one item of a batch.
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = http
        .post(server.url("/v1/publish/batch"))
        .bearer_auth(API_KEY)
        .json(&json!({"messages": [
            {"channel": "live:tp", "data": 2, "traceparent": own},
            {"channel": "live:tp", "data": 3}
        ]}))
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    assert_eq!(
        body["results"][0]["trace_id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    // HERALD_TRACE_SAMPLE=1: the other item is traced too, under a trace of its own.
    let sampled_id = body["results"][1]["trace_id"].as_str().unwrap_or_default();
    ensure!(
        sampled_id.len() == 32 && sampled_id != "0af7651916cd43dd8448eb211c80319c",
        "{body}"
    );

    // The publisher's tracer chose not to sample: Herald does not trace it either.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let body: serde_json::Value =
        publish(Some(unsampled), json!({"channel": "live:tp", "data": 4}))
            .await?
            .json()
            .await?;
    ensure!(body.get("trace_id").is_none(), "{body}");

    // A malformed one is refused, and nothing is published.
    let r = publish(Some("00-xyz"), json!({"channel": "live:tp", "data": 5})).await?;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["error"]["code"], "invalid_traceparent");
    let history = server.publisher().history("live:tp", 0, 100).await?;
    assert_eq!(history.messages.len(), 4, "the refused publish was stored");
    Ok(())
}
