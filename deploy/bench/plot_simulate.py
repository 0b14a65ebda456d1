#!/usr/bin/env python3
"""Render PNG plots from what `kvtier-bench simulate` writes.

Usage:
    python3 deploy/bench/plot_simulate.py simulate.json simulate.csv OUTDIR

Writes into OUTDIR:
    sim_ttft_cdf.png   empirical CDF of TTFT from arrival (ms, log x) per policy, turns 2+
    sim_hit_rates.png  share of the reusable tokens of turns 2+ served by each tier, per policy
    sim_prefill.png    prefill GPU seconds and TTFT p50 from arrival per policy, relative to recompute

Needs matplotlib (python3 -m pip install matplotlib). Uses the headless Agg backend.
"""

import csv
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIERS = ("hbm", "dram", "disk")
TIER_COLORS = {"hbm": "#2ca02c", "dram": "#1f77b4", "disk": "#ff7f0e"}
DPI = 120


def ttft_cdf(rows, title, path):
    by_policy = {}
    for r in rows:
        if int(r["turn"]) == 0:
            continue
        ms = (float(r["first_token_s"]) - float(r["arrival_s"])) * 1000.0
        by_policy.setdefault(r["policy"], []).append(max(ms, 1e-3))
    if not by_policy:
        print("sim_ttft_cdf.png: no turns 2+ in the CSV; skipped")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for policy, values in by_policy.items():
        values.sort()
        n = len(values)
        ax.plot(values, [(i + 1) / n for i in range(n)], label=policy)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT from arrival (ms, log scale), turns 2+")
    ax.set_ylabel("fraction of turns")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print("wrote", path)


def hit_rates(report, title, path):
    policies = report["policies"]
    names = [p["policy"] for p in policies]
    fig, ax = plt.subplots(figsize=(8, 5))
    bottom = [0.0] * len(names)
    for tier in TIERS:
        values = [100.0 * p["hit_rate_by_tier"].get(tier, 0.0) for p in policies]
        ax.bar(names, values, bottom=bottom, label=tier, color=TIER_COLORS[tier])
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("% of reusable tokens, turns 2+")
    ax.set_title(title)
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print("wrote", path)


def prefill(report, title, path):
    policies = report["policies"]
    base = next((p for p in policies if p["policy"] == "recompute"), None)
    if base is None or base["prefill_gpu_seconds"] <= 0:
        print("sim_prefill.png: no recompute run to compare with; skipped")
        return
    names = [p["policy"] for p in policies]
    gpu = [p["prefill_gpu_seconds"] / base["prefill_gpu_seconds"] for p in policies]
    b50 = base["ttft_from_arrival_ms"]["p50"]
    ttft = [p["ttft_from_arrival_ms"]["p50"] / b50 if b50 > 0 else 0 for p in policies]
    fig, ax = plt.subplots(figsize=(8, 5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], gpu, width=0.4, label="prefill GPU seconds")
    ax.bar([i + 0.2 for i in x], ttft, width=0.4, label="TTFT p50 from arrival")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("relative to recompute")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    print("wrote", path)


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    report_path, csv_path, out = sys.argv[1:]
    with open(report_path) as f:
        report = json.load(f)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    os.makedirs(out, exist_ok=True)
    title = f'{report["model"]} on {report["accelerator"]}, {report["sessions"]} sessions'
    ttft_cdf(rows, title, os.path.join(out, "sim_ttft_cdf.png"))
    hit_rates(report, title, os.path.join(out, "sim_hit_rates.png"))
    prefill(report, title, os.path.join(out, "sim_prefill.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
