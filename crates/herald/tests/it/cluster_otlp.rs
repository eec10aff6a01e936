//! OpenTelemetry on the cluster: a publish carrying a backend's `traceparent`, taken by one
//! dispatcher for a channel another holds, reaches a real Jaeger as one trace: the taking
//! dispatcher's `herald.publish` under the backend's span, the owner's `herald.publish`
//! under it, and each node's `herald.deliver` under the owner's.

use crate::cluster_support::*;
use crate::common::take;
use crate::jaeger::{Jaeger, Span, Trace};
use anyhow::{ensure, Context};
use herald_client::Publish;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// The chain of publish spans from the backend's span to the one the nodes hang off,
/// once every node's delivery wrote its one connection.
fn chain<'a>(t: &'a Trace, backend: &str, nodes: usize) -> Option<(Vec<&'a Span>, Vec<&'a Span>)> {
    let delivers: Vec<&Span> = t
        .named("herald.deliver")
        .into_iter()
        .filter(|s| s.tag("herald.written").and_then(|v| v.as_i64()) == Some(1))
        .collect();
    if delivers.len() != nodes {
        return None;
    }
    let publishes = t.named("herald.publish");
    let mut parent = backend.to_owned();
    let mut out = Vec::new();
    while let Some(p) = publishes
        .iter()
        .find(|s| s.parent() == Some(parent.as_str()))
    {
        out.push(*p);
        parent = p.span_id.clone();
    }
    let last = out.last()?;
    delivers
        .iter()
        .all(|d| d.parent() == Some(last.span_id.as_str()))
        .then_some((out, delivers))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_trace_continues_through_every_cluster_process_into_jaeger() -> anyhow::Result<()>
{
    let test = "a_backend_trace_continues_through_every_cluster_process_into_jaeger";
    let Some(jaeger) = Jaeger::start(test).await? else {
        return Ok(());
    };
    let spec = Spec {
        env: vec![
            ("HERALD_OTLP_ENDPOINT".into(), jaeger.otlp.clone()),
            ("HERALD_OTLP_DELAY_MS".into(), "300".into()),
        ],
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let channels = ["ot:a", "ot:b", "ot:c", "ot:d"];
    let mut subs = cluster.subscribe_every_node("ot:*", &channels).await?;
    // Every channel through both dispatchers: one of the two publishes is forwarded.
    let mut traced = Vec::new();
    for d in &cluster.dispatchers {
        for ch in channels {
            let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
            let backend = format!("{:016x}", rand::random::<u64>() | 1);
            let mut m = Publish::new(ch, json!({ "via": d.name }));
            m.traceparent = Some(format!("00-{trace_id}-{backend}-01"));
            d.publisher().publish(&m).await?;
            traced.push((d.name.clone(), trace_id, backend));
        }
    }
    for sub in &mut subs {
        take(sub, traced.len(), WAIT).await?;
    }

    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let mut forwarded = 0;
    for (via, trace_id, backend) in &traced {
        let t = jaeger
            .trace_until(trace_id, WAIT, |t| chain(t, backend, nodes.len()).is_some())
            .await?;
        let (publishes, delivers) = chain(&t, backend, nodes.len()).context("complete")?;
        let by: Vec<String> = publishes
            .iter()
            .map(|s| t.instance(s).unwrap_or_default())
            .collect();
        ensure!(
            by[0] == *via,
            "the first span is the taking dispatcher's: {by:?}"
        );
        match by.len() {
            1 => {}
            2 => {
                ensure!(by[1] != *via, "forwarded to itself: {t:#?}");
                forwarded += 1;
            }
            _ => anyhow::bail!("publish spans {by:?} in {t:#?}"),
        }
        let owner = publishes.last().context("owner")?;
        let mut events = owner.events();
        events.retain(|e| e == "stored" || e == "fabric");
        assert_eq!(events, ["stored", "fabric"], "{t:#?}");
        let mut by_node: Vec<String> = delivers
            .iter()
            .map(|s| t.instance(s).unwrap_or_default())
            .collect();
        by_node.sort();
        let mut want = nodes.clone();
        want.sort();
        assert_eq!(by_node, want, "one delivery span per node");
        for d in &delivers {
            ensure!(owner.start_time <= d.start_time, "{t:#?}");
        }
    }
    ensure!(
        forwarded >= channels.len(),
        "{forwarded} of {} publishes were forwarded",
        traced.len()
    );
    cluster.passed();
    Ok(())
}
