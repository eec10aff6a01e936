//! OpenTelemetry on `herald serve`: traced messages go to a real Jaeger over OTLP as a
//! `herald.publish` span (a child of the publisher's `traceparent`, or the root when Herald
//! began the trace) and a `herald.deliver` span under it, with every hop as an event.

use crate::common::*;
use crate::jaeger::{Jaeger, Trace};
use anyhow::{ensure, Context};
use herald_client::Publish;
use serde_json::json;
use std::time::Duration;

/// A publisher's span: a trace id and span id of its own.
fn backend_span() -> (String, String) {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| format!("{:x}", rand::random::<u8>() % 16))
            .collect()
    };
    (format!("1{}", hex(31)), format!("2{}", hex(15)))
}

/// The publish span and the delivery span once the delivery wrote to `written` sockets.
fn complete(written: i64) -> impl Fn(&Trace) -> bool {
    move |t: &Trace| {
        t.named("herald.publish").len() == 1
            && t.named("herald.deliver")
                .iter()
                .any(|s| s.tag("herald.written").and_then(|v| v.as_i64()) == Some(written))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_and_continued_traces_reach_jaeger_with_the_right_parents() -> anyhow::Result<()> {
    let test = "sampled_and_continued_traces_reach_jaeger_with_the_right_parents";
    let Some(jaeger) = Jaeger::start(test).await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let opts = Opts::default()
        .env("HERALD_OTLP_ENDPOINT", jaeger.otlp.clone())
        .env("HERALD_OTLP_DELAY_MS", "200")
        .env("HERALD_TRACE_SAMPLE", "1");
    let server = Server::start(dir.path(), &opts)?;
    let publisher = server.publisher();
    let mut sub = server
        .subscriber(&["live:*"])
        .subscribe(&["live:otel"], None)
        .await?;
    publisher
        .publish(&Publish::new("live:otel", json!({ "n": 0 })))
        .await?;
    next_event(&mut sub, WAIT).await?;

    // A backend's trace continues into Herald.
    let (trace_id, backend) = backend_span();
    let mut m = Publish::new("live:otel", json!({ "n": 1 }));
    m.traceparent = Some(format!("00-{trace_id}-{backend}-01"));
    let r = publisher.publish(&m).await?;
    ensure!(r.trace_id.as_deref() == Some(trace_id.as_str()), "{r:?}");
    let seq = r.seq.context("seq")?;
    next_event(&mut sub, WAIT).await?;
    let t = jaeger
        .trace_until(&trace_id, Duration::from_secs(20), complete(1))
        .await?;
    let publish = t.named("herald.publish")[0];
    let deliver = t.named("herald.deliver")[0];
    assert_eq!(publish.parent(), Some(backend.as_str()), "{t:#?}");
    assert_eq!(deliver.parent(), Some(publish.span_id.as_str()), "{t:#?}");
    assert_eq!(publish.tag("herald.channel"), Some(&json!("live:otel")));
    assert_eq!(publish.tag("herald.seq"), Some(&json!(seq)));
    assert_eq!(publish.events(), ["accepted", "stored", "fabric"], "{t:#?}");
    assert_eq!(
        deliver.events(),
        [
            "received",
            "queued_first",
            "queued_last",
            "written_first",
            "written_last"
        ],
        "{t:#?}"
    );
    assert_eq!(deliver.tag("herald.queued"), Some(&json!(1)));
    ensure!(
        publish.start_time <= deliver.start_time,
        "delivered before published: {t:#?}"
    );
    let process = &t.processes[&publish.process_id];
    assert_eq!(process.service_name, "herald");
    assert_eq!(t.instance(publish).as_deref(), Some("serve"));

    // A sampled publish: Herald begins the trace, its publish span is the root.
    let r = publisher
        .publish(&Publish::new("live:otel", json!({ "n": 2 })))
        .await?;
    let sampled = r.trace_id.context("sampled publishes are traced")?;
    next_event(&mut sub, WAIT).await?;
    let t = jaeger
        .trace_until(&sampled, Duration::from_secs(20), complete(1))
        .await?;
    let publish = t.named("herald.publish")[0];
    assert_eq!(publish.parent(), None, "{t:#?}");
    assert_eq!(
        t.named("herald.deliver")[0].parent(),
        Some(publish.span_id.as_str())
    );

    // A publisher whose tracer did not sample its span: nothing is traced or sent.
    let (quiet, quiet_span) = backend_span();
    let mut m = Publish::new("live:otel", json!({ "n": 3 }));
    m.traceparent = Some(format!("00-{quiet}-{quiet_span}-00"));
    let r = publisher.publish(&m).await?;
    ensure!(
        r.trace_id.is_none(),
        "an unsampled parent is respected: {r:?}"
    );

    let exported = server.metric("herald_otlp_spans_exported_total").await?;
    ensure!(exported >= 4.0, "{exported} spans exported");
    assert_eq!(server.metric("herald_otlp_spans_failed_total").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_costs_dropped_spans_not_publishes() -> anyhow::Result<()> {
    // Nothing listens on the port: every export fails, publishing goes on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir = tempfile::tempdir()?;
    let opts = Opts::default()
        .env("HERALD_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("HERALD_OTLP_DELAY_MS", "0");
    let server = Server::start(dir.path(), &opts)?;
    let publisher = server.publisher();
    for n in 0..3 {
        let mut m = Publish::new("live:lost", json!({ "n": n }));
        m.trace = true;
        publisher.publish(&m).await?;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while server.metric("herald_otlp_spans_failed_total").await? < 3.0 {
        ensure!(
            std::time::Instant::now() < deadline,
            "no failed export counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.metric("herald_otlp_spans_exported_total").await?,
        0.0
    );
    Ok(())
}
