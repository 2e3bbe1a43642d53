#!/usr/bin/env python3
"""Markdown tables from a benches/side-by-side.sh session (JSON lines).

    python3 benches/summarize.py side-by-side.jsonl

Rates are medians over the rounds with every run in brackets (run order);
after the `;` the median server CPU per operation in microseconds. The last
column gives this daemon (D) over each peer, by median rate. A run whose
tool exit status was not 0 (a failed check) is marked `FAILED` and left out
of the medians.
"""

import json
import statistics
import sys

NAMES = {
    "D": "D",
    "DA": "D + admin scraped",
    "DB": "D before",
    "O": "original",
    "R": "Redis",
    "G": "dflockd",
    "F": "floor",
}
ORDER = ["D", "DA", "DB", "O", "R", "G", "F"]
ROWS = {
    "tp1": "1 conn, lock+unlock pairs/s",
    "tp50": "50 conns, pairs/s",
    "tp50x32": "50 conns x 32 pipelined, pairs/s",
    "contended": "50 conns on 1 key, handoffs/s",
    "strict1": "strict, 1 conn, rounds/s",
    "strict50": "strict, 50 conns own keys, rounds/s",
    "strict50k1": "strict, 50 conns on 1 key, rounds/s",
    "acquire50": "acquire, 50 conns, pairs/s",
    "acquire50x32": "acquire, 50 x 32 pipelined, pairs/s",
    "semaphore": "semaphore of 4, 50 conns, rounds/s",
    "flood": "flood 50 x 4096 + probe: flood pairs/s",
}


def human(x):
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def rate(result):
    for key in ("pairs_per_s", "handoffs_per_s", "rounds_per_s"):
        if key in result:
            return result[key]
    return None


def main(path):
    runs = {}
    session = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line:
            continue
        rec = json.loads(line)
        if "session" in rec:
            session.append(rec)
            continue
        runs.setdefault(rec["row"], {}).setdefault(rec["server"], []).append(rec)
    for rec in session:
        print(f"<!-- session {rec['session']} at {rec['at']}, load {rec['load']} -->")

    servers = [s for s in ORDER if any(s in r for r in runs.values())]
    print("| scenario | " + " | ".join(NAMES[s] for s in servers) + " | D / peer |")
    print("|---" * (len(servers) + 2) + "|")
    for row, title in ROWS.items():
        if row not in runs:
            continue
        cells, medians = [], {}
        for s in servers:
            recs = runs[row].get(s, [])
            if not recs:
                cells.append("")
                continue
            good = [r for r in recs if r.get("rc") == 0 and r.get("result")]
            shown = []
            for r in recs:
                res = r.get("result") or {}
                v = rate(res)
                shown.append(human(v) if v is not None and r.get("rc") == 0 else "FAILED")
            rates = [rate(r["result"]) for r in good]
            cpus = [r["result"].get("server_cpu_us_per_op") for r in good]
            cpus = [c for c in cpus if c is not None]
            if not rates:
                cells.append(f"[{', '.join(shown)}]")
                continue
            med = statistics.median(rates)
            medians[s] = med
            cell = f"{human(med)} [{', '.join(shown)}]"
            if cpus:
                cell += f"; {statistics.median(cpus):.2f} µs"
            if row == "flood":
                p99 = [r["result"]["probe_latency"]["p99_us"] for r in good]
                cell += f"; probe p99 {statistics.median(p99) / 1e3:.2f} ms"
            cells.append(cell)
        ratios = []
        if "D" in medians:
            for s in servers:
                if s != "D" and s in medians and medians[s] > 0:
                    ratios.append(f"{NAMES[s]} {medians['D'] / medians[s]:.2f}×")
        print(f"| {title} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")

    for row, title in (("burst", "2,000 waiters at once"), ("spread", "2,000 waiters over 200 ms")):
        if row not in runs:
            continue
        print()
        print(f"Timeouts, {title}, 250 ms: lateness p50 / p99 (ms), medians [p99 of each run]; early replies")
        print()
        print("| server | p50 | p99 | runs' p99 | early |")
        print("|---|---|---|---|---|")
        for s in servers:
            recs = runs[row].get(s, [])
            good = [r for r in recs if r.get("result")]
            if not good:
                continue
            p50 = [r["result"]["lateness"]["p50_us"] / 1e3 for r in good]
            p99 = [r["result"]["lateness"]["p99_us"] / 1e3 for r in good]
            early = sum(r["result"].get("early", 0) for r in good)
            answered = sum(r["result"].get("answered", 0) for r in good)
            failed = sum(1 for r in recs if r.get("rc") != 0)
            note = f" ({failed} failed)" if failed else ""
            print(
                f"| {NAMES[s]} | {statistics.median(p50):.2f} | {statistics.median(p99):.2f} | "
                f"{', '.join(f'{x:.1f}' for x in p99)} | {early} of {answered}{note} |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "side-by-side.jsonl")
