#!/usr/bin/env python3
"""Render PNG plots from the JSON written by `kvtier-bench replay`.

Usage:
    python3 deploy/bench/plot_replay.py RESULTS.json OUTDIR [--peers PEERS1.json PEERS2.json ...]

Writes into OUTDIR (each plot is skipped, with a message, when its input is missing or empty):
    ttft_cdf.png          empirical CDF of per-turn TTFT (ms, log x) per policy, turns 2+
    hit_rate_vs_dram.png  hit rate (%) vs DRAM capacity (MiB) from results["sweep"], overall
                          per policy plus the per-tier shares (hbm/dram/disk) stacked per policy
    stall_overlap.png     mean load stall per turn and mean TTFT (ms), turns 2+, for
                          kvtier / kvtier-no-overlap / kvtier-sync-save
    peers_ttft.png        (only with --peers) per-turn TTFT (ms, log) per peer "system", turns 2+

"Turns 2+" means every turn but the first of its session: turn indices in the JSON are
0-based, so the first turn is the lowest index seen in the file (0; 1 if a file is 1-based).

Needs matplotlib (python3 -m pip install matplotlib). Uses the headless Agg backend.
"""

import argparse
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

MIB = 1024.0 * 1024.0
TIERS = ("hbm", "dram", "disk")
TIER_COLORS = {"hbm": "#2ca02c", "dram": "#1f77b4", "disk": "#ff7f0e"}
OVERLAP_POLICIES = ("kvtier", "kvtier-no-overlap", "kvtier-sync-save")
DPI = 120


# ----------------------------------------------------------------------------- helpers

def note(msg):
    print("plot_replay: " + msg, file=sys.stderr)


def load_json(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        note("cannot read %s: %s" % (path, e))
        return None


def as_float(v):
    """A finite float, or None."""
    if isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def as_list(v):
    return v if isinstance(v, list) else []


def as_dict(v):
    return v if isinstance(v, dict) else {}


def valid_turns(turns):
    return [t for t in as_list(turns) if isinstance(t, dict)]


def first_turn_index(turns):
    """Lowest turn index in the list (0 for 0-based files); None when no turn has one."""
    idx = [as_float(t.get("turn")) for t in turns]
    idx = [i for i in idx if i is not None]
    return min(idx) if idx else None


def turns_2plus(turns, first=None):
    """Every turn whose index is above the first turn's. Turns without an index are kept."""
    turns = valid_turns(turns)
    if first is None:
        first = first_turn_index(turns)
    if first is None:
        return turns
    out = []
    for t in turns:
        i = as_float(t.get("turn"))
        if i is None or i > first:
            out.append(t)
    return out


def values(turns, key):
    vals = [as_float(t.get(key)) for t in turns]
    return [v for v in vals if v is not None]


def positive(vals):
    return [v for v in vals if v > 0]


def color_map(names):
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    out = {}
    for n in names:
        if n not in out:
            out[n] = cycle[len(out) % len(cycle)]
    return out


def plot_cdf(ax, vals, label, color=None, linestyle="-"):
    vals = sorted(vals)
    n = len(vals)
    xs = [vals[0]] + vals  # start at 0 so the first step is drawn
    ys = [0.0] + [(i + 1) / n for i in range(n)]
    ax.step(xs, ys, where="post", label=label, color=color, linestyle=linestyle, linewidth=1.6)


def ms_formatter():
    return FuncFormatter(lambda x, _pos: "%g" % x)


def save(fig, outdir, name, written):
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    written.append(path)


def policy_entries(results):
    out = []
    for p in as_list(results.get("policies")):
        if isinstance(p, dict) and p.get("policy") is not None:
            out.append(p)
    return out


def workload_summary(results):
    wl = as_dict(results.get("workload"))
    preset = results.get("preset", "?")
    parts = []
    if wl.get("sessions") is not None:
        parts.append("%s sessions" % wl.get("sessions"))
    if wl.get("turns") is not None:
        parts.append("%s turns" % wl.get("turns"))
    if not parts:
        convs = as_list(results.get("conversations"))
        if convs:
            parts.append("%d conversations" % len(convs))
    return "preset %s" % preset + (" — " + ", ".join(parts) if parts else "")


# ----------------------------------------------------------------------------- plots

def plot_ttft_cdf(results, outdir, written, colors):
    policies = policy_entries(results)
    if not policies:
        note("skipping ttft_cdf.png: no results[\"policies\"]")
        return
    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = 0
    total_turns = 0
    for p in policies:
        name = str(p["policy"])
        vals = values(turns_2plus(p.get("turns")), "ttft_ms")
        pos = positive(vals)
        if len(pos) < len(vals):
            note("ttft_cdf.png: %s: dropped %d non-positive TTFT(s) (log axis)"
                 % (name, len(vals) - len(pos)))
        if not pos:
            note("ttft_cdf.png: %s: no turn-2+ TTFTs, left out" % name)
            continue
        plot_cdf(ax, pos, "%s (n=%d, p50 %.1f ms)" % (name, len(pos), statistics.median(pos)),
                 color=colors.get(name))
        drawn += 1
        total_turns = max(total_turns, len(pos))
    if not drawn:
        plt.close(fig)
        note("skipping ttft_cdf.png: no policy has per-turn TTFTs for turns 2+")
        return
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ms_formatter())
    ax.set_xlabel("TTFT per turn (ms, log scale)")
    ax.set_ylabel("fraction of turns ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.12)
    ax.set_title("TTFT CDF, turns 2+ — %s" % workload_summary(results))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="policy")
    save(fig, outdir, "ttft_cdf.png", written)


