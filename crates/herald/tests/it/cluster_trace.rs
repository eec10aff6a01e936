//! Tracing on the cluster: a traced publish through one dispatcher, for a channel another
//! dispatcher holds, names every hop of every process (taken, forwarded, taken by the owner,
//! stored, handed to NATS, received by each node, queued, written), in an order that makes
//! sense, asked of any process.

use crate::cluster_support::*;
use crate::common::take;
use anyhow::{ensure, Context};
use herald_client::{Journey, Publish, TraceOf};
use herald_trace::{Hop, Step};
use serde_json::json;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

fn hop<'a>(j: &'a Journey, process: &str, step: Step) -> anyhow::Result<&'a Hop> {
    j.hops
        .iter()
        .find(|h| h.process == process && h.step == step)
        .with_context(|| format!("no {step:?} hop of {process} in {:#?}", j.hops))
}

/// `a` happened no later than `b` (one machine, one clock).
fn before(a: &Hop, b: &Hop) -> anyhow::Result<()> {
    ensure!(
        a.at_us <= b.at_us,
        "{} {:?} at {} after {} {:?} at {}",
        a.process,
        a.step,
        a.at_us,
        b.process,
        b.step,
        b.at_us
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_message_names_every_hop_across_the_cluster() -> anyhow::Result<()> {
    let test = "a_traced_message_names_every_hop_across_the_cluster";
    let Some(cluster) = Cluster::start(test, Spec::default()).await? else {
        return Ok(());
    };
    let channels = ["tr:a", "tr:b", "tr:c", "tr:d"];
    let mut subs = cluster.subscribe_every_node("tr:*", &channels).await?;
    // Every channel through both dispatchers: one of the two publishes is forwarded.
    let mut traced = Vec::new();
    for d in &cluster.dispatchers {
        let p = d.publisher();
        for ch in channels {
            let mut m = Publish::new(ch, json!({ "via": d.name }));
            m.trace = true;
            let r = p.publish(&m).await?;
            traced.push((d.name.clone(), ch, r.seq.context("seq")?));
        }
    }
    for sub in &mut subs {
        take(sub, traced.len(), WAIT).await?;
    }

    // Ask a node: it gathers the dispatchers' hops and the other node's over NATS.
    let asker = cluster.nodes[0].publisher();
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let mut forwarded = 0;
    for (via, ch, seq) in &traced {
        let of = TraceOf::Position {
            channel: ch.to_string(),
            seq: *seq,
        };
        // Writes are recorded once the sockets took the bytes: wait for both nodes'.
        let deadline = Instant::now() + WAIT;
        let journey = loop {
            let j = asker.trace(&of, Some(Duration::from_millis(500))).await?;
            let written = nodes
                .iter()
                .filter(|n| hop(&j, n, Step::WrittenLast).is_ok())
                .count();
            if written == nodes.len() {
                break j;
            }
            ensure!(
                Instant::now() < deadline,
                "not written on every node: {j:#?}"
            );
        };
        let accepted = hop(&journey, via, Step::Accepted)?;
        let owner = match hop(&journey, via, Step::Forwarded) {
            Ok(f) => {
                forwarded += 1;
                before(accepted, f)?;
                let owner = f
                    .note
                    .as_deref()
                    .and_then(|n| n.strip_prefix("to "))
                    .context("a forward names its owner")?
                    .to_owned();
                ensure!(owner != *via, "forwarded to itself: {journey:#?}");
                before(f, hop(&journey, &owner, Step::Accepted)?)?;
                owner
            }
            Err(_) => via.clone(),
        };
        let stored = hop(&journey, &owner, Step::Stored)?;
        let fabric = hop(&journey, &owner, Step::Fabric)?;
        before(hop(&journey, &owner, Step::Accepted)?, stored)?;
        before(stored, fabric)?;
        for n in &nodes {
            let steps = [
                Step::Received,
                Step::QueuedFirst,
                Step::QueuedLast,
                Step::WrittenFirst,
                Step::WrittenLast,
            ];
            before(fabric, hop(&journey, n, Step::Received)?)?;
            for w in steps.windows(2) {
                before(hop(&journey, n, w[0])?, hop(&journey, n, w[1])?)?;
            }
            assert_eq!(hop(&journey, n, Step::QueuedLast)?.counts["queued"], 1);
            assert_eq!(hop(&journey, n, Step::WrittenLast)?.counts["written"], 1);
        }
        ensure!(journey.seq == Some(*seq), "{journey:#?}");
    }
    ensure!(
        forwarded >= channels.len(),
        "{forwarded} of {} publishes were forwarded",
        traced.len()
    );
    cluster.passed();
    Ok(())
}
