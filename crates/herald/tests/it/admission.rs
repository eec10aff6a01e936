//! Admission control: caps and rates refuse with 429/503, a JSON code and `Retry-After`,
//! store nothing, and leave the rest of the API answering.

use crate::common::*;
use anyhow::{ensure, Context};
use herald_client::Client;

/// Status, `Retry-After` and `error.code` of a stream request.
async fn open_raw(server: &Server, channel: &str) -> anyhow::Result<(u16, Option<u64>, String)> {
    let url = server.url(&format!(
        "/v1/sse?channel={channel}&token={}",
        token("u1", &["live:*"])
    ));
    let resp = reqwest::get(url).await?;
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if status == 200 {
        // Keep nothing open: the response is dropped with the stream.
        return Ok((status, retry, String::new()));
    }
    let body: serde_json::Value = resp.json().await.context("error body is JSON")?;
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((status, retry, code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped_and_given_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_CONNS_PER_IP", "3"),
    )?;
    let sc = server.subscriber(&["live:*"]);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(sc.subscribe(&["live:ip"], None).await?);
    }
    let (status, retry, code) = open_raw(&server, "live:ip").await?;
    ensure!(
        status == 429,
        "a 4th connection from the address: {status} {code}"
    );
    ensure!(code == "too_many_connections_from_ip", "code {code}");
    ensure!(retry.is_some_and(|s| s >= 1), "Retry-After: {retry:?}");
    // Every connection counts, the API's too; one closed is a slot for the next.
    drop(open.pop());
    eventually(WAIT, "a freed slot", || async {
        server.publisher().publish(&msg("live:ip", 1)).await.is_ok()
    })
    .await?;
    drop(open);
    eventually(WAIT, "the refusal counted in /metrics", || async {
        server
            .metric("herald_connections_refused_per_ip_total")
            .await
            .is_ok_and(|n| n >= 1.0)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_opens_beyond_the_node_rate_get_503_overloaded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_STREAM_OPENS_PER_SEC", "5"),
    )?;
    let mut opened = 0;
    let mut refused = 0;
    for _ in 0..12 {
        let (status, retry, code) = open_raw(&server, "live:rate").await?;
        match status {
            200 => opened += 1,
            503 => {
                ensure!(code == "overloaded", "code {code}");
                ensure!(retry == Some(1), "Retry-After of a 5/s limit: {retry:?}");
                refused += 1;
            }
            other => anyhow::bail!("unexpected {other} {code}"),
        }
    }
    // A burst of one second's worth gets in; the rest are told to come back.
    ensure!(
        (5..=7).contains(&opened) && refused >= 5,
        "{opened} opened, {refused} refused"
    );
    ensure!(server.metric("herald_streams_refused_rate_total").await? == refused as f64);
    // Publishing is not a stream open: unaffected.
    server.publisher().publish(&msg("live:rate", 1)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rates_per_key_and_namespace_refuse_with_429_and_store_nothing(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().config(
            r#"
[[api_keys]]
name = "limited"
key = "limited-key-0123"
rate_per_sec = 0.5
burst = 3

[namespaces.slow]
publish_rate_per_sec = 0.5
publish_burst = 2
"#,
        ),
    )?;
    let limited = Client::new(&server.base).with_api_key("limited-key-0123");
    for n in 0..3 {
        limited.publish(&msg("live:k", n)).await?;
    }
    let err = limited
        .publish(&msg("live:k", 3))
        .await
        .expect_err("a 4th message over the key's burst");
    ensure!(err.code() == Some("rate_limited"), "{err}");
    // A batch counts its messages; the refusal stores none of them.
    let err = limited
        .publish_batch(&[msg("live:k", 4), msg("live:k", 5)])
        .await
        .expect_err("a batch over the key's rate");
    ensure!(err.code() == Some("rate_limited"), "{err}");
    // Retry-After says when: 1 message at 0.5/s is 2 s away.
    let resp = reqwest::Client::new()
        .post(server.url("/v1/publish"))
        .bearer_auth("limited-key-0123")
        .json(&serde_json::json!({"channel": "live:k", "data": 1}))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 429);
    let retry: u64 = resp
        .headers()
        .get("retry-after")
        .context("Retry-After")?
        .to_str()?
        .parse()?;
    ensure!((1..=2).contains(&retry), "Retry-After {retry}");

    // A namespace's rate binds every key, the unlimited one too.
    let p = server.publisher();
    p.publish(&msg("slow:a", 0)).await?;
    p.publish(&msg("slow:b", 1)).await?;
    let err = p
        .publish(&msg("slow:a", 2))
        .await
        .expect_err("over the namespace's burst");
    ensure!(err.code() == Some("rate_limited"), "{err}");
    // Other namespaces are not.
    p.publish(&msg("live:other", 0)).await?;

    // Nothing refused was stored: live:k holds the 3 accepted messages, slow:a one.
    ensure!(p.history("live:k", 0, 100).await?.messages.len() == 3);
    ensure!(p.history("slow:a", 0, 100).await?.messages.len() == 1);
    ensure!(server.metric("herald_publishes_rate_limited_total").await? == 4.0);
    Ok(())
}