def to_percent(rates):
    """Hit rates are fractions (0..1); a file with any value above 1 is taken as percent."""
    if any(r > 1.0 + 1e-9 for r in rates):
        return 1.0
    return 100.0


def plot_hit_rate_vs_dram(results, outdir, written, colors):
    sweep = [s for s in as_list(results.get("sweep")) if isinstance(s, dict)]
    series = {}  # policy -> list of (mib, overall, {tier: share})
    for s in sweep:
        name = s.get("policy")
        dram = as_float(s.get("dram_bytes"))
        rate = as_float(s.get("hit_rate"))
        if name is None or dram is None:
            continue
        by_tier = as_dict(s.get("hit_rate_by_tier"))
        tiers = {t: as_float(by_tier.get(t)) for t in TIERS}
        if rate is None:
            known = [v for v in tiers.values() if v is not None]
            rate = sum(known) if known else None
        if rate is None:
            continue
        series.setdefault(str(name), []).append((dram / MIB, rate, tiers))
    if not series:
        note("skipping hit_rate_vs_dram.png: results[\"sweep\"] is missing or empty")
        return

    all_rates = [r for pts in series.values() for (_, r, _) in pts]
    all_rates += [v for pts in series.values() for (_, _, t) in pts
                  for v in t.values() if v is not None]
    scale = to_percent(all_rates)
    xs_all = [x for pts in series.values() for (x, _, _) in pts if x > 0]
    logx = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8

    names = list(series.keys())
    has_tiers = {n: any(v is not None for (_, _, t) in series[n] for v in t.values())
                 for n in names}
    tier_panels = [n for n in names if has_tiers[n]]
    ncols = 1 + len(tier_panels)
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 5), sharey=True, squeeze=False)
    axes = axes[0]

    def style_x(ax):
        if logx:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _p: "%g" % x))
        ax.set_xlabel("DRAM capacity (MiB%s)" % (", log scale" if logx else ""))
        ax.grid(True, alpha=0.35)

    ax = axes[0]
    for n in names:
        pts = sorted(series[n], key=lambda p: p[0])
        ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], marker="o", linewidth=2,
                color=colors.get(n), label=n)
    style_x(ax)
    ax.set_ylabel("hit rate (% of reusable tokens)")
    ax.set_title("memory hit rate (reusable KV in HBM or DRAM)")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, title="policy")

    for ax, n in zip(axes[1:], tier_panels):
        pts = sorted(series[n], key=lambda p: p[0])
        xs = [p[0] for p in pts]
        stacks = [[(p[2].get(t) or 0.0) * scale for p in pts] for t in TIERS]
        ax.stackplot(xs, *stacks, labels=["from %s" % t for t in TIERS],
                     colors=[TIER_COLORS[t] for t in TIERS], alpha=0.55)
        ax.plot(xs, [p[1] * scale for p in pts], marker="o", linewidth=2, color="black",
                label="memory hit rate (hbm + dram)")
        style_x(ax)
        ax.set_title("%s: reuse by tier (stacked; disk on top)" % n)
        ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)

    top = max([p[1] * scale for pts in series.values() for p in pts] + [1e-9])
    axes[0].set_ylim(0, min(105.0, top * 1.15) if scale == 100.0 else top * 1.15)
    fig.suptitle("Hit rate vs DRAM capacity — %s" % workload_summary(results))
    fig.tight_layout()
    save(fig, outdir, "hit_rate_vs_dram.png", written)


