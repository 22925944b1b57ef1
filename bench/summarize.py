#!/usr/bin/env python3
"""min / median / max over repeated tidings-bench runs.

Usage: bench/summarize.py DIR...   (each DIR holds one run's results.json)
Prints Markdown tables: for each scenario, one row per figure and one column
per target, each cell "median (min–max)" over the runs that have it, and for
fan-out style scenarios p99 as a multiple of the floor's p99 *in the same run*.
"""
import json
import statistics
import sys
from pathlib import Path

ORDER = ["tidings", "tidings-socketio", "centrifugo", "socketio", "floor-write", "floor-batched"]
LABEL = {"tidings": "Tidings", "tidings-socketio": "Tidings /socket.io/", "centrifugo": "Centrifugo",
         "socketio": "Socket.IO", "floor-write": "floor-write", "floor-batched": "floor-batched"}
STEADY = [("deliveries/s", "deliveries_per_s", 0), ("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2),
          ("p99.9 ms", "p999_ms", 2), ("server CPU %", "server_cpu_pct", 0),
          ("others' CPU %", "other_cpu_pct", 0), ("lost", "lost", 0), ("disconnects", "disconnects", 0),
          ("server RSS MiB", "rss", 1)]


def cell(values, digits):
    if not values:
        return "–"
    f = lambda v: f"{v:,.{digits}f}"
    lo, med, hi = min(values), statistics.median(values), max(values)
    return f(med) if lo == hi else f"{f(med)} ({f(lo)}–{f(hi)})"


def main(dirs):
    runs = []  # (run index, run dict)
    for i, d in enumerate(dirs):
        doc = json.loads((Path(d) / "results.json").read_text())
        runs += [(i, r) for r in doc["runs"]]
    print(f"{len(dirs)} runs: {', '.join(map(str, dirs))}\n")
    print("Each cell: median (min–max) over the runs.\n")
    for scenario in ["idle", "fanout", "channels", "max"]:
        rs = [(i, r) for i, r in runs if r["scenario"] == scenario]
        targets = [t for t in ORDER if any(r["target"] == t for _, r in rs)]
        if not targets:
            continue
        by = {t: [(i, r) for i, r in rs if r["target"] == t] for t in targets}
        print(f"## {scenario}\n")
        print("| | " + " | ".join(LABEL[t] for t in targets) + " |")
        print("|---|" + "---:|" * len(targets))
        row = lambda name, cells: print(f"| {name} | " + " | ".join(cells) + " |")
        if scenario == "idle":
            ns = sorted({s["connections"] for _, r in rs for s in r["steps"]})
            for n in ns:
                vals = {t: [s["rss_per_conn"] / 1024 for _, r in by[t] for s in r["steps"]
                            if s["connections"] == n and s.get("rss_per_conn")] for t in targets}
                row(f"KiB/conn at {n:,}", [cell(vals[t], 2) for t in targets])
            row("answered ping after hold", [cell([r["held"]["pongs"] for _, r in by[t] if r.get("held")], 0)
                                             for t in targets])
        elif scenario == "max":
            row("highest sustained deliveries/s", [cell([r.get("max_sustained") or 0 for _, r in by[t]], 0)
                                                   for t in targets])
        else:
            for name, key, digits in STEADY:
                scale = 1 / 1048576 if key == "rss" else 1
                row(name, [cell([r["steps"][-1][key] * scale for _, r in by[t]
                                 if r["steps"] and r["steps"][-1].get(key) is not None], digits)
                           for t in targets])
            for floor in ("floor-write", "floor-batched"):
                if floor not in by:
                    continue
                fp = {i: r["steps"][-1].get("p99_ms") for i, r in by[floor] if r["steps"]}
                row(f"**p99 × {floor}** (same run)",
                    [cell([r["steps"][-1]["p99_ms"] / fp[i] for i, r in by[t]
                           if r["steps"] and fp.get(i) and r["steps"][-1].get("p99_ms")], 2) for t in targets])
        print()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
