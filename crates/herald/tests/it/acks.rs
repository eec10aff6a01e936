//! Acks and `user:` inboxes: a user's later connection without `Last-Event-ID` resumes
//! after what it acked; every device of the user receives; publishers see the acks.

use crate::common::*;
use herald_client::Client;
use serde_json::{json, Value};

async fn ack(server: &Server, token: Option<&str>, body: Value) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .post(server.url("/v1/ack"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// The acks list of `channel`, as the publisher sees it.
async fn acks_of(server: &Server, channel: &str) -> anyhow::Result<Value> {
    Ok(reqwest::Client::new()
        .get(server.url(&format!("/v1/channels/{channel}/acks")))
        .bearer_auth(API_KEY)
        .send()
        .await?
        .json()
        .await?)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_resumes_after_ack_on_every_device() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    // No channel patterns: a user may always read its own inbox.
    let ann = token("ann", &[]);
    let device = Client::new(&server.base).with_token(ann.clone());
    publish_n(&publisher, "user:ann", 5).await?;

    // Offline delivery: no ack yet, so a first connection starts live; publish to see it.
    let mut phone = device.subscribe(&["user:ann"], None).await?;
    let mut laptop = device.subscribe(&["user:ann"], None).await?;
    publish_n(&publisher, "user:ann", 1).await?;
    for (name, s) in [("phone", &mut phone), ("laptop", &mut laptop)] {
        let ev = next_event(s, WAIT).await?;
        assert_eq!(
            pos(&ev),
            ("user:ann".into(), 6),
            "{name} gets the inbox message"
        );
    }
    let id6 = phone.last_event_id().expect("id").to_owned();
    drop(phone);
    drop(laptop);

    // Ack up to 3 by position, then by the event id of 6 (a cursor).
    let (st, body) = ack(
        &server,
        Some(&ann),
        json!({"channel":"user:ann","epoch": epoch_of(&publisher).await?, "seq":3}),
    )
    .await?;
    assert_eq!(
        (st, body["seq"].as_u64(), body["moved"].as_bool()),
        (200, Some(3), Some(true)),
        "{body}"
    );
    let (st, body) = ack(
        &server,
        Some(&ann),
        json!({"channel":"user:ann","last_event_id": id6}),
    )
    .await?;
    assert_eq!((st, body["seq"].as_u64()), (200, Some(6)), "{body}");
    // An older ack (a slower device) leaves the record where it is.
    let (st, body) = ack(
        &server,
        Some(&ann),
        json!({"channel":"user:ann","epoch": epoch_of(&publisher).await?, "seq":2}),
    )
    .await?;
    assert_eq!(
        (st, body["seq"].as_u64(), body["moved"].as_bool()),
        (200, Some(6), Some(false)),
        "{body}"
    );

    // Offline: 7 and 8 arrive while no device is connected.
    publish_n(&publisher, "user:ann", 2).await?;
    // A new connection without Last-Event-ID resumes after the ack: 7, 8 — not 1..6.
    let mut tablet = device.subscribe(&["user:ann"], None).await?;
    let got = take(&mut tablet, 2, WAIT).await?;
    let seqs: Vec<u64> = got.iter().map(|e| pos(e).1).collect();
    assert_eq!(seqs, vec![7, 8]);
    // Last-Event-ID still wins over the ack.
    let mut exact = device.subscribe(&["user:ann"], Some(&id6)).await?;
    let got = take(&mut exact, 2, WAIT).await?;
    assert_eq!(got.iter().map(|e| pos(e).1).collect::<Vec<_>>(), vec![7, 8]);

    // The publisher sees who acked what.
    let listed = acks_of(&server, "user:ann").await?;
    assert_eq!(listed["acks"][0]["user"], "ann", "{listed}");
    assert_eq!(listed["acks"][0]["seq"], 6, "{listed}");
    assert_eq!(listed["last_seq"], 8, "{listed}");
    Ok(())
}

async fn epoch_of(publisher: &Client) -> anyhow::Result<u64> {
    let h = publisher.history("user:ann", 0, 1).await?;
    Ok(h.epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_acks_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    publish_n(&publisher, "live:x", 3).await?;
    let epoch = publisher.history("live:x", 0, 1).await?.epoch;
    let bob = token("bob", &["live:*"]);
    let cases: Vec<(Option<&str>, Value, u16, &str)> = vec![
        (
            None,
            json!({"channel":"live:x","epoch":epoch,"seq":1}),
            401,
            "missing_token",
        ),
        (
            Some("not.a.token"),
            json!({"channel":"live:x","epoch":epoch,"seq":1}),
            401,
            "invalid_token",
        ),
        (
            Some(&bob),
            json!({"channel":"live:x","epoch":epoch,"seq":4}),
            400,
            "invalid_ack",
        ),
        (
            Some(&bob),
            json!({"channel":"live:x","epoch":epoch + 1,"seq":1}),
            400,
            "invalid_ack",
        ),
        (
            Some(&bob),
            json!({"channel":"live:x","seq":1}),
            400,
            "invalid_ack",
        ),
        (
            Some(&bob),
            json!({"channel":"live:x","last_event_id":"h1garbage"}),
            400,
            "invalid_last_event_id",
        ),
        (
            Some(&bob),
            json!({"channel":"secret:x","epoch":epoch,"seq":1}),
            403,
            "channel_forbidden",
        ),
        (
            Some(&bob),
            json!({"channel":"bad channel","epoch":epoch,"seq":1}),
            400,
            "invalid_channel",
        ),
        (
            Some(&bob),
            json!({"channel":"live:x","epoch":epoch,"seq":1,"extra":1}),
            400,
            "invalid_body",
        ),
    ];
    for (tok, body, status, want) in cases {
        let (st, resp) = ack(&server, tok, body.clone()).await?;
        assert_eq!((st, code(&resp)), (status, want), "ack {body}: {resp}");
    }
    let listed = acks_of(&server, "live:x").await?;
    assert_eq!(listed["acks"], json!([]), "nothing recorded: {listed}");
    // Listing acks is for publishers.
    let st = reqwest::Client::new()
        .get(server.url("/v1/channels/live:x/acks"))
        .bearer_auth(&bob)
        .send()
        .await?
        .status();
    assert_eq!(st.as_u16(), 401);
    Ok(())
}

/// What a forged request from another site looks like: the browser attaches the cookie and
/// the page's origin, and sends a body it need not ask about first (`text/plain`).
async fn cookie_ack(
    server: &Server,
    cookie_token: &str,
    origin: Option<&str>,
    content_type: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .post(server.url("/v1/ack"))
        .header("cookie", format!("herald_token={cookie_token}"))
        .header("content-type", content_type)
        .body(body.to_string());
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_ack_from_another_site_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_CORS_ORIGINS", "*,http://app.example"),
    )?;
    let publisher = server.publisher();
    publish_n(&publisher, "live:x", 3).await?;
    let epoch = publisher.history("live:x", 0, 1).await?.epoch;
    let bob = token("bob", &["live:*"]);
    let body = json!({"channel":"live:x","epoch":epoch,"seq":3});
    let own = format!("http://127.0.0.1:{}", server.port);
    let refused = [
        // A form or no-cors fetch from any site: a simple content type, its own origin.
        (
            Some("http://evil.example"),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            None,
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
        ),
        // JSON from a site not listed (`*` does not count for the cookie).
        (
            Some("http://evil.example"),
            "application/json",
            403,
            "origin_not_allowed",
        ),
        (Some("null"), "application/json", 403, "origin_not_allowed"),
    ];
    for (origin, ct, status, want) in refused {
        let (st, resp) = cookie_ack(&server, &bob, origin, ct, &body).await?;
        assert_eq!((st, code(&resp)), (status, want), "{origin:?} {ct}: {resp}");
    }
    let listed = acks_of(&server, "live:x").await?;
    assert_eq!(listed["acks"], json!([]), "nothing recorded: {listed}");
    // The server's own pages, a listed origin, and a bearer token from anywhere are taken.
    for (origin, seq) in [(own.as_str(), 1), ("http://app.example", 2)] {
        let body = json!({"channel":"live:x","epoch":epoch,"seq":seq});
        let (st, resp) = cookie_ack(&server, &bob, Some(origin), "application/json", &body).await?;
        assert_eq!(st, 200, "{origin}: {resp}");
    }
    let (st, resp) = ack(&server, Some(&bob), body.clone()).await?;
    assert_eq!((st, resp["seq"].as_u64()), (200, Some(3)), "{resp}");
    Ok(())
}
