//! Who may reach what: `/metrics` takes a credential, and no client can hold more sockets
//! than the server allows.

use crate::common::*;
use anyhow::{ensure, Context};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METRICS_TOKEN: &str = "metrics-token-0123456789";

/// Status and `error.code` (empty on success) of a GET of `/metrics` with `bearer`.
async fn scrape(server: &Server, bearer: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut req = reqwest::Client::new().get(server.url("/metrics"));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    if status == 200 {
        ensure!(
            text.contains("herald_connections "),
            "not the metrics: {text}"
        );
        return Ok((status, String::new()));
    }
    let body: serde_json::Value = serde_json::from_str(&text).context("error body is JSON")?;
    Ok((
        status,
        body["error"]["code"].as_str().unwrap_or("").to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_token_or_a_publisher_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_METRICS_TOKEN", METRICS_TOKEN),
    )?;
    let refused = [
        (None, "missing_api_key"),
        (Some("metrics-token-012345678"), "invalid_api_key"),
        (Some(SECRET), "invalid_api_key"),
    ];
    for (bearer, code) in refused {
        let got = scrape(&server, bearer).await?;
        ensure!(got == (401, code.to_owned()), "{bearer:?}: {got:?}");
    }
    for ok in [METRICS_TOKEN, API_KEY] {
        let got = scrape(&server, Some(ok)).await?;
        ensure!(got.0 == 200, "{ok}: {got:?}");
    }
    // The liveness and readiness probes stay open: load balancers carry no credentials.
    // (Readiness may take a moment on a loaded machine; it never asks for a credential.)
    for probe in ["/healthz", "/readyz"] {
        eventually(WAIT, probe, || async {
            matches!(reqwest::get(server.url(probe)).await, Ok(r) if r.status() == 200)
        })
        .await?;
    }
    // --dev opens them, loudly.
    let dev_dir = tempfile::tempdir()?;
    let dev = Server::start(
        dev_dir.path(),
        &Opts {
            dev: true,
            ..Opts::default()
        },
    )?;
    ensure!(scrape(&dev, None).await?.0 == 200, "--dev /metrics");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_past_the_cap_are_refused_at_accept_and_given_back() -> anyhow::Result<()> {
    const CAP: usize = 4;
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_SOCKETS", CAP.to_string()),
    )?;
    // Connections that never send a request hold their sockets until the head timeout.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?);
    }
    // The server counts them when it accepts them; a new one is refused once all are in,
    // answered at accept before anything is read (this probe sends nothing, so the close
    // after the answer is a clean one).
    let mut answer = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        answer = read_answer(server.port).await?;
        if answer.contains("503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_open_connections"),
        "the connection past the cap got: {answer}"
    );
    // A closed socket gives its place back.
    drop(idle.pop());
    eventually(WAIT, "a socket freed up is taken again", || async {
        raw_get(server.port, "/healthz")
            .await
            .is_ok_and(|a| a.starts_with("HTTP/1.1 200"))
    })
    .await?;
    drop(idle);
    let refused = server.metric("herald_sockets_refused_total").await?;
    ensure!(refused >= 1.0, "refusals counted: {refused}");
    Ok(())
}

/// What a server says to a connection that sends nothing, until it closes (or a moment).
async fn read_answer(port: u16) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A one-shot GET over its own connection: the whole answer, as text.
async fn raw_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    // A refused connection is answered and closed without reading: the write may fail.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
