//! Subscribe: multi-channel streams, cursors, resume, resets, replay, headers, CORS.

use crate::common::*;
use futures_util::StreamExt;
use herald_proto::{Cursor, Position, SseParser};
use std::collections::HashMap;
use std::time::Duration;

fn seqs_by_channel(events: &[herald_proto::SseEvent]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for ev in events {
        let (c, s) = pos(ev);
        out.entry(c).or_default().push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channels_one_stream_then_resume_without_gap_or_duplicate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    let sub_client = server.subscriber(&["live:*"]);
    let mut sub = sub_client.subscribe(&["live:a", "live:b"], None).await?;
    // Live subscribers start at the head: wait until attached by publishing a probe.
    for n in 0..3 {
        let mut m = msg("live:a", n);
        m.event = Some("comment".into());
        publisher.publish(&m).await?;
        publisher.publish(&msg("live:b", n)).await?;
    }
    let first = take(&mut sub, 6, WAIT).await?;
    let by = seqs_by_channel(&first);
    assert_eq!(by["live:a"], vec![1, 2, 3]);
    assert_eq!(by["live:b"], vec![1, 2, 3]);
    assert!(
        first.iter().all(|e| e.id.is_some()),
        "reliable events carry id:"
    );
    assert!(first
        .iter()
        .filter(|e| pos(e).0 == "live:a")
        .all(|e| e.event == "comment"));
    assert!(first
        .iter()
        .filter(|e| pos(e).0 == "live:b")
        .all(|e| e.event == "message"));
    let cursor = sub.last_event_id().expect("cursor").to_owned();
    drop(sub);

    publish_n(&publisher, "live:a", 2).await?;
    publish_n(&publisher, "live:b", 2).await?;
    let mut resumed = sub_client
        .subscribe(&["live:a", "live:b"], Some(&cursor))
        .await?;
    let missed = take(&mut resumed, 4, WAIT).await?;
    let by = seqs_by_channel(&missed);
    assert_eq!(by["live:a"], vec![4, 5]);
    assert_eq!(by["live:b"], vec![4, 5]);
    // Nothing else was queued: the next event is the next live one.
    publisher.publish(&msg("live:b", 99)).await?;
    let next = next_event(&mut resumed, WAIT).await?;
    assert_eq!(pos(&next), ("live:b".to_owned(), 6));
    Ok(())
}

/// Opens a stream with reqwest and returns the raw text read until `until` appears.
async fn raw_stream(
    url: &str,
    headers: &[(&str, &str)],
    until: &str,
) -> anyhow::Result<(reqwest::header::HeaderMap, String)> {
    let client = reqwest::Client::new();
    let mut rb = client.get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await?;
    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
    let headers = resp.headers().clone();
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !text.contains(until) {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk?)),
            Ok(None) => break,
            Err(_) => anyhow::bail!("timed out; got {text:?}"),
        }
    }
    Ok((headers, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connect_resumes_from_query_and_headers_are_right() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_HEARTBEAT_SECS", "1"),
    )?;
    let publisher = server.publisher();
    publish_n(&publisher, "live:q", 3).await?;
    let history = publisher.history("live:q", 0, 10).await?;
    let mut c = Cursor::default();
    c.set(
        "live:q",
        Position {
            epoch: history.epoch,
            seq: 1,
        },
    );
    let url = server.url(&format!(
        "/v1/sse?channel=live:q&token={}&last_event_id={}",
        token("u1", &["live:*"]),
        c.encode()
    ));
    let (headers, text) = raw_stream(&url, &[], ": hb").await?;
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let events = SseParser::new().push(text.as_bytes());
    let seqs: Vec<u64> = events.iter().map(|e| pos(e).1).collect();
    assert_eq!(seqs, vec![2, 3], "resumed after seq 1 from ?last_event_id=");
    let retry_line = text
        .lines()
        .find(|l| l.starts_with("retry: "))
        .expect("retry: sent");
    let retry: u64 = retry_line[7..].trim().parse()?;
    assert!(
        (1000..3000).contains(&retry),
        "retry {retry} within base + jitter"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_stays_valid_when_channel_list_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    publish_n(&publisher, "live:x", 1).await?;
    let sc = server.subscriber(&["live:*"]);
    let mut c = Cursor::default();
    c.set("live:x", Position::default());
    let mut sub = sc.subscribe(&["live:x"], Some(&c.encode())).await?;
    let ev = next_event(&mut sub, WAIT).await?;
    assert_eq!(pos(&ev).1, 1);
    let cursor = ev.id.clone().expect("id");
    drop(sub);
    publish_n(&publisher, "live:x", 1).await?;
    publish_n(&publisher, "live:y", 2).await?; // before the new stream: not replayed
    let mut sub = sc.subscribe(&["live:y", "live:x"], Some(&cursor)).await?;
    let ev = next_event(&mut sub, WAIT).await?;
    assert_eq!(pos(&ev), ("live:x".to_owned(), 2));
    publisher.publish(&msg("live:y", 7)).await?;
    let ev = next_event(&mut sub, WAIT).await?;
    assert_eq!(
        pos(&ev),
        ("live:y".to_owned(), 3),
        "new channel starts live"
    );
    // The new cursor names both channels.
    let decoded = Cursor::decode(ev.id.as_deref().unwrap_or_default())?;
    assert_eq!(decoded.get("live:x").map(|p| p.seq), Some(2));
    assert_eq!(decoded.get("live:y").map(|p| p.seq), Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_position_left_retention_then_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = Opts::default()
        .env("HERALD_RETENTION_SWEEP_SECS", "1")
        .config("[namespaces.short]\nretention_count = 3\n");
    let server = Server::start(dir.path(), &opts)?;
    let publisher = server.publisher();
    publish_n(&publisher, "short:r", 1).await?;
    let sc = server.subscriber(&["short:*"]);
    let mut c = Cursor::default();
    c.set("short:r", Position::default());
    let mut sub = sc.subscribe(&["short:r"], Some(&c.encode())).await?;
    let cursor = next_event(&mut sub, WAIT).await?.id.expect("id");
    let last_meta_read = std::time::Instant::now();
    drop(sub);
    publish_n(&publisher, "short:r", 10).await?;
    eventually(WAIT, "retention trims short:r", || async {
        matches!(publisher.history("short:r", 0, 10).await, Ok(h) if h.first_seq == 9)
    })
    .await?;
    // A resume within a second of the node's last read of the channel may be judged on that
    // read (docs/ARCHITECTURE.md, Join): the retention edge is then up to a second old and
    // the node's ring serves what was trimmed meanwhile. This test is about the edge itself.
    tokio::time::sleep_until((last_meta_read + Duration::from_millis(1100)).into()).await;
    let mut sub = sc.subscribe(&["short:r"], Some(&cursor)).await?;
    let reset = next_event(&mut sub, WAIT).await?;
    assert_eq!(reset.event, "herald:reset");
    let data = envelope(&reset);
    assert_eq!(data["channel"], "short:r");
    assert_eq!(data["reason"], "retention");
    assert_eq!(data["seq"], 11);
    let reset_id = reset.id.clone().expect("reset carries id");
    publisher.publish(&msg("short:r", 1)).await?;
    let live = next_event(&mut sub, WAIT).await?;
    assert_eq!(pos(&live).1, 12);
    drop(sub);
    // Resuming from the reset's id is not reset again.
    let mut sub = sc.subscribe(&["short:r"], Some(&reset_id)).await?;
    let ev = next_event(&mut sub, WAIT).await?;
    assert_eq!((ev.event.as_str(), pos(&ev).1), ("message", 12));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_when_cursor_is_from_another_epoch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    publish_n(&server.publisher(), "live:e", 2).await?;
    let mut c = Cursor::default();
    c.set("live:e", Position { epoch: 42, seq: 1 });
    let sc = server.subscriber(&["live:*"]);
    let mut sub = sc.subscribe(&["live:e"], Some(&c.encode())).await?;
    let ev = next_event(&mut sub, WAIT).await?;
    assert_eq!(ev.event, "herald:reset");
    assert_eq!(envelope(&ev)["reason"], "epoch");
    assert_eq!(envelope(&ev)["seq"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_store_beyond_the_ring_and_ring_when_close() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default().env("HERALD_RING_CAP", "4"))?;
    let publisher = server.publisher();
    let sc = server.subscriber(&["live:*"]);
    // A live subscriber keeps the channel's ring warm on this node.
    let mut watcher = sc.subscribe(&["live:r"], None).await?;
    publish_n(&publisher, "live:r", 1).await?;
    let cursor = next_event(&mut watcher, WAIT).await?.id.expect("id");
    publish_n(&publisher, "live:r", 50).await?;
    take(&mut watcher, 50, WAIT).await?;

    let mut far = sc.subscribe(&["live:r"], Some(&cursor)).await?;
    let got = take(&mut far, 50, WAIT).await?;
    assert_eq!(
        got.iter().map(|e| pos(e).1).collect::<Vec<_>>(),
        (2..=51).collect::<Vec<_>>()
    );
    assert!(server.metric("herald_replays_store_total").await? >= 1.0);
    let near_cursor = got[47].id.clone().expect("id"); // seq 49: 2 behind, inside the ring
    let mut near = sc.subscribe(&["live:r"], Some(&near_cursor)).await?;
    let got = take(&mut near, 2, WAIT).await?;
    assert_eq!(
        got.iter().map(|e| pos(e).1).collect::<Vec<_>>(),
        vec![50, 51]
    );
    assert!(server.metric("herald_replays_ring_total").await? >= 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_events_have_no_id_and_skip_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    let url = server.url(&format!(
        "/v1/sse?channel=live:eph&token={}",
        token("u1", &["live:*"])
    ));
    let reader = tokio::spawn(async move { raw_stream(&url, &[], "\"n\":2").await });
    // Publish until the stream has joined (the first ephemeral may precede the join).
    eventually(WAIT, "stream joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    let mut m = msg("live:eph", 1);
    m.ephemeral = true;
    let r = publisher.publish(&m).await?;
    assert_eq!((r.epoch, r.seq), (None, None));
    publish_n(&publisher, "live:eph", 3).await?;
    let (_, text) = reader.await??;
    let block = text
        .split("\n\n")
        .find(|b| b.contains("\"n\":1") && !b.contains("\"seq\""))
        .expect("ephemeral event present");
    assert!(
        !block.contains("id:"),
        "ephemeral event has no id: {block:?}"
    );
    let h = publisher.history("live:eph", 0, 10).await?;
    assert_eq!(h.messages.len(), 3, "ephemeral message not stored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_listed_origin_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env(
            "HERALD_CORS_ORIGINS",
            "http://app.example,http://admin.example",
        ),
    )?;
    let http = reqwest::Client::new();
    let pre = http
        .request(reqwest::Method::OPTIONS, server.url("/v1/publish"))
        .header("origin", "http://admin.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await?;
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://admin.example"
    );
    assert!(pre.headers()["access-control-allow-methods"]
        .to_str()?
        .contains("POST"));
    assert!(pre.headers()["access-control-allow-headers"]
        .to_str()?
        .to_ascii_lowercase()
        .contains("authorization"));
    let evil = http
        .request(reqwest::Method::OPTIONS, server.url("/v1/publish"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await?;
    assert_eq!(evil.status(), 403);
    assert!(evil.headers().get("access-control-allow-origin").is_none());
    let url = server.url(&format!(
        "/v1/sse?channel=live:c&token={}",
        token("u", &["live:*"])
    ));
    let (headers, _) = raw_stream(&url, &[("origin", "http://app.example")], "retry:").await?;
    assert_eq!(headers["access-control-allow-origin"], "http://app.example");
    assert_eq!(headers["access-control-allow-credentials"], "true");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_any_origin_reads_without_the_cookie() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default().env("HERALD_CORS_ORIGINS", "*"))?;
    // Any page may read what its own token allows, but never with credentials: a browser
    // refuses a credentialed read answered with `*`, so the cookie cannot be used across sites.
    let url = server.url(&format!(
        "/v1/sse?channel=live:c&token={}",
        token("u", &["live:*"])
    ));
    let (headers, _) = raw_stream(&url, &[("origin", "http://evil.example")], "retry:").await?;
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(!headers.contains_key("access-control-allow-credentials"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_answers_503() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_CONNECTIONS", "2"),
    )?;
    let sc = server.subscriber(&["live:*"]);
    let _a = sc.subscribe(&["live:1"], None).await?;
    let _b = sc.subscribe(&["live:1"], None).await?;
    let err = sc
        .subscribe(&["live:1"], None)
        .await
        .expect_err("third stream refused");
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some("too_many_connections"));
    let refused = reqwest::get(server.url(&format!(
        "/v1/sse?channel=live:1&token={}",
        token("u1", &["live:*"])
    )))
    .await?;
    assert_eq!(refused.status().as_u16(), 503);
    assert!(
        refused.headers().get("retry-after").is_some(),
        "Retry-After on 503"
    );
    // The API still answers while streams are refused.
    server.publisher().publish(&msg("live:1", 1)).await?;
    let health = reqwest::get(server.url("/healthz")).await?.status();
    assert_eq!(health.as_u16(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_follows_at_most_its_channel_cap() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(
        dir.path(),
        &Opts::default().env("HERALD_MAX_NODE_CHANNELS", "2"),
    )?;
    // A wildcard token may name channels at will; the node follows two at most.
    let sc = server.subscriber(&["live:*"]);
    let _a = sc.subscribe(&["live:a"], None).await?;
    let _b = sc.subscribe(&["live:b", "live:a"], None).await?;
    for channels in [&["live:c"][..], &["live:a", "live:c"][..]] {
        let err = sc
            .subscribe(channels, None)
            .await
            .expect_err("a stream adding a channel past the cap");
        assert_eq!(
            (err.status(), err.code()),
            (Some(503), Some("too_many_node_channels")),
            "{channels:?}"
        );
    }
    assert_eq!(
        server.metric("herald_channels").await?,
        2.0,
        "nothing added"
    );
    // Channels already followed still take streams.
    let _c = sc.subscribe(&["live:a", "live:b"], None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_and_resumes_from_its_cursor() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default().env("HERALD_QUEUE_CAP", "8"))?;
    let publisher = server.publisher();
    let t = token("u1", &["live:*"]);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    let req = format!(
        "GET /v1/sse?channel=live:slow&token={t} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await?;
    eventually(WAIT, "stream joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    // Never read: ~32 MB of events fill the socket buffers, then the queue overflows.
    let blob = "x".repeat(60_000);
    for _ in 0..60 {
        let batch: Vec<_> = (0..10)
            .map(|_| herald_client::Publish::new("live:slow", serde_json::json!(blob)))
            .collect();
        publisher.publish_batch(&batch).await?;
        if server
            .metric("herald_slow_consumer_disconnects_total")
            .await?
            >= 1.0
        {
            break;
        }
    }
    assert!(
        server
            .metric("herald_slow_consumer_disconnects_total")
            .await?
            >= 1.0
    );
    eventually(WAIT, "slow connection released", || async {
        server.metric("herald_connections").await.unwrap_or(1.0) == 0.0
    })
    .await?;
    // What it did receive parses into whole events with ids; resume from the last one.
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, sock.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    let mut parser = SseParser::new();
    let events = parser.push(body.as_bytes());
    let last = events.last().map(|e| (e.id.clone(), pos(e).1));
    let (cursor, seen) = match last {
        Some((Some(id), seq)) => (Some(id), seq),
        _ => (None, 0),
    };
    let total = publisher.history("live:slow", 0, 1).await?.last_seq;
    assert!(seen < total, "the slow reader was cut off before the end");
    let mut c = Cursor::default();
    c.set("live:slow", Position::default());
    let from = cursor.unwrap_or_else(|| c.encode());
    let sc = server.subscriber(&["live:*"]);
    let mut sub = sc.subscribe(&["live:slow"], Some(&from)).await?;
    let rest = take(&mut sub, (total - seen) as usize, Duration::from_secs(30)).await?;
    assert_eq!(
        rest.iter().map(|e| pos(e).1).collect::<Vec<_>>(),
        (seen + 1..=total).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_conformant_eventsource_client_receives_and_tracks_ids() -> anyhow::Result<()> {
    use es::Client as _;
    use eventsource_client as es;
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    let url = server.url("/v1/sse?channel=live:esc&channel=live:esd");
    let client = es::ClientBuilder::for_url(&url)?
        .header(
            "Authorization",
            &format!("Bearer {}", token("u1", &["live:*"])),
        )?
        .build_http();
    // The client connects only while polled: read it on a task of its own.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let reader = tokio::spawn(async move {
        let mut stream = client.stream();
        while let Some(item) = stream.next().await {
            let done = match item {
                Ok(es::SSE::Event(ev)) => tx.send(Ok(ev)).await.is_err(),
                Ok(_) => false,
                Err(e) => tx.send(Err(format!("{e:?}"))).await.is_err(),
            };
            if done {
                break;
            }
        }
    });
    eventually(WAIT, "stream joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 2.0
    })
    .await?;
    let mut m = msg("live:esc", 1);
    m.event = Some("gift".into());
    publisher.publish(&m).await?;
    publisher.publish(&msg("live:esd", 2)).await?;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 2 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(ev))) => got.push(ev),
            Ok(Some(Err(e))) => anyhow::bail!("eventsource error: {e}"),
            Ok(None) => anyhow::bail!("stream ended"),
            Err(_) => anyhow::bail!("timed out with {} events", got.len()),
        }
    }
    reader.abort();
    assert_eq!(got[0].event_type, "gift");
    assert_eq!(got[1].event_type, "message");
    let ids: Vec<Option<String>> = got.iter().map(|e| e.id.clone()).collect();
    assert!(ids.iter().all(Option::is_some));
    let last = Cursor::decode(ids[1].as_deref().unwrap_or_default())?;
    assert_eq!(last.get("live:esc").map(|p| p.seq), Some(1));
    assert_eq!(last.get("live:esd").map(|p| p.seq), Some(1));
    let data: serde_json::Value = serde_json::from_str(&got[0].data)?;
    assert_eq!(data["data"]["n"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_on_a_keep_alive_connection_after_another_request() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    // First a plain request (served by the HTTP stack), then a stream on the same connection.
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 4096];
    let mut text = String::new();
    while !text.contains("\"status\":\"ok\"") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let t = token("u1", &["live:*"]);
    sock.write_all(
        format!("GET /v1/sse?channel=live:ka&token={t} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .await?;
    eventually(WAIT, "stream joined", || async {
        server.metric("herald_subscriptions").await.unwrap_or(0.0) >= 1.0
    })
    .await?;
    server.publisher().publish(&msg("live:ka", 5)).await?;
    let mut text = String::new();
    while !text.contains("\"n\":5") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "closed early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("text/event-stream"));
    assert!(text.contains("\"seq\":1"));
    Ok(())
}

/// A stream names where each channel starts (an `id:` block with no event) before anything
/// is published, so a client whose stream drops before its first event resumes from there
/// instead of starting live again and missing what was published meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_before_its_first_event_resumes_from_its_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), &Opts::default())?;
    let publisher = server.publisher();
    publish_n(&publisher, "live:s", 2).await?;
    let resp = reqwest::Client::new()
        .get(server.url("/v1/sse?channel=live:s&channel=live:never"))
        .bearer_auth(token("u1", &["live:*"]))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while parser.last_event_id().is_none() {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended before an id:"))??;
        assert!(parser.push(&chunk).is_empty(), "no event is dispatched");
    }
    let start = parser
        .last_event_id()
        .map(str::to_owned)
        .unwrap_or_default();
    let cursor = Cursor::decode(&start)?;
    assert_eq!(
        cursor
            .get_hash(herald_proto::channel_hash("live:s"))
            .map(|p| p.seq),
        Some(2),
        "starts after what was there"
    );
    assert_eq!(
        cursor.get_hash(herald_proto::channel_hash("live:never")),
        Some(Position::default()),
        "a channel never published starts at its beginning"
    );
    drop(body);

    publish_n(&publisher, "live:s", 1).await?;
    publish_n(&publisher, "live:never", 1).await?;
    let mut resumed = server
        .subscriber(&["live:*"])
        .subscribe(&["live:s", "live:never"], Some(&start))
        .await?;
    let got = take(&mut resumed, 2, WAIT).await?;
    let by = seqs_by_channel(&got);
    assert_eq!(by["live:s"], vec![3]);
    assert_eq!(by["live:never"], vec![1]);
    Ok(())
}
