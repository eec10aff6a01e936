#!/usr/bin/env python3
"""One markdown table from scripts/bench-cluster's results file (JSON lines).

Each line: {"name": scenario, "exit": rc, "cluster_alive": bool, "report": <herald bench JSON
line or null>}. Every figure comes from the report: rates and latencies measured by the bench,
CPU and RSS per role from the processes' /proc (role accounting), CQL / LWT / Paxos / NATS
counts from the processes' own counters. A figure the run did not have is "n/a"; every
unclean run is listed in the notes column.

Cassandra's CPU per row depends on the rate it is driven at, so Herald's Cassandra CPU per
1,000 messages is compared twice: with store-insert (as fast as the bench's writers go) and,
for ingest-single, with store-insert-paced (store-insert paced to ingest-single's achieved
rate, or to STORE_RATE; its line carries "rate_from"): the store's own price at the same rate.

Usage: bench_cluster_table.py RESULTS.jsonl [SCENARIO ...]   (scenarios in the order to print)
"""

import json
import sys

ROLES = [("dispatcher", "disp."), ("node", "nodes"), ("nats", "nats"), ("cassandra", "cass.")]
STORE = ("store-insert", "store-lwt", "store-insert-paced")
# Herald scenarios compared with store-insert-paced (the one whose rate it is paced to).
SAME_RATE = ("ingest-single",)
# A node fails in these (its pid is gone by design).
FAILOVER = ("node-death", "drain")


def get(d, path):
    v = d
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
    return v


def num(v, fmt="{:,.0f}"):
    return "n/a" if not isinstance(v, (int, float)) else fmt.format(v)


def problems(row):
    out = []
    rep = row.get("report")
    if row.get("exit", 0) != 0:
        out.append(f"exit {row['exit']}")
    if not row.get("cluster_alive", True):
        out.append("a cluster process died")
    if rep is None:
        out.append("no report")
        return out
    if rep.get("connections", 0) and rep.get("connected", 0) < rep["connections"]:
        out.append(f"connected {rep.get('connected', 0)}/{rep['connections']}")
    for key, label in [
        ("failed", "failed conns"),
        ("closed_early", "closed early"),
        ("lost", "lost"),
        ("duplicates", "duplicates"),
        ("out_of_order", "out of order"),
        ("publish_errors", "publish errors"),
    ]:
        if rep.get(key, 0):
            out.append(f"{label} {rep[key]:,}")
    # Which of the nodes' own disconnects explain connections closed early.
    for key, label in [
        ("slow_consumer_disconnects", "node: slow-consumer disconnects"),
        ("stalled_disconnects", "node: stalled-peer disconnects"),
        ("gap_disconnects", "node: gap disconnects"),
    ]:
        v = get(rep, f"counters.herald.{key}")
        if v:
            out.append(f"{label} {int(v):,}")
    target, achieved = rep.get("rate_target") or 0, rep.get("publish_rate") or 0
    if row.get("name") in STORE and target > 0 and achieved < 0.95 * target:
        out.append(f"writers behind: {achieved:,.0f} of {target:,.0f} rows/s")
    if get(rep, "store.not_applied"):
        out.append(f"not applied {rep['store']['not_applied']:,}")
    f = rep.get("failover") or {}
    for key, label in [("gave_up", "clients gave up"), ("still_catching_up", "still behind")]:
        if f.get(key):
            out.append(f"{label} {f[key]:,}")
    for role, r in (rep.get("roles") or {}).items():
        if r.get("gone") and not (row.get("name") in FAILOVER and role == "node"):
            out.append(f"{role} pids gone {r['gone']}")
    errs = get(rep, "counters.errors") or []
    if row.get("name") in FAILOVER and f.get("victim"):
        # The failed node's /metrics cannot be read at the end, by design.
        errs = [e for e in errs if not e.startswith(f["victim"] + "/")]
    if errs:
        out.append("counters not read: " + "; ".join(e[:80] for e in errs[:3]))
    return out


def per_1k_key(name):
    # The resume storm's messages were published before its window: per 1,000 deliveries.
    return "cpu_s_per_1k_deliveries" if name == "resume" else "cpu_s_per_1k_publishes"


def rate_cell(name, rep):
    if name in STORE:
        cell = f"{num(rep.get('publish_rate'))} rows/s"
        if rep.get("rate_target"):
            cell += f" (paced to {num(rep['rate_target'])})"
        return cell
    if name == "resume":
        s = rep.get("resume_caught_up_s") or 0
        d = rep.get("deliveries") or 0
        if s > 0:
            return f"caught up {s:.2f} s ({d / s:,.0f} deliv./s)"
        return "not caught up"
    if name in FAILOVER:
        f = rep.get("failover") or {}
        cell = (
            f"{f.get('victim_clients', 0):,} clients of the victim: all back {num(f.get('all_reconnected_s'), '{:.2f}')} s, "
            f"caught up {num(f.get('all_caught_up_s'), '{:.2f}')} s after it; peak {num(f.get('peak_connects_per_s'))} connects/s"
        )
        if f.get("even_connects_per_s"):
            cell += f" ({f.get('peak_vs_even', 0):.2f}× the even {f['even_connects_per_s']:,.0f}/s)"
        return cell
    if name in ("ingest-single", "ingest-batch", "hot"):
        return f"{num(rep.get('publish_rate'))} msgs/s"
    return f"{num(rep.get('publish_rate'))} msgs/s (target {num(rep.get('rate_target'))})"


