#!/usr/bin/env bash
# kvtierd and llama.cpp's llama-server with the same memory, each replaying one trace twice:
# straight through, and restarted halfway (issue 16). What a restart costs each: kvtierd writes
# DRAM to disk when it stops and reads the chats back from its disk tier; llama-server keeps its
# prompt cache in RAM only (its slots and --cache-ram), so it starts over.
#
#   restart-peers.sh MODEL TRACE OUT [CACHE_MIB]
#
# Same memory: llama-server -np 4 holds 4 x 8,192 tokens of F16 KV in its context (for
# SmolLM2-135M, 23,040 bytes a token: 720 MiB) plus a host prompt cache of CACHE_MIB
# (--cache-ram, default 256); kvtierd gets an HBM arena of 720 MiB and CACHE_MIB of DRAM, and its
# disk tier, which llama-server has no counterpart of. The same client (peer_replay.py), one
# request at a time in the trace's order, max_tokens 1, streamed; release build; 2 threads each.
# Results: OUT/{kvtierd,llama-server}-{straight,first-half,second-half}.json and summary.md.
# KVTIERD_TOML: extra lines for kvtierd's configuration (e.g. $'[engine]\nactivation_bits = 8').
set -euo pipefail
model=${1:?model}; trace=${2:?trace}; out=${3:?out dir}; cache=${4:-256}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
mkdir -p "$out"
"$here/llama-server.sh" build > /dev/null
scratch=$(mktemp -d /tmp/kvtier-restart-XXXXXX)
kpid=""; lpid=""
cleanup() {
    [ -n "$kpid" ] && kill "$kpid" 2>/dev/null || true
    [ -n "$lpid" ] && "$here/llama-server.sh" stop "$lpid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
half=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["order"]) // 2)' "$trace")

printf '[store]\nhbm_bytes = "720MiB"\ndram_bytes = "%sMiB"\n%s\n' "$cache" "${KVTIERD_TOML:-}" \
    > "$scratch/kvtierd.toml"
start_kvtierd() {  # state directory
    "$root/.build/release/kvtierd" --model "$model" --socket "$scratch/k.sock" --state-dir "$1" --threads 2 \
        --config "$scratch/kvtierd.toml" 2>> "$out/kvtierd.log" &
    kpid=$!
    for _ in $(seq 1 300); do
        curl -sf --unix-socket "$scratch/k.sock" http://kvtier/healthz > /dev/null 2>&1 && return
        sleep 0.1
    done
    echo "kvtierd did not start; see $out/kvtierd.log" >&2; exit 1
}
stop_kvtierd() { kill -TERM "$kpid"; wait "$kpid" 2>/dev/null || true; kpid=""; }
replay_kvtierd() {  # label file [peer_replay args]
    python3 "$here/peer_replay.py" --trace "$trace" --unix-socket "$scratch/k.sock" --label "$1" --out "$out/$2" "${@:3}"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_llama() { lpid=$("$here/llama-server.sh" run "$model" "$port" 4 --cache-ram "$cache"); }
stop_llama() { "$here/llama-server.sh" stop "$lpid"; lpid=""; }
replay_llama() {
    python3 "$here/peer_replay.py" --trace "$trace" --url "http://127.0.0.1:$port" --label "$1" --out "$out/$2" "${@:3}"
}

start_kvtierd "$scratch/state-straight"
replay_kvtierd "kvtierd" kvtierd-straight.json
stop_kvtierd
start_kvtierd "$scratch/state-restart"
replay_kvtierd "kvtierd" kvtierd-first-half.json --limit "$half"
stop_kvtierd
start_kvtierd "$scratch/state-restart"
replay_kvtierd "kvtierd, restarted" kvtierd-second-half.json --start "$half"
stop_kvtierd

start_llama
replay_llama "llama-server" llama-server-straight.json
stop_llama
start_llama
replay_llama "llama-server" llama-server-first-half.json --limit "$half"
stop_llama
start_llama
replay_llama "llama-server, restarted" llama-server-second-half.json --start "$half"
stop_llama

python3 - "$out" "$half" "$cache" <<'PY'
import json, statistics, sys
out, half, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q * len(xs) + 0.5)) - 1))] if xs else float("nan")
rows = [f"Memory: 720 MiB of KV context (HBM arena / 4 slots) + {cache} MiB host cache (DRAM / --cache-ram) each.", "",
        "| system | second half of the trace | turns 2+ | TTFT p50 (ms) | p90 | mean | tokens reused / computed |",
        "|---|---|---:|---:|---:|---:|---|"]
for system in ["kvtierd", "llama-server"]:
    straight = json.load(open(f"{out}/{system}-straight.json"))["turns"][half:]
    restarted = json.load(open(f"{out}/{system}-second-half.json"))["turns"]
    for how, turns in [("straight through", straight), ("after a restart", restarted)]:
        later = [t for t in turns if t["ok"] and t["turn"] >= 1]
        ttft = [t["ttft_ms"] for t in later]
        if system == "kvtierd":
            reused = sum((t.get("kvtier") or {}).get("tokens_reused", 0) for t in later)
            computed = sum((t.get("kvtier") or {}).get("tokens_recomputed", 0) for t in later)
        else:
            reused = sum((t.get("timings") or {}).get("cache_n", 0) for t in later)
            computed = sum((t.get("timings") or {}).get("prompt_n", 0) for t in later)
        rows.append(f"| {system} | {how} | {len(later)} | {pct(ttft, 0.5):.1f} | {pct(ttft, 0.9):.1f} | "
                    f"{statistics.fmean(ttft) if ttft else float('nan'):.1f} | {reused:,} / {computed:,} |")
open(f"{out}/summary.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
