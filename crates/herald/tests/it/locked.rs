//! A cluster with every link authenticated and encrypted (docs/SECURITY.md): dispatchers and
//! nodes log in to a Cassandra that requires a password and TLS, and to a nats-server that
//! requires TLS and a user; they serve HTTPS, and dispatchers forward publishes to each other
//! over HTTPS, checking each other's certificate.
//!
//! Needs `HERALD_CQL_SECURE` and `HERALD_CQL_SECURE_CA` (`scripts/test` starts that Cassandra
//! after the other cluster tests), unless `HERALD_SKIP_CLUSTER=1`.
//! Run: `cargo test -p herald --test it locked -- --test-threads=1`.

use crate::cluster_support::*;
use crate::common::take;
use anyhow::Context;
use herald_client::Publish;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_authenticated_and_encrypted_carries_messages() -> anyhow::Result<()> {
    let test = "every_link_authenticated_and_encrypted_carries_messages";
    let spec = Spec {
        dispatchers: 2,
        nodes: 1,
        locked: true,
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    for p in cluster.dispatchers.iter().chain(&cluster.nodes) {
        anyhow::ensure!(
            p.base.starts_with("https://"),
            "{} serves {}",
            p.name,
            p.base
        );
    }
    // Enough channels that both dispatchers own some: d0 forwards d1's share to it.
    let channels: Vec<String> = (0..16).map(|i| format!("locked:c{i}")).collect();
    let names: Vec<&str> = channels.iter().map(String::as_str).collect();
    let node = &cluster.nodes[0];
    let mut sub = node
        .subscriber(&["locked:*"])
        .subscribe(&names, Some(&from_start(&names)))
        .await
        .context("subscribing over HTTPS")?;

    let d0 = cluster.dispatchers[0].publisher();
    let mut sent = BTreeMap::new();
    for ch in &channels {
        let r = d0
            .publish(&Publish::new(ch.clone(), json!({ "ch": ch })))
            .await
            .with_context(|| format!("publish to {ch} through d0"))?;
        sent.insert(ch.clone(), r.seq.context("a reliable publish has a seq")?);
    }
    let forwarded = cluster.dispatchers[1].metric("herald_commits_total").await;
    assert!(
        forwarded > 0.0,
        "d1 committed nothing: d0 forwarded none of 16 channels to it over HTTPS"
    );

    let events = take(&mut sub, channels.len(), Duration::from_secs(20))
        .await
        .context("the node's stream over HTTPS")?;
    let delivered: BTreeMap<String, u64> = events
        .iter()
        .map(|ev| {
            let g = got(ev, 0);
            (g.channel, g.seq)
        })
        .collect();
    assert_eq!(delivered, sent, "what the node delivered, by channel");
    cluster.passed();
    Ok(())
}
