//! `herald check` end to end: the checker starts its own servers, kills and restarts them
//! under load, and verifies what its clients saw. A run that finds a violation exits non-zero,
//! and a planted gap (`--selftest-violation`) must be found.

use crate::cluster_support::cql_or_skip;
use std::process::Command;

/// Runs `herald check … --json`; returns the exit status, the JSON report (last line) and the
/// whole output for messages.
fn check(args: &[&str]) -> anyhow::Result<(bool, serde_json::Value, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("check")
        .args(args)
        .arg("--json")
        .env_remove("HERALD_CQL")
        .output()?;
    let stdout = String::from_utf8(out.stdout)?;
    let all = format!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().unwrap_or_default();
    let report: serde_json::Value =
        serde_json::from_str(json).map_err(|e| anyhow::anyhow!("no JSON report ({e}):\n{all}"))?;
    Ok((out.status.success(), report, all))
}

fn count(r: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = r;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

#[test]
fn checker_single_with_kills() -> anyhow::Result<()> {
    let (ok, r, all) = check(&[
        "--target",
        "single",
        "--duration",
        "20s",
        "--kill-every",
        "5s",
        "--subscribers",
        "24",
        "--rate",
        "120",
    ])?;
    assert!(ok, "herald check failed:\n{all}");
    assert_eq!(r["ok"], true, "{all}");
    assert_eq!(count(&r, &["violation_count"]), 0, "{all}");
    assert!(count(&r, &["kills"]) >= 2, "fewer than 2 kills:\n{all}");
    assert!(count(&r, &["events", "reliable"]) > 0, "no events:\n{all}");
    assert!(
        count(&r, &["publish", "acked"]) > 0,
        "nothing acknowledged:\n{all}"
    );
    assert!(
        count(&r, &["verification", "acks_verified"]) > 0,
        "nothing verified:\n{all}"
    );
    assert_eq!(
        count(&r, &["subscribers_caught_up"]),
        24,
        "subscribers left behind:\n{all}"
    );
    Ok(())
}

#[test]
fn checker_catches_a_planted_gap() -> anyhow::Result<()> {
    let (ok, r, all) = check(&[
        "--duration",
        "5s",
        "--kill-every",
        "0s",
        "--subscribers",
        "6",
        "--rate",
        "100",
        "--selftest-violation",
    ])?;
    assert!(!ok, "a planted gap passed:\n{all}");
    assert_eq!(r["ok"], false);
    assert!(
        count(&r, &["violations", "gap"]) >= 1,
        "the planted gap was not reported as a gap:\n{all}"
    );
    Ok(())
}

/// The cluster target: NATS, 2 dispatchers, 3 nodes on `HERALD_CQL`; nodes, dispatchers and
/// NATS are killed in turn. Fails without `HERALD_CQL` unless `HERALD_SKIP_CLUSTER=1`.
#[test]
fn cluster_checker_with_kills() -> anyhow::Result<()> {
    let Some(cql) = cql_or_skip("cluster_checker_with_kills") else {
        return Ok(());
    };
    let (ok, r, all) = check(&[
        "--target",
        "cluster",
        "--cql",
        &cql,
        "--duration",
        "40s",
        "--kill-every",
        "6s",
        "--subscribers",
        "24",
        "--rate",
        "100",
    ])?;
    assert!(ok, "herald check --target cluster failed:\n{all}");
    assert_eq!(count(&r, &["violation_count"]), 0, "{all}");
    for kind in ["sigkill node", "sigkill dispatcher", "sigkill nats"] {
        assert!(
            count(&r, &["faults", kind]) >= 1,
            "no `{kind}` fault injected:\n{all}"
        );
    }
    assert!(count(&r, &["events", "reliable"]) > 0, "no events:\n{all}");
    assert!(count(&r, &["verification", "acks_verified"]) > 0, "{all}");
    Ok(())
}
