//! A seconds-long `herald bench` against a real cluster (1 dispatcher, 2 nodes, NATS, the
//! Cassandra of `HERALD_CQL`) with role accounting, for a few scenarios: nothing lost,
//! duplicated or out of order, and Herald's consensus rounds (LWT requests, from its
//! `/metrics`) per published message at most 0.01 over the run and in every scenario that
//! publishes at least a thousand messages (lease renewals are a few rounds per second
//! whatever the load, so a scenario of 80 messages cannot judge the ratio). Performance is
//! measured by
//! `scripts/bench-cluster`, never by timed tests.
//!
//! Run: `HERALD_CQL=127.0.0.1:19042 cargo test -p herald --test it cluster_bench`
//! (skipped with `HERALD_SKIP_CLUSTER=1`, like every cluster test; see `cluster_support`).

use crate::cluster_support::*;
use crate::common::{API_KEY, SECRET};
use anyhow::{bail, Context};
use std::time::Duration;

/// Consensus rounds per published message Herald may spend.
const MAX_LWT_PER_MESSAGE: f64 = 0.01;
/// Scenarios publishing fewer messages are judged only in the run's total.
const JUDGED_FROM: u64 = 1000;
/// Longest one bench run may take.
const BENCH_WAIT: Duration = Duration::from_secs(60);

/// The pid of the process whose command line holds each of `runs` (a run: arguments one
/// directly after the other).
fn pid_with_args(runs: &[&[&str]]) -> anyhow::Result<u32> {
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let holds = |run: &[&str]| {
            cmd.windows(run.len())
                .any(|w| w.iter().zip(run).all(|(a, b)| a == b))
        };
        if runs.iter().all(|r| holds(r)) {
            return Ok(pid);
        }
    }
    bail!("no process with {runs:?} in its command line")
}

fn addr(p: &Proc) -> String {
    p.base.trim_start_matches("http://").to_owned()
}

/// One `herald bench` run against the cluster; its JSON report.
async fn bench(
    cluster: &Cluster,
    roles: &[String],
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let nodes: Vec<String> = cluster.nodes.iter().map(addr).collect();
    bench_at_nodes(cluster, &nodes, roles, args).await
}

