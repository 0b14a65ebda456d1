#!/usr/bin/env bash
# A local Redis Cluster for `kvtier-bench remote`: N masters (no replicas) on loopback.
#
#   redis-cluster.sh start DIR FIRST_PORT [MASTERS]   start MASTERS (default 3) nodes from FIRST_PORT,
#                                                     join them, wait until every slot is served
#   redis-cluster.sh stop DIR                         stop the nodes `start` left in DIR
#
# Set up as docs/operations.md recommends for KVTier (cluster-require-full-coverage no; no
# maxmemory here: the benchmark's working set is small). Needs redis-server and redis-tools
# (`make setup` installs them).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,9p' "$0"; exit 2; }

case "$cmd" in
start)
    first=${3:?first port}
    masters=${4:-3}
    mkdir -p "$dir"
    nodes=()
    for i in $(seq 0 $((masters - 1))); do
        port=$((first + i))
        mkdir -p "$dir/$port"
        cat > "$dir/$port/redis.conf" <<CONF
port $port
bind 127.0.0.1
dir $dir/$port
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
cluster-require-full-coverage no
save ""
appendonly no
daemonize yes
pidfile $dir/$port/redis.pid
logfile $dir/$port/redis.log
CONF
        redis-server "$dir/$port/redis.conf"
        nodes+=("127.0.0.1:$port")
    done
    for n in "${nodes[@]}"; do
        until redis-cli -p "${n##*:}" ping >/dev/null 2>&1; do sleep 0.1; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    until redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok'; do sleep 0.1; done
    echo "${nodes[*]}"
    ;;
stop)
    for pidfile in "$dir"/*/redis.pid; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    ;;
*)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
