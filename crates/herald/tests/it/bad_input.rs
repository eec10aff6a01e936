//! Bad input gets a 4xx with a JSON `error.code` and changes nothing.

use crate::common::*;
use herald_proto::{Cursor, Position};
use reqwest::Method;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, method: Method, path: &str, status: u16, code: &'static str) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        headers: vec![("authorization".into(), format!("Bearer {API_KEY}"))],
        body: None,
        status,
        code,
    }
}

impl Case {
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(b.into());
        self
    }
    fn no_auth(mut self) -> Self {
        self.headers.retain(|(k, _)| k != "authorization");
        self
    }
    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.retain(|(hk, _)| hk != k);
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_with_a_code_and_changes_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let p = server.publisher();
    assert_eq!(p.publish(&msg("live:bad", 0)).await?.seq, Some(1));
    let epoch = p.history("live:bad", 0, 1).await?.epoch;

    let tok = token("u1", &["live:*"]);
    let sse = |extra: &str| format!("/v1/sse?channel=live:bad{extra}");
    let wrong_secret = herald_proto::sign_hs256(
        &herald_proto::Claims {
            sub: "u1".into(),
            channels: vec!["*".into()],
            exp: Some(now_secs() + 60),
            nbf: None,
            iat: None,
        },
        b"some-other-secret-entirely",
    );
    let expired = herald_proto::sign_hs256(
        &herald_proto::Claims {
            sub: "u1".into(),
            channels: vec!["*".into()],
            exp: Some(now_secs() - 10),
            nbf: None,
            iat: None,
        },
        SECRET.as_bytes(),
    );
    let mut good = Cursor::default();
    good.set("live:bad", Position { epoch, seq: 1 });
    let good = good.encode();
    let truncated = &good[..good.len() - 3];
    let big_batch = format!(
        "{{\"messages\":[{}]}}",
        vec![r#"{"channel":"live:bad","data":1}"#; 1001].join(",")
    );
    let oversized = format!(
        r#"{{"channel":"live:bad","data":"{}"}}"#,
        "x".repeat(66_000)
    );
    let huge_body = vec![b' '; 1024 * 1024];
    let post = Method::POST;
    let get = Method::GET;
    let cases = vec![
        case(
            "malformed json",
            post.clone(),
            "/v1/publish",
            400,
            "malformed_json",
        )
        .body(r#"{"channel":"live:bad","#),
        case(
            "wrong type",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_body",
        )
        .body(r#"{"channel":5,"data":1}"#),
        case(
            "unknown field",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_body",
        )
        .body(r#"{"channel":"live:bad","data":1,"colour":"red"}"#),
        case(
            "bad channel",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_channel",
        )
        .body(r#"{"channel":"live bad!","data":1}"#),
        case(
            "empty channel",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_channel",
        )
        .body(r#"{"channel":"","data":1}"#),
        case("empty body", post.clone(), "/v1/publish", 400, "empty_body").body(""),
        case(
            "missing data",
            post.clone(),
            "/v1/publish",
            400,
            "empty_data",
        )
        .body(r#"{"channel":"live:bad"}"#),
        case("null data", post.clone(), "/v1/publish", 400, "empty_data")
            .body(r#"{"channel":"live:bad","data":null}"#),
        case(
            "reserved event",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_event",
        )
        .body(r#"{"channel":"live:bad","data":1,"event":"herald:reset"}"#),
        case(
            "event with newline",
            post.clone(),
            "/v1/publish",
            400,
            "invalid_event",
        )
        .body("{\"channel\":\"live:bad\",\"data\":1,\"event\":\"a\\nb\"}"),
        case(
            "oversized payload",
            post.clone(),
            "/v1/publish",
            413,
            "payload_too_large",
        )
        .body(oversized),
        case(
            "oversized body",
            post.clone(),
            "/v1/publish",
            413,
            "body_too_large",
        )
        .body(huge_body),
        case(
            "batch too large",
            post.clone(),
            "/v1/publish/batch",
            413,
            "batch_too_large",
        )
        .body(big_batch),
        case(
            "empty batch",
            post.clone(),
            "/v1/publish/batch",
            400,
            "empty_batch",
        )
        .body(r#"{"messages":[]}"#),
        case(
            "batch with one bad item",
            post.clone(),
            "/v1/publish/batch",
            400,
            "invalid_channel",
        )
        .body(r#"{"messages":[{"channel":"live:bad","data":1},{"channel":"no spaces","data":2}]}"#),
        case(
            "no api key",
            post.clone(),
            "/v1/publish",
            401,
            "missing_api_key",
        )
        .no_auth()
        .body(r#"{"channel":"live:bad","data":1}"#),
        case(
            "unknown api key",
            post.clone(),
            "/v1/publish",
            401,
            "invalid_api_key",
        )
        .header("authorization", "Bearer not-a-real-key")
        .body(r#"{"channel":"live:bad","data":1}"#),
        case(
            "subscriber token cannot publish",
            post.clone(),
            "/v1/publish",
            401,
            "invalid_api_key",
        )
        .header("authorization", &format!("Bearer {tok}"))
        .body(r#"{"channel":"live:bad","data":1}"#),
        case(
            "wrong method publish",
            get.clone(),
            "/v1/publish",
            405,
            "method_not_allowed",
        ),
        case(
            "wrong method sse",
            Method::DELETE,
            "/v1/sse",
            405,
            "method_not_allowed",
        ),
        case("unknown path", get.clone(), "/v2/nothing", 404, "not_found"),
        case(
            "sse without token",
            get.clone(),
            &sse(""),
            401,
            "missing_token",
        )
        .no_auth(),
        case(
            "sse garbage token",
            get.clone(),
            &sse("&token=abc.def.ghi"),
            401,
            "invalid_token",
        )
        .no_auth(),
        case(
            "sse wrong secret",
            get.clone(),
            &sse(&format!("&token={wrong_secret}")),
            401,
            "invalid_token",
        )
        .no_auth(),
        case(
            "sse expired token",
            get.clone(),
            &sse(&format!("&token={expired}")),
            401,
            "token_expired",
        )
        .no_auth(),
        case(
            "sse channel not allowed",
            get.clone(),
            &format!("/v1/sse?channel=secret:1&token={tok}"),
            403,
            "channel_forbidden",
        )
        .no_auth(),
        case(
            "sse bad channel",
            get.clone(),
            &format!("/v1/sse?channel=a%20b&token={tok}"),
            400,
            "invalid_channel",
        )
        .no_auth(),
        case(
            "sse no channel",
            get.clone(),
            &format!("/v1/sse?token={tok}"),
            400,
            "missing_channel",
        )
        .no_auth(),
        case(
            "garbage last-event-id",
            get.clone(),
            &sse(&format!("&token={tok}")),
            400,
            "invalid_last_event_id",
        )
        .no_auth()
        .header("last-event-id", "not-a-cursor"),
        case(
            "truncated last-event-id",
            get.clone(),
            &sse(&format!("&token={tok}")),
            400,
            "invalid_last_event_id",
        )
        .no_auth()
        .header("last-event-id", truncated),
        case(
            "oversized last-event-id",
            get.clone(),
            &sse(&format!("&token={tok}")),
            400,
            "invalid_last_event_id",
        )
        .no_auth()
        .header("last-event-id", &format!("h1{}", "A".repeat(9000))),
        case(
            "garbage last_event_id query",
            get.clone(),
            &sse(&format!("&token={tok}&last_event_id=h1%21%21")),
            400,
            "invalid_last_event_id",
        )
        .no_auth(),
        case(
            "history bad after",
            get.clone(),
            "/v1/channels/live:bad/history?after=abc",
            400,
            "invalid_query",
        ),
        case(
            "history bad limit",
            get.clone(),
            "/v1/channels/live:bad/history?limit=0",
            400,
            "invalid_query",
        ),
        case(
            "history bad channel",
            get.clone(),
            "/v1/channels/a%20b/history",
            400,
            "invalid_channel",
        ),
    ];
    // No pooling: a refused upload leaves its connection unusable, as it should.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    for c in &cases {
        let mut rb = http.request(c.method.clone(), server.url(&c.path));
        for (k, v) in &c.headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = &c.body {
            rb = rb.body(b.clone());
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        assert_eq!(status, c.status, "{}: status (body {body})", c.name);
        assert_eq!(body["error"]["code"], c.code, "{}: code", c.name);
        assert!(body["error"]["message"].is_string(), "{}: message", c.name);
        assert_eq!(ctype.as_deref(), Some("application/json"), "{}", c.name);
    }
    // Nothing changed: the channel still holds one message and the next seq is 2.
    let h = p.history("live:bad", 0, 10).await?;
    assert_eq!(h.messages.len(), 1);
    assert_eq!(p.publish(&msg("live:bad", 1)).await?.seq, Some(2));
    assert_eq!(server.metric("herald_connections").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_floods_are_refused_and_the_server_survives() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    // Over our limit but within what hyper parses: JSON error.
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..80 {
        req.push_str(&format!("X-Flood-{i}: y\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    let text = raw_request(server.port, &req).await?;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.contains("\"code\":\"headers_too_large\""), "{text}");
    // Far beyond: hyper refuses while parsing.
    let mut req = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..5000 {
        req.push_str(&format!("X-Flood-{i}: {}\r\n", "z".repeat(20)));
    }
    req.push_str("\r\n");
    let text = raw_request(server.port, &req).await.unwrap_or_default();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    let ok = reqwest::get(server.url("/healthz")).await?;
    assert_eq!(ok.status(), 200);
    Ok(())
}

/// Sends a request head a byte every `every` without ever ending it; returns what the server
/// answered and when the connection closed.
async fn dribble(port: u16, every: Duration) -> anyhow::Result<(String, Duration)> {
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /v1/sse?channel=live:a HTTP/1.1\r\n")
        .await?;
    let (mut rd, mut wr) = s.split();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(every);
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => anyhow::bail!("still open after 10 s"),
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => { let _ = wr.write_all(b"x").await; }
        }
    }
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_flood_is_cut_off_at_the_head_timeout_cheaply() -> anyhow::Result<()> {
    const CONNS: usize = 200;
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_HEAD_TIMEOUT_SECS", "1"),
    )?;
    let before = herald_bench::procstat::cpu_seconds(server.pid())?;
    let tasks: Vec<_> = (0..CONNS)
        .map(|_| tokio::spawn(dribble(server.port, Duration::from_millis(5))))
        .collect();
    // The server keeps answering others meanwhile.
    let ok = reqwest::get(server.url("/healthz")).await?;
    assert_eq!(ok.status(), 200);
    for t in tasks {
        let (answer, took) = t.await??;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        assert!(
            took < Duration::from_secs(4),
            "closed {took:?} after the first byte, timeout 1 s"
        );
    }
    let used = herald_bench::procstat::cpu_seconds(server.pid())? - before;
    // 200 clients each sending ~200 single bytes: linear work is a few ms per client.
    assert!(used < 1.0, "the flood cost the server {used:.2} CPU-s");
    Ok(())
}

async fn raw_request(port: u16, req: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    // The server may answer and close before reading everything we send.
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
