#!/usr/bin/env python3
"""Markdown tables from the JSON lines of scripts/bench-matrix.sh (stdin).

One table per section; one row per case: what ran (op, clients,
connections, consistency, batch, rate, value size), throughput (and keys/s
for batches), latency percentiles in ms, errors.
"""
import json
import re
import sys


def flag(case, name, default=""):
    m = re.search(r"--%s (\S+)" % name, case)
    return m.group(1) if m else default


def describe(case):
    op = flag(case, "op", "put")
    parts = [op]
    if op in ("get", "mixed") or "--consistency" in case:
        parts.append(flag(case, "consistency", "linearizable"))
    if op == "mixed":
        parts.append(flag(case, "read-pct", "50") + "% gets")
    parts.append("c=" + flag(case, "clients", "16"))
    conns = flag(case, "connections")
    if conns:
        parts.append("conns=" + conns)
    batch = flag(case, "batch")
    if batch:
        parts.append("batch " + batch)
    rate = flag(case, "rate")
    if rate:
        parts.append("open loop %s/s" % rate)
    size = flag(case, "value-size")
    if size:
        parts.append(size)
    return ", ".join(parts)


def main():
    rows = {}
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        j = json.loads(line)
        rows.setdefault((j["section"], j["nodes"]), []).append(j)
    for (section, nodes), runs in rows.items():
        print(f"\n### {section}: {nodes} node{'s' if nodes != 1 else ''}\n")
        print("| case | ops/s | keys/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for j in runs:
            if j.get("failed"):
                print(f"| {describe(j['case'])} | failed | | | | | | | |")
                continue
            l = j["latency_ms"]
            keys = f"{j['keys_per_sec']:,.0f}" if j.get("batch", 1) > 1 else ""
            print(
                f"| {describe(j['case'])} | {j['ops_per_sec']:,.0f} | {keys} | {l['p50']:.2f} "
                f"| {l['p95']:.2f} | {l['p99']:.2f} | {l['p999']:.2f} | {l['max']:.2f} "
                f"| {j['errors']} |"
            )


if __name__ == "__main__":
    main()
