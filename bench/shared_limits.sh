#!/usr/bin/env bash
# CPU cost of shared limits (issue 17), in callgrind instructions (repeatable on a loaded
# machine):
#
#   bench/shared_limits.sh [BINARY] [MOCK_BINARY]
#       default target/release/modelgate and target/release/examples/mock-upstream
#       (build them with `cargo build --profile bench --bin modelgate --example mock-upstream`
#       for symbols)
#
# 1. Per request, on the data path (bench/instructions.sh: one worker, a 1 KB chat request,
#    instructions of 2200 requests minus 200, divided by 2000), four variants:
#      open     no authTokens (for reference)
#      nolimit  a named key without limits (the bearer check and the key's counts)
#      local    the key with requestsPerMinute and tokensPerMinute (both huge: never refused)
#      shared   the same with sharedLimits on a redis-server started here; syncInterval 10 s
#               so the sync thread stays out of this figure (it is measured in 2.)
# 2. Per sync, on the limits thread: modelgate idle under callgrind for IDLE seconds (default
#    20) with syncInterval 0.1, once without sharedLimits and once with it, for 1 and for 100
#    limited keys; (instructions with - without) / syncs done (from /metrics).
# Needs valgrind, python3, curl and redis-server (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
BIN=$(realpath "${1:-target/release/modelgate}")
export MOCK_BIN=$(realpath "${2:-target/release/examples/mock-upstream}")
IDLE=${IDLE:-20}
for tool in valgrind python3 curl redis-server redis-cli; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/sl-redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
STORE="\"sharedLimits\": {\"url\": \"redis://127.0.0.1:$PORT\", \"syncInterval\": 10}"
HUGE='"requestsPerMinute": 60000000000, "tokensPerMinute": 60000000000'

echo "== per request (data path)"
for variant in open nolimit local shared; do
    case $variant in
        open) LABEL=sl-open bash bench/instructions.sh "$BIN" 200 2200; continue ;;
        nolimit) extra='"authTokens": [{"token": "sk-bench", "name": "bench"}]' ;;
        local) extra="\"authTokens\": [{\"token\": \"sk-bench\", \"name\": \"bench\", $HUGE}]" ;;
        shared) extra="\"authTokens\": [{\"token\": \"sk-bench\", \"name\": \"bench\", $HUGE}], $STORE" ;;
    esac
    LABEL="sl-$variant" TOKEN=sk-bench EXTRA_CONFIG="$extra" bash bench/instructions.sh "$BIN" 200 2200
done

echo "== per sync (limits thread), $IDLE s idle"
keys() { # n -> authTokens members
    python3 -c '
import json, sys
n = int(sys.argv[1])
print(json.dumps([{"token": f"sk-{i}", "name": f"k{i}", "requestsPerMinute": 600, "tokensPerMinute": 100000} for i in range(n)]))' "$1"
}
# Busy polling stays off in what is counted here (bench/nospin.sh).
source "$ROOT/bench/nospin.sh"
idle() { # label extra -> "instructions syncs"
    local label=$1 extra=$2 log="$OUT/sl-idle-$1.log"
    cat >"$OUT/sl-idle-$label.json" <<JSON
{ "listen": "127.0.0.1:0", "workers": 1, "accessLog": false, $(nospin "$BIN") $extra,
  "models": { "bench": { "url": "http://127.0.0.1:9" } } }
JSON
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.sl-idle-$label" \
        "$BIN" --config "$OUT/sl-idle-$label.json" 2>"$log" &
    local pid=$!
    for _ in $(seq 600); do grep -q 'listening on' "$log" && break; sleep 0.1; done
    local addr
    addr=$(grep -m1 'listening on' "$log" | sed -E 's/.*listening on ([^ ,]+).*/\1/')
    sleep "$IDLE"
    local syncs
    syncs=$(curl -s -H 'Authorization: Bearer sk-0' "http://$addr/metrics" \
        | awk '/^modelgate_shared_limits_syncs_total\{result="ok"\}/ {print $2}')
    kill -TERM $pid
    wait $pid || true
    echo "$(awk '/^totals:/ {print $2}' "$OUT/callgrind.sl-idle-$label") ${syncs:-0}"
}
for n in 1 100; do
    tokens=$(keys "$n")
    read -r off _ <<<"$(idle "off-$n" "\"authTokens\": $tokens")"
    read -r on syncs <<<"$(idle "on-$n" "\"authTokens\": $tokens, \"sharedLimits\": {\"url\": \"redis://127.0.0.1:$PORT\", \"syncInterval\": 0.1}")"
    echo "$n key(s): $(( (on - off) / syncs )) instructions per sync ($syncs syncs; idle ${IDLE} s: $off without, $on with)"
done
