//! Presence on `herald serve`: `GET /v1/channels/{ch}/presence` counts a channel's
//! subscribers (and names them, for a small channel); a namespace that opts in gives its
//! subscribers `herald:occupancy` (the viewer count) and `herald:join` / `herald:leave`.

use crate::common::*;
use anyhow::{ensure, Context};
use herald_client::Client;
use herald_proto::SseEvent;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[namespaces.room]
occupancy_secs = 1
presence_events = true
"#;

async fn presence(server: &Server, channel: &str) -> anyhow::Result<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(server.url(&format!("/v1/channels/{channel}/presence")))
        .bearer_auth(API_KEY)
        .send()
        .await?;
    ensure!(r.status() == 200, "presence: {}", r.status());
    Ok(r.json().await?)
}

/// Reads events until one named `event` whose data matches `want`.
async fn until_event(
    sub: &mut herald_client::Subscription,
    event: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<SseEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(sub, left)
            .await
            .with_context(|| format!("waiting for {event}"))?;
        if ev.event == event && want(&envelope(&ev)["data"]) {
            return Ok(ev);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_and_names_subscribers_and_tells_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default()
            .config(CONFIG)
            .env("HERALD_PRESENCE_TICK_MS", "100"),
    )?;
    let stream =
        |user: &str| Client::new(&server.base).with_token(token(user, &["room:*", "live:*"]));
    let mut alice = stream("alice").subscribe(&["room:1"], None).await?;
    // Alone: the count is 1, and alice is told so.
    until_event(&mut alice, "herald:occupancy", |d| d["count"] == 1).await?;
    let bob = stream("bob").subscribe(&["room:1"], None).await?;
    until_event(&mut alice, "herald:join", |d| d["user"] == "bob").await?;
    until_event(&mut alice, "herald:occupancy", |d| d["count"] == 2).await?;
    let p = presence(&server, "room:1").await?;
    assert_eq!(p["count"], 2, "{p}");
    assert_eq!(p["users"], serde_json::json!(["alice", "bob"]), "{p}");

    drop(bob);
    until_event(&mut alice, "herald:leave", |d| d["user"] == "bob").await?;
    until_event(&mut alice, "herald:occupancy", |d| d["count"] == 1).await?;
    assert_eq!(presence(&server, "room:1").await?["count"], 1);

    // A namespace that did not opt in gets no presence events, but is counted.
    let mut carol = stream("carol").subscribe(&["live:1"], None).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = presence(&server, "live:1").await?;
        if p["count"] == 1 {
            break;
        }
        ensure!(Instant::now() < deadline, "live:1 never counted: {p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.publisher().publish(&msg("live:1", 1)).await?;
    let ev = next_event(&mut carol, WAIT).await?;
    assert_eq!(ev.event, "message", "live:1 got a presence event: {ev:?}");

    // Who may ask: a token allowing the channel, not one that does not.
    let forbidden = reqwest::Client::new()
        .get(server.url("/v1/channels/room:1/presence"))
        .bearer_auth(token("eve", &["live:*"]))
        .send()
        .await?;
    assert_eq!(forbidden.status(), 403);
    let allowed = reqwest::Client::new()
        .get(server.url("/v1/channels/room:1/presence"))
        .bearer_auth(token("eve", &["room:*"]))
        .send()
        .await?;
    assert_eq!(allowed.status(), 200);
    ensure!(server.metric("herald_presence_events_total").await? >= 4.0);
    Ok(())
}

/// Without presence events a single server keeps no tick of counts: the endpoint reads the
/// node's own streams, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_server_answers_presence_from_its_streams() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let p = presence(&server, "live:alone").await?;
    assert_eq!(
        (p["count"].as_u64(), p["nodes"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    let _s = Client::new(&server.base)
        .with_token(token("dana", &["live:*"]))
        .subscribe(&["live:alone"], None)
        .await?;
    // The stream is attached by the time its first event can arrive; poll briefly.
    let deadline = Instant::now() + WAIT;
    loop {
        let p = presence(&server, "live:alone").await?;
        if p["count"] == 1 {
            assert_eq!(p["users"], serde_json::json!(["dana"]), "{p}");
            break;
        }
        ensure!(Instant::now() < deadline, "never counted: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
