//! HTTPS: `herald serve --tls-cert --tls-key` speaks HTTP/2 (ALPN) and HTTP/1.1 over TLS,
//! with the same SSE wire contract; many streams share one HTTP/2 connection, and nothing
//! is served in the clear on the TLS port.

use crate::common::*;
use anyhow::{ensure, Context};
use futures_util::StreamExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A self-signed certificate for 127.0.0.1: (PEM certificate path, PEM key path, PEM text).
fn self_signed(dir: &Path) -> anyhow::Result<(String, String, String)> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
    let cert_pem = ck.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &cert_pem)?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Ok((
        cert.display().to_string(),
        key.display().to_string(),
        cert_pem,
    ))
}

fn https_client(cert_pem: &str, h1_only: bool) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes())?)
        .timeout(Duration::from_secs(30));
    if h1_only {
        b = b.http1_only();
    }
    Ok(b.build()?)
}

/// Opens a stream and returns its body after checking the response head.
async fn open_stream(
    http: &reqwest::Client,
    server: &Server,
    channel: &str,
    version: reqwest::Version,
) -> anyhow::Result<impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>>> {
    let tok = token("tls-user", &["live:*"]);
    let resp = http
        .get(server.url(&format!("/v1/sse?channel={channel}&token={tok}")))
        .timeout(Duration::from_secs(3600))
        .send()
        .await?;
    ensure!(resp.status() == 200, "{channel}: {}", resp.status());
    ensure!(
        resp.version() == version,
        "{channel} over {:?}",
        resp.version()
    );
    let ct = resp.headers().get("content-type").cloned();
    ensure!(
        ct.as_ref().is_some_and(|v| v == "text/event-stream"),
        "{ct:?}"
    );
    Ok(resp.bytes_stream())
}

/// Reads `body` until it holds an event carrying `marker`.
async fn wait_for(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    marker: &str,
) -> anyhow::Result<String> {
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(marker) {
            let chunk = body.next().await.context("stream ended")??;
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("no {marker} within {WAIT:?}; got {seen:?}"))??;
    Ok(seen)
}

async fn publish(
    http: &reqwest::Client,
    server: &Server,
    channel: &str,
    text: &str,
) -> anyhow::Result<()> {
    let resp = http
        .post(server.url("/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&serde_json::json!({ "channel": channel, "event": "comment", "data": { "text": text } }))
        .send()
        .await?;
    ensure!(resp.status() == 200, "publish: {}", resp.status());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_streams_over_http2_and_http1() -> anyhow::Result<()> {
    const STREAMS: usize = 10;
    let dir = tempfile::tempdir()?;
    let (cert, key, pem) = self_signed(dir.path())?;
    let server = Server::start(
        &dir.path().join("data"),
        &Opts::default()
            .env("HERALD_TLS_CERT", &cert)
            .env("HERALD_TLS_KEY", &key),
    )?;
    ensure!(server.base.starts_with("https://"), "base {}", server.base);

    // HTTP/2: ten streams and the publishes share one connection.
    let h2 = https_client(&pem, false)?;
    let mut bodies = Vec::new();
    for i in 0..STREAMS {
        bodies.push(
            open_stream(
                &h2,
                &server,
                &format!("live:t{i}"),
                reqwest::Version::HTTP_2,
            )
            .await?,
        );
    }
    for i in 0..STREAMS {
        publish(&h2, &server, &format!("live:t{i}"), &format!("hello-{i}")).await?;
    }
    for (i, body) in bodies.iter_mut().enumerate() {
        let got = wait_for(body, &format!("hello-{i}")).await?;
        ensure!(got.contains("event: comment\n"), "stream {i}: {got:?}");
        ensure!(got.contains("\nid: "), "stream {i} has no id: {got:?}");
    }
    let open = {
        let resp = h2
            .get(server.url("/metrics"))
            .bearer_auth(API_KEY)
            .send()
            .await?;
        ensure!(resp.version() == reqwest::Version::HTTP_2);
        let text = resp.text().await?;
        text.lines()
            .find_map(|l| l.strip_prefix("herald_sockets_open "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("herald_sockets_open")?
    };
    ensure!(
        open == 1.0,
        "{STREAMS} streams over HTTP/2 held {open} sockets"
    );

    // HTTP/1.1 over TLS: the same contract.
    let h1 = https_client(&pem, true)?;
    let mut body = open_stream(&h1, &server, "live:h1", reqwest::Version::HTTP_11).await?;
    publish(&h1, &server, "live:h1", "over-h1").await?;
    wait_for(&mut body, "over-h1").await?;

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    raw.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut out)).await;
    ensure!(
        !String::from_utf8_lossy(&out).contains("\"ok\""),
        "plain HTTP answered on the TLS port: {}",
        String::from_utf8_lossy(&out)
    );
    Ok(())
}

/// A peer that completes the TLS handshake (choosing HTTP/2) and then sends nothing is closed
/// after the head timeout; a connection with a stream open is not, however long it is quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_requests_is_closed_and_one_with_a_stream_is_not() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let (cert, key, pem) = self_signed(dir.path())?;
    let server = Server::start(
        &dir.path().join("data"),
        &Opts::default()
            .env("HERALD_TLS_CERT", &cert)
            .env("HERALD_TLS_KEY", &key)
            .env("HERALD_HEAD_TIMEOUT_SECS", "1"),
    )?;

    let mut roots = rustls::RootCertStore::empty();
    for c in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
        pem.as_bytes(),
    ) {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = connector.connect(name, tcp).await?;
    ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()),
        "HTTP/2 was not chosen"
    );
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut sink))
        .await
        .context("a silent HTTP/2 connection was still open after 10 s")?
        .ok();
    let lived = started.elapsed();
    ensure!(
        lived >= Duration::from_millis(900),
        "closed after {lived:?}, before the head timeout"
    );

    // A stream quiet for three idle periods keeps its connection.
    let h2 = https_client(&pem, false)?;
    let mut body = open_stream(&h2, &server, "live:quiet", reqwest::Version::HTTP_2).await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    publish(&h2, &server, "live:quiet", "after-the-quiet").await?;
    wait_for(&mut body, "after-the-quiet").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_or_a_lone_key_refuses_to_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cert, key, _) = self_signed(dir.path())?;
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file")?;
    let cases = [
        (vec![("HERALD_TLS_CERT", cert.as_str())], "--tls-key"),
        (
            vec![
                ("HERALD_TLS_CERT", garbage.to_str().context("path")?),
                ("HERALD_TLS_KEY", key.as_str()),
            ],
            "no certificate",
        ),
        (
            vec![
                ("HERALD_TLS_CERT", cert.as_str()),
                ("HERALD_TLS_KEY", garbage.to_str().context("path")?),
            ],
            "no usable private key",
        ),
    ];
    for (env, expect) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("HERALD_API_KEYS", API_KEY)
            .env("HERALD_JWT_SECRET", SECRET)
            .envs(env.iter().copied())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "{env:?} started");
        ensure!(stderr.contains(expect), "{env:?}: {stderr}");
    }
    Ok(())
}
