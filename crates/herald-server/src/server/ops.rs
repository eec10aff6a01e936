//! `/healthz`, `/readyz` and `/metrics`.

use super::body::ResponseBody;
use super::metrics::metric;
use super::State;
use http::{HeaderValue, Response, StatusCode};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub fn healthz() -> Response<ResponseBody> {
    json_status(StatusCode::OK, r#"{"status":"ok"}"#)
}

/// Ready when not shutting down, the store answers promptly, the fabric is connected, and
/// (a cluster dispatcher) it has taken its share of partition leases once.
pub async fn readyz(state: &State) -> Response<ResponseBody> {
    if state.shutting_down.load(Ordering::Acquire) {
        return json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"ready":false,"reason":"shutting_down"}"#,
        );
    }
    let probe = state.store.channel_meta("herald:readyz");
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) if !state.fabric.is_ready() => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"ready":false,"reason":"fabric_unavailable"}"#,
        ),
        Ok(Ok(_)) if state.dispatcher.as_ref().is_some_and(|d| !d.started()) => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"ready":false,"reason":"acquiring_leases"}"#,
        ),
        Ok(Ok(_)) => json_status(StatusCode::OK, r#"{"ready":true}"#),
        _ => json_status(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"ready":false,"reason":"store_unavailable"}"#,
        ),
    }
}

