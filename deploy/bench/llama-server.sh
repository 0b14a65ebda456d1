#!/usr/bin/env bash
# llama.cpp's llama-server as the side-by-side peer for KVTier's multi-turn benchmark.
#
#   llama-server.sh build                              fetch llama.cpp and build llama-server (idempotent)
#   llama-server.sh run MODEL PORT SLOTS [extra args]  start it on 127.0.0.1:PORT, wait for /health, print the PID
#   llama-server.sh stop PID                           stop a server that `run` started
#   llama-server.sh path                               print the llama-server binary path
#
# Source: the llama.cpp tree vendored in the llama-cpp-python 0.3.36 sdist from PyPI, i.e.
# llama.cpp commit 0c1e57098 (ggml-org/llama.cpp@0c1e57098bba43ac29e6e3b677cdceebdd22334f).
# The full llama.cpp repository is large; the sdist (~77 MB) carries the whole tree, server
# included. Its tree has no .git, so the binary reports "version 0.5.0-dev ... commit unknown".
# Everything is downloaded and built OUTSIDE the KVTier repository, under $KVTIER_PEERS_DIR.
#
# Build flags: the default build (native, OpenMP) wherever it runs. Only on a CPU with AMX are
# the CPU features named one by one (GGML_NATIVE=OFF) with AMX off: there the native build's
# Q4_0/Q4_1 matmuls go to ggml's AMX kernels, which crash with SIGILL (tileloadd) on some hosts;
# see the notes in the bench docs (cpu_flags below). OpenMP stays on. No web UI, no tests, no
# examples, no OpenSSL/curl, so nothing is downloaded during the build.
#
# Environment:
#   KVTIER_PEERS_DIR     work directory (default: $HOME/.cache/kvtier-peers)
#   KVTIER_LLAMA_SERVER  use this llama-server binary instead of the one `build` makes
#   KVTIER_LLAMA_JOBS    parallel build jobs (default: nproc)
#   KVTIER_LLAMA_CMAKE_ARGS  extra cmake configure arguments (word-split)
#   KVTIER_LLAMA_LOG_DIR log directory for `run` (default: $KVTIER_PEERS_DIR/logs)
#   KVTIER_LLAMA_THREADS threads for `run` (default: 2)
set -euo pipefail

LCP_VERSION=0.3.36                 # llama-cpp-python sdist that vendors llama.cpp
LLAMA_COMMIT=0c1e57098             # llama.cpp commit vendored by that sdist
PEERS_DIR="${KVTIER_PEERS_DIR:-$HOME/.cache/kvtier-peers}"
DL_DIR="$PEERS_DIR/dl"
SRC_DIR="$PEERS_DIR/llama.cpp-$LLAMA_COMMIT"
BUILD_DIR="$SRC_DIR/build"
BIN="${KVTIER_LLAMA_SERVER:-$BUILD_DIR/bin/llama-server}"
LOG_DIR="${KVTIER_LLAMA_LOG_DIR:-$PEERS_DIR/logs}"

prog=$(basename "$0")
say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { say "$*"; exit 1; }

usage() {
    cat >&2 <<EOF
usage: $prog build
       $prog run MODEL PORT SLOTS [extra llama-server args...]
       $prog stop PID
       $prog path
EOF
    exit 2
}

# Runs a command as root: directly when root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing $*; install it (no apt-get here)"
    say "installing $* with apt-get"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# -D flags for ggml's CPU backend. The default build (GGML_NATIVE=ON, OpenMP) is what llama.cpp's