def plot_stall_overlap(results, outdir, written, colors):
    by_name = {str(p["policy"]): p for p in policy_entries(results)}
    rows = []  # (name, stall_ms, ttft_ms, n_turns)
    for name in OVERLAP_POLICIES:
        p = by_name.get(name)
        if p is None:
            note("stall_overlap.png: policy %s not in results, left out" % name)
            continue
        t2 = turns_2plus(p.get("turns"))
        stalls = values(t2, "stall_ms")
        ttfts = values(t2, "ttft_ms")
        stall = sum(stalls) / len(stalls) if stalls else as_float(p.get("load_stall_ms_mean"))
        ttft = (sum(ttfts) / len(ttfts) if ttfts
                else as_float(as_dict(p.get("ttft_ms_turn2plus")).get("mean")))
        if stall is None and ttft is None:
            note("stall_overlap.png: %s has no stall or TTFT data, left out" % name)
            continue
        rows.append((name, stall, ttft, max(len(stalls), len(ttfts))))
    if not rows:
        note("skipping stall_overlap.png: none of %s in results" % ", ".join(OVERLAP_POLICIES))
        return

    fig, axes = plt.subplots(1, 2, figsize=(max(9, 3.2 * len(rows) + 3), 5))
    labels = [r[0] for r in rows]
    for ax, idx, title in ((axes[0], 1, "mean load stall per turn"),
                           (axes[1], 2, "mean TTFT")):
        vals = [r[idx] for r in rows]
        heights = [v if v is not None else 0.0 for v in vals]
        bars = ax.bar(range(len(rows)), heights,
                      color=[colors.get(n, "C0") for n in labels], width=0.6)
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else "%.1f" % v,
                        (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=9, xytext=(0, 2),
                        textcoords="offset points")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=10)
        ax.set_ylabel("ms")
        ax.set_title("%s (ms), turns 2+" % title)
        ax.set_ylim(0, max(heights + [1e-9]) * 1.18)
        ax.grid(True, axis="y", alpha=0.35)
    fig.suptitle("Load/compute overlap — %s" % workload_summary(results))
    fig.tight_layout()
    save(fig, outdir, "stall_overlap.png", written)