fn json_status(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn metrics(state: &State) -> Response<ResponseBody> {
    let n = state.node.as_ref().map(|n| n.stats()).unwrap_or_default();
    let d = state
        .dispatcher
        .as_ref()
        .map(|d| d.stats())
        .unwrap_or_default();
    let mut out = String::with_capacity(4096);
    let g = "gauge";
    let c = "counter";
    metric(
        &mut out,
        "herald_connections",
        g,
        "Open SSE connections.",
        n.connections,
    );
    metric(
        &mut out,
        "herald_subscriptions",
        g,
        "Channel subscriptions of open connections.",
        n.subscriptions,
    );
    metric(
        &mut out,
        "herald_channels",
        g,
        "Channels this node tracks.",
        n.channels,
    );
    metric(
        &mut out,
        "herald_connections_total",
        c,
        "SSE connections accepted.",
        n.connections_total,
    );
    metric(
        &mut out,
        "herald_connections_rejected_total",
        c,
        "SSE connections refused at the connection limit.",
        n.rejected_connections,
    );
    metric(
        &mut out,
        "herald_publishes_total",
        c,
        "Reliable messages durably stored.",
        d.published_reliable,
    );
    metric(
        &mut out,
        "herald_publishes_ephemeral_total",
        c,
        "Ephemeral messages published.",
        d.published_ephemeral,
    );
    metric(
        &mut out,
        "herald_publish_duplicates_total",
        c,
        "Publishes answered from an idempotency key.",
        d.duplicates,
    );
    metric(
        &mut out,
        "herald_commits_total",
        c,
        "Group commits (one fsync each).",
        d.commits,
    );
    metric(
        &mut out,
        "herald_commit_failures_total",
        c,
        "Group commits that failed.",
        d.commit_failures,
    );
    metric(
        &mut out,
        "herald_trimmed_total",
        c,
        "Messages removed by retention.",
        d.trimmed,
    );
    metric(
        &mut out,
        "herald_deliveries_total",
        c,
        "Events written to connections.",
        n.deliveries,
    );
    metric(
        &mut out,
        "herald_replays_ring_total",
        c,
        "Resumes served from the in-memory ring.",
        n.replays_ring,
    );
    metric(
        &mut out,
        "herald_replays_store_total",
        c,
        "Resumes that read the store.",
        n.replays_store,
    );
    metric(
        &mut out,
        "herald_replayed_messages_total",
        c,
        "Messages replayed from the store.",
        n.replayed_messages,
    );
    metric(
        &mut out,
        "herald_resets_total",
        c,
        "herald:reset events sent.",
        n.resets,
    );
    metric(
        &mut out,
        "herald_ephemeral_dropped_total",
        c,
        "Ephemeral messages dropped for full connection queues.",
        n.ephemeral_dropped,
    );
    metric(
        &mut out,
        "herald_ephemeral_evicted_total",
        c,
        "Ephemeral messages that pushed out the oldest queued one (drop_oldest, conflate).",
        n.ephemeral_evicted,
    );
    metric(
        &mut out,
        "herald_ephemeral_disconnects_total",
        c,
        "Connections closed for a full queue by an ephemeral message (policy disconnect).",
        n.ephemeral_disconnects,
    );
    metric(
        &mut out,
        "herald_ephemeral_conflated_total",
        c,
        "Ephemeral messages replaced by a newer one with the same key.",
        n.ephemeral_conflated,
    );
    metric(
        &mut out,
        "herald_slow_consumer_disconnects_total",
        c,
        "Connections closed because their queue overflowed.",
        n.slow_disconnects,
    );
    metric(
        &mut out,
        "herald_stalled_disconnects_total",
        c,
        "Connections closed because the peer stopped reading.",
        n.stalled_disconnects,
    );
    metric(
        &mut out,
        "herald_gap_disconnects_total",
        c,
        "Connections closed to resume after a missed message.",
        n.gap_disconnects,
    );
    metric(
        &mut out,
        "herald_gap_repairs_total",
        c,
        "Fabric gaps repaired from the store.",
        n.gap_repairs,
    );
    metric(
        &mut out,
        "herald_gap_skips_total",
        c,
        "Fabric gaps stepped over without a store read (repairs saturated); connections resume.",
        n.gap_skips,
    );
    let refused = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::Relaxed);
    metric(
        &mut out,
        "herald_ephemeral_shed_total",
        c,
        "Ephemeral messages dropped before fan-out while the node was behind (reliable ones go first).",
        n.ephemeral_shed,
    );
    metric(
        &mut out,
        "herald_streams_refused_rate_total",
        c,
        "Streams refused (503 overloaded) over HERALD_MAX_STREAM_OPENS_PER_SEC.",
        refused(&state.admission.refused_stream_rate),
    );
    metric(
        &mut out,
        "herald_sockets_open",
        g,
        "Client connections open, of any kind (capped by HERALD_MAX_SOCKETS).",
        state.admission.sockets.open() as u64,
    );
    metric(
        &mut out,
        "herald_sockets_refused_total",
        c,
        "Connections refused (503) at HERALD_MAX_SOCKETS.",
        refused(&state.admission.refused_sockets),
    );
    metric(
        &mut out,
        "herald_connections_refused_per_ip_total",
        c,
        "Connections refused (429) over HERALD_MAX_CONNS_PER_IP.",
        refused(&state.admission.refused_per_ip),
    );
    metric(
        &mut out,
        "herald_publishes_rate_limited_total",
        c,
        "Publish requests refused (429 rate_limited) by a key's or namespace's rate.",
        refused(&state.admission.refused_publish_rate),
    );
    metric(
        &mut out,
        "herald_drain_reconnects_total",
        c,
        "Streams asked to reconnect elsewhere (herald:reconnect) by a drain.",
        n.drain_reconnects,
    );
    metric(
        &mut out,
        "herald_lifetime_reconnects_total",
        c,
        "Streams asked to reconnect (herald:reconnect) at their maximum lifetime.",
        n.lifetime_reconnects,
    );
    metric(
        &mut out,
        "herald_presence_reports_total",
        c,
        "Presence reports this node sent to the cluster (at most one a tick).",
        n.presence_reports,
    );
    metric(
        &mut out,
        "herald_presence_events_total",
        c,
        "herald:occupancy, herald:join and herald:leave events fanned out.",
        n.presence_events,
    );
    metric(
        &mut out,
        "herald_resync_repairs_total",
        c,
        "Channels caught up from the store after the fabric reported a possible loss.",
        n.resync_repairs,
    );
    metric(
        &mut out,
        "herald_shared_store_reads_total",
        c,
        "Store reads answered by an identical read already in flight (single-flight), or a resume's channel meta by a read completed within the last second.",
        n.shared_reads,
    );
    metric(
        &mut out,
        "herald_store_meta_reads_total",
        c,
        "Channel meta reads (epoch, first and last seq) sent to the store by this node's streams.",
        n.store_meta_reads,
    );
    metric(
        &mut out,
        "herald_store_range_reads_total",
        c,
        "Message range reads (replays, gap repairs, resyncs) sent to the store by this node.",
        n.store_range_reads,
    );
    metric(
        &mut out,
        "herald_channel_claims_total",
        c,
        "Channels taken over (sealed, then read) under a new partition lease.",
        d.claims,
    );
    metric(
        &mut out,
        "herald_fenced_writes_total",
        c,
        "Writes not acknowledged because this dispatcher's lease ended while they were in flight.",
        d.fenced,
    );
    if let Some(q) = state.store.cql_counts() {
        cql_metrics(&mut out, q);
    }
    metric(
        &mut out,
        "herald_fabric_ready",
        g,
        "1 when the fabric can carry messages.",
        i64::from(state.fabric.is_ready()),
    );
    state.publish_latency.render(
        &mut out,
        "herald_publish_duration_seconds",
        "Publish request latency until durable.",
    );
    state.tracing.journal.latency.render(&mut out);
    metric(
        &mut out,
        "herald_traces_held",
        g,
        "Traced messages this process remembers (HERALD_TRACE_KEEP at most).",
        state.tracing.journal.len(),
    );
    if let Some(otlp) = &state.tracing.otlp {
        use std::sync::atomic::Ordering::Relaxed;
        metric(
            &mut out,
            "herald_otlp_spans_exported_total",
            c,
            "Spans of traced messages the OpenTelemetry collector took.",
            otlp.spans_exported.load(Relaxed),
        );
        metric(
            &mut out,
            "herald_otlp_spans_failed_total",
            c,
            "Spans dropped because the collector was unreachable, refused them or timed out.",
            otlp.spans_failed.load(Relaxed),
        );
    }
    let mut resp = Response::new(ResponseBody::full(out));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// What this process asked of ScyllaDB / Cassandra, by kind of request.
fn cql_metrics(out: &mut String, q: herald_store::CqlCounts) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP herald_cql_requests_total CQL requests sent to the store, by kind \
         (lwt: conditional, one Paxos round each)."
    );
    let _ = writeln!(out, "# TYPE herald_cql_requests_total counter");
    for (kind, v) in [
        ("write", q.write_requests),
        ("lwt", q.lwt_requests),
        ("read", q.read_requests),
    ] {
        let _ = writeln!(out, "herald_cql_requests_total{{kind=\"{kind}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP herald_cql_statements_total Statements inside those requests (a batch of n counts n)."
    );
    let _ = writeln!(out, "# TYPE herald_cql_statements_total counter");
    for (kind, v) in [("write", q.write_statements), ("lwt", q.lwt_statements)] {
        let _ = writeln!(out, "herald_cql_statements_total{{kind=\"{kind}\"}} {v}");
    }
}