def latency_cell(name, rep):
    if name == "resume":
        return "n/a (replay)"
    if rep.get("expected_deliveries", 0) > 0 and get(rep, "latency_ms.count"):
        lat = rep["latency_ms"]
        return f"{lat['p50']:.2f} / {lat['p99']:.2f} ms"
    pub = rep.get("publish_ms") or {}
    if pub.get("count"):
        what = "insert" if name in STORE else "request"
        return f"{pub['p50']:.2f} / {pub['p99']:.2f} ms ({what})"
    return "n/a"


def loss_cell(rep):
    if not rep.get("expected_deliveries"):
        return "n/a"
    parts = [f"{rep.get('lost', 0):,}"]
    if rep.get("duplicates"):
        parts.append(f"dup {rep['duplicates']:,}")
    if rep.get("out_of_order"):
        parts.append(f"ooo {rep['out_of_order']:,}")
    return ", ".join(parts)


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    rows = []
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    order = sys.argv[2:] or list(dict.fromkeys(r["name"] for r in rows))
    last = {}
    for r in rows:
        last[r["name"]] = r  # the latest run of each scenario

    base = None
    ins = last.get("store-insert", {}).get("report")
    if ins:
        base = get(ins, "roles.cassandra.cpu_s_per_1k_publishes")
    # The store's price at ingest-single's rate: (CPU-s / 1k rows, rate achieved, paced to).
    paced = None
    pr = last.get("store-insert-paced", {}).get("report")
    if pr and get(pr, "roles.cassandra.cpu_s_per_1k_publishes"):
        paced = (
            get(pr, "roles.cassandra.cpu_s_per_1k_publishes"),
            pr.get("publish_rate") or 0,
            last["store-insert-paced"].get("rate_from", "?"),
        )

    head = (
        ["scenario", "rate", "latency p50 / p99", "lost"]
        + [f"CPU-s / 1k msgs: {short}" for _, short in ROLES]
        + [
            "RSS MiB (" + " / ".join(s for _, s in ROLES) + ")",
            "CQL stmts / msg (Cassandra)",
            "LWT rounds / msg (Herald)",
            "plain writes / msg (Herald)",
            "system.paxos writes / msg",
            "NATS msgs in / out per publish",
            "Cassandra CPU / 1k msgs vs store-insert",
            "Cassandra CPU / 1k vs store-insert at the same rate",
            "notes",
        ]
    )
    print("| " + " | ".join(head) + " |")
    print("|---|---:|---:|---:|" + "---:|" * (len(head) - 5) + "---|")
    for name in order:
        row = last.get(name)
        if row is None:
            continue
        rep = row.get("report")
        notes = "; ".join(problems(row))
        if rep is None:
            print(f"| {name} |" + " n/a |" * (len(head) - 2) + f" {notes} |")
            continue
        roles = rep.get("roles") or {}
        key = per_1k_key(name)
        cpu = [num(get(roles, f"{r}.{key}"), "{:.3f}") for r, _ in ROLES]
        if name == "resume":
            cpu = [c + " /1k deliv." if c != "n/a" else c for c in cpu]
        rss = " / ".join(
            num(get(roles, f"{r}.rss_after") and get(roles, f"{r}.rss_after") / 1048576)
            for r, _ in ROLES
        )
        pm = get(rep, "counters.per_message") or {}
        nats_in, nats_out = pm.get("nats_in_msgs"), pm.get("nats_out_msgs")
        nats = "n/a" if nats_in is None else f"{nats_in:.2f} / {nats_out:.2f}"
        cass = get(roles, "cassandra.cpu_s_per_1k_publishes")
        if name == "resume" or cass is None:
            vs = "n/a"
        elif base:
            vs = f"{cass:.3f} s ({cass / base:.2f}×)"
        else:
            vs = f"{cass:.3f} s"
        same = "n/a"
        if name in SAME_RATE and cass is not None and paced:
            p_cpu, p_rate, p_from = paced
            same = f"{cass / p_cpu:.2f}× (store {p_cpu:.3f} s at {p_rate:,.0f} rows/s"
            same += ", STORE_RATE)" if p_from == "STORE_RATE" else ")"
        cells = [
            name,
            rate_cell(name, rep),
            latency_cell(name, rep),
            loss_cell(rep),
            *cpu,
            rss,
            num(pm.get("cql_statements"), "{:.3f}"),
            num(pm.get("herald_lwt_requests"), "{:.4f}"),
            num(pm.get("herald_write_statements"), "{:.3f}"),
            num(pm.get("paxos_table_writes"), "{:.3f}"),
            nats,
            vs,
            same,
            notes,
        ]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "CPU: utime+stime from /proc of each role's processes over the measured window, summed "
        "per role, per 1,000 messages published in the window (resume: per 1,000 deliveries; "
        "store-*: per 1,000 rows the bench wrote to Cassandra itself). RSS at the end of the "
        "window. CQL statements: Cassandra's cql_metrics (prepared + regular executed); LWT "
        "rounds and plain writes: Herald's herald_cql_requests_total{kind=\"lwt\"} and "
        "herald_cql_statements_total{kind=\"write\"} (n/a: the binary does not export them); "
        "system.paxos writes: Cassandra's local writes to its Paxos table (~3 per LWT round); "
        "NATS: nats-server /varz in_msgs / out_msgs. Latency: publish → receive when the "
        "scenario has subscribers, else the request (insert) latency. Cassandra's CPU per row "
        "depends on the rate it is driven at: \"vs store-insert\" compares with the store "
        "driven as fast as 32 writers go; \"at the same rate\" compares ingest-single with "
        "store-insert-paced, the store alone paced to the rate ingest-single achieved in this "
        "run (or to STORE_RATE, marked so), and is n/a for the other scenarios."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