def plot_peers(peer_paths, outdir, written):
    systems = []  # (label, ttfts)
    seen = {}
    for path in peer_paths:
        data = load_json(path)
        if data is None:
            continue
        if not isinstance(data, dict):
            note("peers_ttft.png: %s is not a JSON object, left out" % path)
            continue
        label = str(data.get("system") or os.path.splitext(os.path.basename(path))[0])
        if label in seen:
            label = "%s (%s)" % (label, os.path.basename(path))
        seen[label] = True
        vals = values(turns_2plus(data.get("turns")), "ttft_ms")
        pos = positive(vals)
        if len(pos) < len(vals):
            note("peers_ttft.png: %s: dropped %d non-positive TTFT(s) (log axis)"
                 % (label, len(vals) - len(pos)))
        if not pos:
            note("peers_ttft.png: %s (%s) has no turn-2+ TTFTs, left out" % (label, path))
            continue
        systems.append((label, sorted(pos)))
    if not systems:
        note("skipping peers_ttft.png: no peer file has per-turn TTFTs for turns 2+")
        return

    colors = color_map([s[0] for s in systems])
    fig, (ax_cdf, ax_box) = plt.subplots(
        1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for label, vals in systems:
        plot_cdf(ax_cdf, vals,
                 "%s (n=%d, p50 %.1f ms)" % (label, len(vals), statistics.median(vals)),
                 color=colors[label])
    ax_cdf.set_xscale("log")
    ax_cdf.xaxis.set_major_formatter(ms_formatter())
    ax_cdf.set_xlabel("TTFT per turn (ms, log scale)")
    ax_cdf.set_ylabel("fraction of turns ≤ x")
    ax_cdf.set_ylim(0, 1.02)
    ax_cdf.grid(True, which="major", alpha=0.4)
    ax_cdf.grid(True, which="minor", alpha=0.12)
    ax_cdf.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9,
                  title="system")
    ax_cdf.set_title("CDF")

    box = ax_box.boxplot([v for _, v in systems], patch_artist=True,
                         showfliers=True, whis=(1, 99))
    for patch, (label, _) in zip(box["boxes"], systems):
        patch.set_facecolor(colors[label])
        patch.set_alpha(0.55)
    ax_box.set_xticks(range(1, len(systems) + 1))
    ax_box.set_xticklabels([s[0] for s in systems], rotation=15, ha="right")
    ax_box.set_yscale("log")
    ax_box.yaxis.set_major_formatter(ms_formatter())
    ax_box.set_ylabel("TTFT per turn (ms, log scale)")
    ax_box.set_title("box: quartiles, whiskers p1–p99")
    ax_box.grid(True, axis="y", which="major", alpha=0.4)

    fig.suptitle("Per-turn TTFT by system, turns 2+")
    fig.tight_layout()
    save(fig, outdir, "peers_ttft.png", written)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Plot `kvtier-bench replay` results (PNG, headless).",
        usage="python3 deploy/bench/plot_replay.py RESULTS.json OUTDIR "
              "[--peers PEERS1.json PEERS2.json ...]")
    ap.add_argument("results", help="JSON written by `kvtier-bench replay`")
    ap.add_argument("outdir", help="folder for the PNGs (created if missing)")
    ap.add_argument("--peers", nargs="+", default=[], metavar="PEERS.json",
                    help="per-system TTFT files ({\"system\": ..., \"turns\": [...]})")
    args = ap.parse_args(argv)

    results = load_json(args.results)
    if results is None:
        return 2
    if not isinstance(results, dict):
        note("%s: top level is not a JSON object" % args.results)
        return 2
    try:
        os.makedirs(args.outdir, exist_ok=True)
    except OSError as e:
        note("cannot create %s: %s" % (args.outdir, e))
        return 2

    names = [str(p["policy"]) for p in policy_entries(results)]
    names += [str(s.get("policy")) for s in as_list(results.get("sweep"))
              if isinstance(s, dict) and s.get("policy") is not None]
    colors = color_map(names)

    written = []
    for fn in (plot_ttft_cdf, plot_hit_rate_vs_dram, plot_stall_overlap):
        try:
            fn(results, args.outdir, written, colors)
        except Exception as e:  # one bad plot must not lose the others
            plt.close("all")
            note("%s failed: %s: %s" % (fn.__name__, type(e).__name__, e))
    if args.peers:
        try:
            plot_peers(args.peers, args.outdir, written)
        except Exception as e:
            plt.close("all")
            note("plot_peers failed: %s: %s" % (type(e).__name__, e))

    for path in written:
        print(path)
    if not written:
        note("no plots written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
