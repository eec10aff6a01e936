#!/usr/bin/env python3
"""Markdown comparison table from scripts/bench-compare's results file (JSON lines).

Each line: {"name": scenario, "server": "herald"|"nchan"|"floor", "run": k, "exit": rc,
"server_alive": bool, "report": <herald bench JSON line or null>}.
Medians over the runs that produced a report; every failure (non-zero exit, no report,
server died, lost/failed/duplicate/out-of-order/publish errors) is listed in the notes column.

Usage: bench_table.py RESULTS.jsonl [SCENARIO ...]   (scenarios in the order to print)
"""

import json
import statistics
import sys

LOWER, HIGHER = "lower", "higher"

# Figures per scenario: (label, getter, which way is better, format).
def _get(path):
    def g(rep):
        v = rep
        for k in path.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        return v
    return g


def fmt_int(v):
    return f"{v:,.0f}"


def fmt_ms(v):
    return f"{v:.2f} ms"


def fmt_bytes(v):
    return f"{v:,.0f} B"


DELIVERY = [
    ("deliveries per server CPU-s", _get("deliveries_per_server_cpu_s"), HIGHER, fmt_int),
    ("lost", _get("lost"), LOWER, fmt_int),
    ("latency p50", _get("latency_ms.p50"), LOWER, fmt_ms),
    ("latency p99", _get("latency_ms.p99"), LOWER, fmt_ms),
    ("publish rate (msgs/s)", _get("publish_rate"), HIGHER, fmt_int),
]
INGEST = [
    ("ingest msgs/s", _get("ingest_msgs_per_s"), HIGHER, fmt_int),
    ("publishes per server CPU-s", _get("publishes_per_server_cpu_s"), HIGHER, fmt_int),
]
FIGURES = {
    "idle": [("server RSS per connection", _get("server_rss_per_connection"), LOWER, fmt_bytes)],
    "fanout": DELIVERY,
    "fanout10": DELIVERY,
    "channels": DELIVERY,
    "ingest-single": INGEST,
    "ingest-batch": INGEST,
    "resume": [
        ("seconds until all caught up", _get("resume_caught_up_s"), LOWER, lambda v: f"{v:.2f} s"),
        ("lost", _get("lost"), LOWER, fmt_int),
        ("deliveries per server CPU-s", _get("deliveries_per_server_cpu_s"), HIGHER, fmt_int),
    ],
    "flash-crowd": [
        ("seconds until the crowd was in", _get("flash.crowd_connect_s"), LOWER, lambda v: f"{v:.2f} s"),
        ("crowd connections failed", _get("flash.crowd_failed"), LOWER, fmt_int),
        ("lost", _get("lost"), LOWER, fmt_int),
        ("first subscribers' p99 before", _get("flash.before_ms.p99"), LOWER, fmt_ms),
        ("first subscribers' p99 while joining", _get("flash.joining_ms.p99"), LOWER, fmt_ms),
        ("joining p99 ÷ settled p99", _get("flash.joining_vs_settled_p99"), LOWER, lambda v: f"{v:.2f}×"),
    ],
}
# Scenarios a server cannot run (no batch publish API in nchan; the floor has no store).
NOT_APPLICABLE = {("ingest-batch", "nchan"), ("resume", "nchan")}
FLOOR_SCENARIOS = {"idle", "fanout", "fanout10", "channels", "flash-crowd"}


def not_applicable(name, server):
    if server == "floor":
        return name not in FLOOR_SCENARIOS
    return (name, server) in NOT_APPLICABLE


def short_rate(rep):
    """The server published under 90 % of the offered rate: its latency is for a lighter load."""
    target = rep.get("rate_target") or 0
    return target > 0 and (rep.get("publish_rate") or 0) < 0.9 * target


def problems(row):
    """Why a run is not clean, as short strings (empty when it is)."""
    out = []
    rep = row.get("report")
    if row.get("exit", 0) != 0:
        out.append(f"exit {row['exit']}")
    if not row.get("server_alive", True):
        out.append("server died")
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
            out.append(f"{label} {rep[key]}")
    if short_rate(rep):
        out.append(f"published {rep.get('publish_rate', 0):.1f}/s of {rep['rate_target']:g}/s offered")
    return out


def median(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


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
    runs = {}
    for r in rows:
        runs.setdefault((r["name"], r["server"]), []).append(r)

    present = {r["server"] for r in rows}
    # Herald against each peer that ran: nchan (a real server) and the floor (`herald floor`).
    peers = [p for p in ("nchan", "floor") if p in present] or ["nchan"]
    servers = ["herald"] + peers
    label_of = {"herald": "Herald", "nchan": "nchan", "floor": "floor"}
    head = " | ".join(label_of[s] for s in servers)
    ratios = " | ".join(f"Herald/{label_of[p]}" for p in peers)
    print(f"| scenario | figure | better | {head} | {ratios} | reports/runs | notes |")
    print("|---|---|---|" + "---:|" * (len(servers) + len(peers)) + "---|---|")
    for name in order:
        figs = FIGURES.get(name)
        if not figs:
            continue
        per = {}
        notes = []
        for server in servers:
            rs = runs.get((name, server), [])
            reps = [r["report"] for r in rs if r.get("report") is not None]
            per[server] = (rs, reps)
            for r in rs:
                p = problems(r)
                if p:
                    notes.append(f"{server} run {r.get('run')}: " + ", ".join(p))
        runs_col = ", ".join(
            f"{s[0].upper() if s == 'herald' else s[0]} "
            + ("n/a" if not_applicable(name, s) else f"{len(per[s][1])}/{len(per[s][0])}")
            for s in servers
        )
        for i, (label, get, better, fmt) in enumerate(figs):
            vals = {}
            cells = {}
            for server in servers:
                if not_applicable(name, server):
                    vals[server], cells[server] = None, "n/a"
                    continue
                m = median([get(rep) for rep in per[server][1]])
                vals[server] = m
                cells[server] = "—" if m is None else fmt(m)
            ratio_cells = []
            for peer in peers:
                h, n = vals["herald"], vals[peer]
                if h is None or n is None:
                    ratio = "n/a" if "n/a" in (cells["herald"], cells[peer]) else "—"
                elif n == 0:
                    ratio = "= (both 0)" if h == 0 else "∞"
                else:
                    ratio = f"{h / n:.2f}×"
                    if any(short_rate(rep) for s_ in ("herald", peer) for rep in per[s_][1]):
                        ratio += " (unequal load)"
                ratio_cells.append(ratio)
            note = "; ".join(notes) if i == 0 else ""
            print(
                f"| {name} | {label} | {better} | "
                + " | ".join(cells[s] for s in servers)
                + " | "
                + " | ".join(ratio_cells)
                + f" | {runs_col if i == 0 else ''} | {note} |"
            )
    print()
    print(
        "Medians over the runs that produced a report ('reports/runs': H = Herald, n = nchan, "
        "f = floor); "
        "every unclean run is listed in notes. Ingest: Herald's publishes are durable (embedded "
        "store); nchan keeps messages in shared memory only. 'n/a': nchan has no batch publish API."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
