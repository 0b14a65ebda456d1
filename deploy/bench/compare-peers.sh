#!/bin/bash
# Replays one trace (kvtier-bench replay --export-trace) through kvtierd over its Unix socket
# and through llama.cpp's llama-server on loopback (prompt cache on, its default --cache-ram
# host cache; 1 and 4 slots), one after the other in one run, and plots the TTFT per turn.
# llama-server is built outside the repository by llama-server.sh.
# Usage: compare-peers.sh MODEL TRACE OUTDIR
set -euo pipefail
model="$1"; trace="$2"; out="$3"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[ -f "$trace" ] || { echo "no trace at $trace: export one with \`kvtier-bench replay --export-trace\` (make bench-peers does)" >&2; exit 2; }
mkdir -p "$out"
"$here/llama-server.sh" build

scratch="$(mktemp -d /tmp/kvtier-peers.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$scratch"
}
trap cleanup EXIT

# kvtierd with its defaults (HBM 512 MiB, DRAM 4 GiB, disk 20 GiB), release build.
"$root/.build/release/kvtierd" --model "$model" --socket "$scratch/k.sock" --state-dir "$scratch/state" \
    --threads 2 2> "$out/kvtierd.log" &
pids+=($!)
for _ in $(seq 1 120); do
    curl -sf --unix-socket "$scratch/k.sock" http://kvtier/healthz >/dev/null 2>&1 && break
    sleep 0.5
done
python3 "$here/peer_replay.py" --trace "$trace" --unix-socket "$scratch/k.sock" --label kvtierd --out "$out/kvtierd.json"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# 1 and 4 slots with the host cache (the peer as people run it), then 4 slots without it
# (--cache-ram 0: only what the slots themselves hold, like an engine's own prefix cache).
runs=("1 np1" "4 np4" "4 np4-cache-ram-0 --cache-ram 0")
for r in "${runs[@]}"; do
    read -r slots name extra <<< "$r"
    # shellcheck disable=SC2086 # $extra is a list of arguments
    pid=$("$here/llama-server.sh" run "$model" "$port" "$slots" $extra)
    pids+=("$pid")
    python3 "$here/peer_replay.py" --trace "$trace" --url "http://127.0.0.1:$port" --label "llama-server -np $slots${extra:+ $extra}" \
        --out "$out/llama-server-$name.json"
    "$here/llama-server.sh" stop "$pid"
done
files=(kvtierd.json llama-server-np1.json llama-server-np4.json llama-server-np4-cache-ram-0.json)

results="$(dirname "$trace")/replay.json"
if [ -f "$results" ]; then
    python3 "$here/plot_replay.py" "$results" "$out" --peers "${files[@]/#/$out/}"
fi
python3 - "$out" "${files[@]}" <<'PY'
import json, sys, os
out = sys.argv[1]
print("| system | TTFT p50 (ms) | p90 | p99 | mean | turns 2+: p50 | p90 | mean | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for f in sys.argv[2:]:
    d = json.load(open(os.path.join(out, f)))
    a, b = d["ttft_ms"], d["ttft_ms_turn2plus"]
    print(f"| {d['system']} | {a['p50']:.1f} | {a['p90']:.1f} | {a['p99']:.1f} | {a['mean']:.1f} | {b['p50']:.1f} | {b['p90']:.1f} | {b['mean']:.1f} | {d['errors']} |")
PY