/// The same, subscribing at `nodes` only.
async fn bench_at_nodes(
    cluster: &Cluster,
    nodes: &[String],
    roles: &[String],
    args: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HERALD_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("bench")
        .args(["--publish-addr", &addr(&cluster.dispatchers[0])])
        .args(["--node-addr", &nodes.join(",")])
        .args(["--api-key", API_KEY, "--jwt-secret", SECRET])
        .args(["--cql", &cluster.cql, "--keyspace", &cluster.keyspace])
        .args(["--drain-secs", "10"])
        .args(roles)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(BENCH_WAIT, cmd.output())
        .await
        .with_context(|| format!("herald bench {args:?} did not finish within {BENCH_WAIT:?}"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "herald bench {args:?} failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(json).with_context(|| format!("bench report of {args:?}: {stdout}"))
}

/// What is wrong with one scenario's report (empty when nothing is).
fn problems(name: &str, r: &serde_json::Value, roles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    for k in [
        "lost",
        "duplicates",
        "out_of_order",
        "failed",
        "closed_early",
        "publish_errors",
    ] {
        if n(k) != 0 {
            out.push(format!("{name}: {k} = {}", r[k]));
        }
    }
    if n("published") == 0 || n("published") == u64::MAX {
        out.push(format!("{name}: nothing published"));
    }
    if n("deliveries") != n("expected_deliveries") {
        out.push(format!(
            "{name}: {} deliveries of {} expected",
            r["deliveries"], r["expected_deliveries"]
        ));
    }
    for role in roles {
        let rss = r["roles"][role]["rss_after"].as_u64().unwrap_or(0);
        if rss == 0 || !r["roles"][role]["cpu_s"].is_number() {
            out.push(format!(
                "{name}: no role accounting for {role}: {}",
                r["roles"]
            ));
        }
    }
    match r["counters"]["per_message"]["herald_lwt_requests"].as_f64() {
        Some(_) if n("published") < JUDGED_FROM => {}
        None => out.push(format!(
            "{name}: Herald's LWT requests per message are unknown: its /metrics has no \
             herald_cql_requests_total{{kind=\"lwt\"}} (counters: {})",
            r["counters"]["herald"]
        )),
        Some(v) if v > MAX_LWT_PER_MESSAGE => out.push(format!(
            "{name}: {v:.4} LWT requests (Paxos rounds) per published message, more than \
             {MAX_LWT_PER_MESSAGE} ({} requests for {} messages)",
            r["counters"]["herald"]["cql_lwt_requests"], r["counters"]["per_message"]["messages"]
        )),
        Some(_) => {}
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bench_smoke_loses_nothing_and_spends_no_consensus_per_message(
) -> anyhow::Result<()> {
    let test = "cluster_bench_smoke";
    let spec = Spec {
        dispatchers: 1,
        nodes: 2,
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let ks = cluster.keyspace.clone();
    let herald_pid = |id: &str| pid_with_args(&[&["--keyspace", &ks], &["--id", id]]);
    let dispatcher = herald_pid("d0")?;
    let nodes = [herald_pid("n0")?, herald_pid("n1")?];
    let nats = pid_with_args(&[&["-a", "127.0.0.1", "-p", &cluster.nats.port.to_string()]])?;
    let roles = vec![
        "--role".to_owned(),
        format!("dispatcher={dispatcher}"),
        "--role".to_owned(),
        format!("node={},{}", nodes[0], nodes[1]),
        "--role".to_owned(),
        format!("nats={nats}"),
    ];
    let scenarios: [(&str, &[&str]); 3] = [
        (
            "ingest single",
            &[
                "--scenario",
                "ingest",
                "--batch",
                "1",
                "--publishers",
                "4",
                "--duration",
                "2",
            ],
        ),
        (
            "fanout across nodes",
            &[
                "--scenario",
                "fanout",
                "--connections",
                "20",
                "--rate",
                "40",
                "--duration",
                "2",
            ],
        ),
        (
            "hot",
            &[
                "--scenario",
                "hot",
                "--connections",
                "10",
                "--publishers",
                "8",
                "--duration",
                "2",
            ],
        ),
    ];
    let mut failures = Vec::new();
    let (mut lwt, mut published) = (0.0, 0.0);
    for (name, args) in scenarios {
        let r = bench(&cluster, &roles, args)
            .await
            .with_context(|| name.to_owned())?;
        eprintln!(
            "{test}: {name}: published {} ({:.0}/s), deliveries {}/{}, lwt per message {}",
            r["published"],
            r["publish_rate"].as_f64().unwrap_or(0.0),
            r["deliveries"],
            r["expected_deliveries"],
            r["counters"]["per_message"]["herald_lwt_requests"]
        );
        failures.extend(problems(name, &r, &["dispatcher", "node", "nats"]));
        lwt += r["counters"]["herald"]["cql_lwt_requests"]
            .as_f64()
            .unwrap_or(f64::INFINITY);
        published += r["published"].as_f64().unwrap_or(0.0);
    }
    let total = lwt / published.max(1.0);
    eprintln!("{test}: {lwt} LWT requests for {published} messages in all: {total:.4} per message");
    if total > MAX_LWT_PER_MESSAGE {
        failures.push(format!(
            "{total:.4} LWT requests per published message over the run, more than {MAX_LWT_PER_MESSAGE}"
        ));
    }
    if !failures.is_empty() {
        bail!("{test}:\n  {}", failures.join("\n  "));
    }
    cluster.passed();
    Ok(())
}

/// What is wrong with a node-death or drain report, beyond [`problems`]: every client of the
/// victim back at another node and caught up, nobody giving up, within `caught_up_within`
/// seconds of the failure (a stall bound: the release bench measures the real figure).
fn failover_problems(name: &str, r: &serde_json::Value, caught_up_within: f64) -> Vec<String> {
    let f = &r["failover"];
    let n = |k: &str| f[k].as_u64().unwrap_or(u64::MAX);
    let mut out = Vec::new();
    let victims = n("victim_clients");
    if victims == 0 || victims == u64::MAX {
        out.push(format!("{name}: no clients on the victim: {f}"));
    }
    if n("reconnects") < victims {
        out.push(format!(
            "{name}: {} of {victims} reconnected",
            f["reconnects"]
        ));
    }
    for k in ["gave_up", "still_catching_up"] {
        if n(k) != 0 {
            out.push(format!("{name}: {k} = {}", f[k]));
        }
    }
    let caught_up = f["all_caught_up_s"].as_f64().unwrap_or(0.0);
    if !(caught_up > 0.0 && caught_up <= caught_up_within) {
        out.push(format!(
            "{name}: all caught up {caught_up} s after the failure (bound {caught_up_within} s)"
        ));
    }
    if f["reconnects_per_node"][0].as_u64() != Some(0) {
        out.push(format!(
            "{name}: reconnects landed on the victim: {}",
            f["reconnects_per_node"]
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bench_node_death_and_drain_lose_nothing() -> anyhow::Result<()> {
    let test = "cluster_bench_failover";
    let drain = Duration::from_secs(3);
    let spec = Spec {
        dispatchers: 1,
        nodes: 3,
        node_drain: Some(drain),
        ..Spec::default()
    };
    let Some(cluster) = Cluster::start(test, spec).await? else {
        return Ok(());
    };
    let ks = cluster.keyspace.clone();
    let herald_pid = |id: &str| pid_with_args(&[&["--keyspace", &ks], &["--id", id]]);
    let nodes: Vec<String> = cluster.nodes.iter().map(addr).collect();
    let common = |victim_pid: &str, extra: &[&str]| {
        let mut a: Vec<String> = [
            "--connections",
            "300",
            "--channels",
            "10",
            "--rate",
            "60",
            "--publishers",
            "3",
            "--duration",
            "9",
            "--fail-at",
            "2",
            "--victim",
            "0",
            "--victim-pid",
            victim_pid,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut failures = Vec::new();

    // kill -9 of n0: its 100 clients go to n1 and n2 after a jittered backoff.
    let victim = herald_pid("n0")?.to_string();
    let args = common(
        &victim,
        &["--scenario", "node-death", "--backoff-ms", "500"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = bench(&cluster, &[], &args).await.context("node-death")?;
    eprintln!("{test}: node-death: {}", r["failover"]);
    failures.extend(problems("node-death", &r, &[]));
    failures.extend(failover_problems("node-death", &r, 10.0));
    if r["failover"]["victim_clients"] != 100 {
        failures.push(format!(
            "node-death: {} clients on n0, not 100",
            r["failover"]
        ));
    }

    // Drain of n1 (SIGTERM, 3 s window) with n1 and n2 left: its clients are told in band and
    // come back at n2 at about the even rate.
    let victim = herald_pid("n1")?.to_string();
    let args = common(
        &victim,
        &[
            "--scenario",
            "drain",
            "--drain-window",
            &drain.as_secs().to_string(),
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = bench_at_nodes(&cluster, &nodes[1..], &[], &args)
        .await
        .context("drain")?;
    eprintln!("{test}: drain: {}", r["failover"]);
    failures.extend(problems("drain", &r, &[]));
    failures.extend(failover_problems("drain", &r, 15.0));
    let f = &r["failover"];
    if f["told_to_reconnect"] != f["victim_clients"] {
        failures.push(format!("drain: not every client was told in band: {f}"));
    }
    // Few clients make a lumpy rate: twice the even rate is the smoke's bound.
    let peak = f["peak_vs_even"].as_f64().unwrap_or(f64::INFINITY);
    if peak > 2.0 {
        failures.push(format!(
            "drain: connect rate peaked at {peak:.2}× the even rate: {f}"
        ));
    }
    if !failures.is_empty() {
        bail!("{test}:\n  {}", failures.join("\n  "));
    }
    cluster.passed();
    Ok(())
}