# users get, and it is used wherever it runs. On a CPU with AMX the native build dies with SIGILL
# on the first decode of this model (docs/benchmarks.md), so there the CPU's features are named
# one by one, AMX left out; OpenMP stays on as in the default build.
cpu_flags() {
    case "$(uname -m)" in
        x86_64|amd64) ;;
        *) return ;;   # no AMX off x86: the default build
    esac
    local f
    f=" $(grep -m1 -E '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
    case "$f" in *" amx_tile "*) ;; *) return ;; esac   # no AMX: the default build
    has() { case "$f" in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
    echo "-DGGML_NATIVE=OFF" \
         "-DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)" \
         "-DGGML_BMI2=$(has bmi2) -DGGML_AVX_VNNI=$(has avx_vnni)" \
         "-DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi)" \
         "-DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)" \
         "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}

cmd_build() {
    if [ -x "$BIN" ]; then
        say "llama-server already built: $BIN (llama.cpp $LLAMA_COMMIT); nothing to do"
        echo "$BIN"
        return
    fi
    [ -z "${KVTIER_LLAMA_SERVER:-}" ] || die "KVTIER_LLAMA_SERVER=$KVTIER_LLAMA_SERVER is not an executable"
    say "building llama-server from llama.cpp commit $LLAMA_COMMIT (vendored in llama-cpp-python $LCP_VERSION) in $PEERS_DIR"
    mkdir -p "$DL_DIR"
    local tarball="$DL_DIR/llama_cpp_python-$LCP_VERSION.tar.gz"
    if [ ! -f "$tarball" ]; then
        local pip=(python3 -m pip)
        command -v pip3 >/dev/null 2>&1 && pip=(pip3)
        "${pip[@]}" download --no-deps --no-binary llama-cpp-python -d "$DL_DIR" "llama-cpp-python==$LCP_VERSION" >&2
        [ -f "$tarball" ] || die "pip download did not produce $tarball"
    else
        say "using $tarball"
    fi

    if [ ! -f "$SRC_DIR/CMakeLists.txt" ]; then
        local tmp="$PEERS_DIR/extract.$$"
        rm -rf "$tmp" && mkdir -p "$tmp"
        tar xzf "$tarball" -C "$tmp"
        local vendored="$tmp/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
        [ -f "$vendored/CMakeLists.txt" ] || die "no vendor/llama.cpp in $tarball"
        rm -rf "$SRC_DIR"
        mv "$vendored" "$SRC_DIR"
        # The submodule's gitfile points into the sdist's .git, which stays behind: remove it.
        if [ -f "$SRC_DIR/.git" ]; then rm -f "$SRC_DIR/.git"; fi
        rm -rf "$tmp"
    fi

    command -v cmake >/dev/null 2>&1 || apt_install cmake
    if ! command -v c++ >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
        apt_install g++ make
    fi

    local jobs="${KVTIER_LLAMA_JOBS:-$(nproc 2>/dev/null || echo 2)}"
    local flags
    flags=$(cpu_flags)
    local start=$SECONDS
    # shellcheck disable=SC2086  # flags and extra args are word lists
    cmake -S "$SRC_DIR" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
        $flags ${KVTIER_LLAMA_CMAKE_ARGS:-} >&2
    cmake --build "$BUILD_DIR" --config Release --target llama-server -j "$jobs" >&2
    [ -x "$BIN" ] || die "build finished but $BIN is missing"
    say "built in $((SECONDS - start)) s: $BIN"
    say "llama.cpp commit $LLAMA_COMMIT; $("$BIN" --version 2>&1 | grep -m1 -i version || true)"
    echo "$BIN"
}

cmd_path() {
    [ -x "$BIN" ] || die "llama-server is not built yet ($BIN); run: $prog build"
    echo "$BIN"
}

# HTTP status of GET url ("000" when nothing answers).
http_status() {
    if command -v curl >/dev/null 2>&1; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true
    else
        python3 - "$1" <<'EOF' || true
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status, end="")
except urllib.error.HTTPError as e:
    print(e.code, end="")
except Exception:
    print("000", end="")
EOF
    fi
}

cmd_run() {
    [ $# -ge 3 ] || usage
    local model=$1 port=$2 slots=$3
    shift 3
    [ -x "$BIN" ] || die "llama-server is not built yet ($BIN); run: $prog build"
    [ -f "$model" ] || die "no model file: $model"
    case "$port" in ''|*[!0-9]*) die "PORT must be a number: $port" ;; esac
    case "$slots" in ''|*[!0-9]*|0) die "SLOTS must be a positive number: $slots" ;; esac
    if [ "$(http_status "http://127.0.0.1:$port/health")" != 000 ]; then
        die "something already answers on 127.0.0.1:$port"
    fi

    local args=(-m "$model" --host 127.0.0.1 --port "$port"
                -np "$slots" -c $((8192 * slots)) -t "${KVTIER_LLAMA_THREADS:-2}")
    # Prompt caching: cache_prompt is on by default for every request (and the replay sends it
    # anyway); the host-RAM prompt cache keeps its default size, --cache-ram 8192 (MiB). Each
    # of the SLOTS slots gets 8192 tokens of context (-c is the total, split across slots).
    if "$BIN" --help 2>&1 | grep -q -- '--no-webui'; then
        args+=(--no-webui)
    fi
    mkdir -p "$LOG_DIR"
    local log="$LOG_DIR/llama-server-$port.log"
    say "starting: $BIN ${args[*]} $*"
    say "log: $log"
    # setsid: the server does not die with this shell's terminal or process group.
    setsid "$BIN" "${args[@]}" "$@" >"$log" 2>&1 </dev/null &
    local pid=$!

    local deadline=$((SECONDS + 120)) code=000
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "llama-server exited during startup (log: $log)"
        fi
        code=$(http_status "http://127.0.0.1:$port/health")
        [ "$code" = 200 ] && break
        sleep 0.5
    done
    if [ "$code" != 200 ]; then
        kill "$pid" 2>/dev/null || true
        tail -n 20 "$log" >&2 || true
        die "llama-server did not answer /health with 200 within 120 s (last: $code; log: $log)"
    fi
    say "ready on http://127.0.0.1:$port (pid $pid, llama.cpp $LLAMA_COMMIT)"
    echo "$pid"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local pid=$1
    case "$pid" in ''|*[!0-9]*) die "PID must be a number: $pid" ;; esac
    if ! kill -0 "$pid" 2>/dev/null; then
        say "no process $pid"
        return 0
    fi
    local comm
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || ps -o comm= -p "$pid" 2>/dev/null || true)
    case "$comm" in
        llama-server*) ;;
        *) die "process $pid is '$comm', not llama-server; not stopping it" ;;
    esac
    kill -TERM "$pid"
    local i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { say "stopped $pid"; return 0; }
        sleep 0.1
    done
    say "$pid still running after 10 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

[ $# -ge 1 ] || usage
sub=$1
shift
case "$sub" in
    build) [ $# -eq 0 ] || usage; cmd_build ;;
    run)   cmd_run "$@" ;;
    stop)  cmd_stop "$@" ;;
    path)  [ $# -eq 0 ] || usage; cmd_path ;;
    -h|--help|help) usage ;;
    *) usage ;;
esac
