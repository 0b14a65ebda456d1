#!/usr/bin/env bash
# A replay trace through kvtierd nodes (issue 18's benchmark): one node; two nodes with every turn
# routed to a random one, without a remote tier; the same two nodes sharing a Redis Cluster.
#
#   multi-node.sh MODEL TRACE OUT [REDIS_FIRST_PORT]
#
# Each configuration starts fresh nodes (release build, defaults otherwise, 2 threads each) and
# runs deploy/bench/peer_replay.py over their Unix sockets (the same client for all three, seed 0
# for the routing). Results: OUT/{one-node,two-nodes,two-nodes-remote}.json and summary.md.
set -euo pipefail
model=${1:?model}; trace=${2:?trace}; out=${3:?out dir}; port=${4:-27300}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
scratch=$(mktemp -d /tmp/kvtier-multi-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "$here/redis-cluster.sh" stop "$scratch/redis" || true
    rm -rf "$scratch"
}
trap cleanup EXIT

start_node() {  # name [config]
    local dir="$scratch/$1"; mkdir -p "$dir"
    local args=(--model "$model" --socket "$dir/k.sock" --state-dir "$dir/state" --threads 2)
    if [ -n "${2:-}" ]; then printf '%s\n' "$2" > "$dir/kvtierd.toml"; args+=(--config "$dir/kvtierd.toml"); fi
    "$root/.build/release/kvtierd" "${args[@]}" 2> "$out/$1.log" &
    pids+=($!)
    for _ in $(seq 1 300); do [ -S "$dir/k.sock" ] && break; sleep 0.1; done
}
scrape() {  # name...: each node's /metrics, kept for the summary
    for n in "$@"; do curl -s --unix-socket "$scratch/$n/k.sock" http://localhost/metrics > "$out/$n.metrics"; done
}
stop_nodes() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
}

start_node one
python3 "$here/peer_replay.py" --trace "$trace" --unix-socket "$scratch/one/k.sock" --label one-node --out "$out/one-node.json"
scrape one
stop_nodes

start_node a; start_node b
python3 "$here/peer_replay.py" --trace "$trace" --unix-socket "$scratch/a/k.sock" --unix-socket "$scratch/b/k.sock" \
    --label two-nodes --out "$out/two-nodes.json"
scrape a b
stop_nodes

"$here/redis-cluster.sh" start "$scratch/redis" "$port" > /dev/null
remote="[store.remote]
seeds = [\"127.0.0.1:$port\", \"127.0.0.1:$((port + 1))\", \"127.0.0.1:$((port + 2))\"]"
start_node ra "$remote"; start_node rb "$remote"
python3 "$here/peer_replay.py" --trace "$trace" --unix-socket "$scratch/ra/k.sock" --unix-socket "$scratch/rb/k.sock" \
    --label two-nodes-remote --out "$out/two-nodes-remote.json"
scrape ra rb
stop_nodes

python3 - "$out" <<'PY'
import json, re, sys
out = sys.argv[1]
nodes = {"one-node": ["one"], "two-nodes": ["a", "b"], "two-nodes-remote": ["ra", "rb"]}

def metrics(names):
    """Samples summed over the nodes: {(name, labels): value}."""
    total = {}
    for n in names:
        for line in open(f"{out}/{n}.metrics"):
            m = re.match(r'^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$', line.strip())
            if m:
                k = (m.group(1), m.group(2) or "")
                total[k] = total.get(k, 0) + float(m.group(3))
    return total

def quantile(q, samples, name):
    """Prometheus' histogram_quantile: linear within the bucket that holds the q-th sample."""
    buckets = sorted((float("inf") if le == "+Inf" else float(le), v) for (n, labels), v in samples.items()
                     if n == name + "_bucket" for le in re.findall(r'le="([^"]+)"', labels))
    if not buckets or buckets[-1][1] == 0:
        return None
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = le, count
    return lower

rows = ["| configuration | turns 2+: tokens reused | recomputed | TTFT p50 ms | TTFT p99 ms | hits by tier | "
        "MB read per tier (dram / disk / remote) | remote read per layer p50 / p99 ms | errors |",
        "|---|---:|---:|---:|---:|---|---|---|---:|"]
for name in ["one-node", "two-nodes", "two-nodes-remote"]:
    r = json.load(open(f"{out}/{name}.json"))
    t = r["ttft_ms_turn2plus"]
    m = metrics(nodes[name])
    read = " / ".join("%.0f" % (m.get(("kvtier_tier_bytes_out_total", '{tier="%s"}' % tier), 0) / 1e6)
                      for tier in ["dram", "disk", "remote"])
    p50 = quantile(0.5, m, "kvtier_remote_layer_read_seconds")
    p99 = quantile(0.99, m, "kvtier_remote_layer_read_seconds")
    layer = f"{p50 * 1000:.2f} / {p99 * 1000:.2f}" if p50 is not None else "-"
    rows.append(f"| {name} | {r.get('turn2plus_tokens_reused', 0)} | {r.get('turn2plus_tokens_recomputed', 0)} | "
                f"{t['p50']:.1f} | {t['p99']:.1f} | {r.get('turn2plus_hits', {})} | {read} | {layer} | {r['errors']} |")
open(f"{out}/summary.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
