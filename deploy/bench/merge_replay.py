#!/usr/bin/env python3
"""Merge the JSON of several `kvtier-bench replay` runs of one trace into one results file.

Usage:
    python3 deploy/bench/merge_replay.py OUT.json RUN1/replay.json RUN2/replay.json ...

The standard preset takes longer than one sitting on a small machine, so its policies and DRAM
sweep points may come from separate runs (`--policies X --sweep ""`, `--policies "" --sweep N`).
Those runs are comparable only when they replayed the identical trace, so this refuses to merge
runs whose seed, workload or conversation ids differ (exit status 2, saying which).

Merged:
  * "policies": every policy of every run, in the order given; a policy that appears in two runs
    is an error (say which run to keep by leaving the other out).
  * "sweep": every run's sweep points, plus, for `kvtier` and `tiered-lru` runs at the
    workload's own DRAM size, that run as a sweep point (it is one: same trace, that DRAM size);
    a (policy, DRAM size) pair measured twice is an error.
  * "sources": which file each policy and sweep point came from, and each run's wall seconds.
The result has the layout `plot_replay.py` reads.
"""

import json
import sys

SWEEP_POLICIES = ("kvtier", "tiered-lru")


def die(msg):
    print("merge_replay: " + msg, file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        die("cannot read %s: %s" % (path, e))


def trace_identity(run):
    """What must be equal for two runs to have replayed the same trace (DRAM size aside)."""
    workload = dict(run.get("workload") or {})
    workload.pop("dram_bytes", None)
    workload.setdefault("replies", "teacher-forced")  # runs from before `--generate` existed
    return {"seed": run.get("seed"), "preset": run.get("preset"), "workload": workload,
            "conversations": run.get("conversations")}


def main(argv):
    if len(argv) < 3:
        die("usage: merge_replay.py OUT.json RUN.json [RUN.json ...]")
    out_path, inputs = argv[1], argv[2:]
    runs = [(p, load(p)) for p in inputs]
    first_path, first = runs[0]
    reference = trace_identity(first)
    for path, run in runs[1:]:
        other = trace_identity(run)
        for key in reference:
            if other[key] != reference[key]:
                die("%s and %s did not replay the same trace: their %s differ" % (first_path, path, key))

    merged = {k: v for k, v in first.items() if k not in ("policies", "sweep", "seconds")}
    merged["policies"], merged["sweep"] = [], []
    sources = {"runs": [], "policies": {}, "sweep": []}
    seen_sweep = {}
    default_dram = (first.get("workload") or {}).get("dram_bytes")

    def add_sweep_point(point, path):
        key = (point.get("policy"), point.get("dram_bytes"))
        if key in seen_sweep:
            die("sweep point %s at %s bytes of DRAM is in both %s and %s" % (key[0], key[1], seen_sweep[key], path))
        seen_sweep[key] = path
        merged["sweep"].append(point)
        sources["sweep"].append({"policy": key[0], "dram_bytes": key[1], "file": path})

    for path, run in runs:
        sources["runs"].append({"file": path, "seconds": run.get("seconds"),
                                "dram_bytes": (run.get("workload") or {}).get("dram_bytes")})
        for policy in run.get("policies") or []:
            name = policy.get("policy")
            if name in sources["policies"]:
                die("policy %s is in both %s and %s" % (name, sources["policies"][name], path))
            sources["policies"][name] = path
            merged["policies"].append(policy)
        for point in run.get("sweep") or []:
            add_sweep_point(point, path)
    for path, run in runs:
        dram = (run.get("workload") or {}).get("dram_bytes")
        for policy in run.get("policies") or []:
            if policy.get("policy") in SWEEP_POLICIES and dram == default_dram \
                    and (policy["policy"], dram) not in seen_sweep:
                add_sweep_point({"policy": policy["policy"], "dram_bytes": dram,
                                 "hit_rate": policy.get("hit_rate"),
                                 "hit_rate_by_tier": policy.get("hit_rate_by_tier")}, path)
    merged["sweep"].sort(key=lambda p: (p.get("dram_bytes") or 0, p.get("policy") or ""))
    merged["sources"] = sources
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=1, sort_keys=True)
        f.write("\n")
    print("merge_replay: %d policies, %d sweep points from %d runs -> %s"
          % (len(merged["policies"]), len(merged["sweep"]), len(runs), out_path))


if __name__ == "__main__":
    main(sys.argv)
