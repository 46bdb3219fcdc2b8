#!/usr/bin/env bash
# User-space instructions per request of the replica path (issue 17), counted by callgrind:
# repeatable on a loaded machine, unlike CPU time. For each binary given (LABEL=PATH; by
# default this tree's `--profile bench` build), modelgate runs under
# `valgrind --tool=callgrind --instr-atstart=no` (instrumentation switched on after startup
# and a warm-up, so only requests are counted), one worker, access log off, in front of three
# mock upstreams, for two models:
#
#   limited  three replicas (`urls`), `maxConcurrentRequests` 8 each: wrk -t1 -c1, so a slot
#            is always free (the data path: choose, take a slot, give it back);
#   queued   the same three replicas with `maxConcurrentRequests` 1 and a queue: wrk -t1 -c8,
#            so five requests wait at any time (the queue path: join, a freed slot granted
#            to the oldest waiter);
#   tiered   (issue 18; only with BENCH_SCENARIOS naming it) two replicas in tier 0 and a
#            provider in tier 1 under its own model name, wrk -t1 -c1: the provider is never
#            used, so this is what tiers and per-replica identities cost a healthy model.
#
# Instructions per request = callgrind's total Ir over the measured window / wrk's completed
# requests (bench/post.lua: ~1 KB body, model last). Output: bench/out/replicas_callgrind.md
# and the raw files under bench/out/replicas_callgrind/. Every process started here is
# stopped by its PID.
#
# Knobs: BENCH_SECONDS (4 s of measured load per run), BENCH_SKIP_BUILD=1,
# BENCH_SCENARIOS (default "limited queued"; add "tiered" for builds that have tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
RAW="$OUT/replicas_callgrind"
rm -rf "$RAW"
mkdir -p "$RAW"
SECONDS_PER_RUN=${BENCH_SECONDS:-4}
WORK=$(mktemp -d /tmp/modelgate-callgrind.XXXXXX)
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "replicas_callgrind: $*" >&2; exit 1; }
for tool in wrk valgrind callgrind_control python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    cargo build --profile bench -q --bin modelgate --example mock-upstream
fi
# (cargo puts the `bench` profile's output under target/release.)
MOCK="$ROOT/target/release/examples/mock-upstream"
[ -x "$MOCK" ] || die "no mock-upstream build"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("this=$ROOT/target/release/modelgate")

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    python3 - "$1" <<'PY' || die "nothing listens on port $1"
import socket, sys, time
deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

URLS=()
for i in 1 2 3; do
    p=$(free_port)
    "$MOCK" --listen "127.0.0.1:$p" --name "r$i" --no-pacing 2>"$WORK/mock$i.log" &
    PIDS+=($!)
    wait_port "$p"
    URLS+=("\"http://127.0.0.1:$p\"")
done
urls=$(IFS=,; echo "${URLS[*]}")

# Busy polling stays off in what is counted here (bench/nospin.sh).
source "$ROOT/bench/nospin.sh"

# run LABEL BIN SCENARIO MODEL_JSON CONNECTIONS
run() {
    local label=$1 bin=$2 scenario=$3 model=$4 conns=$5 port pid out wrk_out
    port=$(free_port)
    cat >"$WORK/$label-$scenario.json" <<EOF
{"listen": "127.0.0.1:$port", "workers": 1, "accessLog": false, $(nospin "$bin")
 "models": {"bench-model": $model}}
EOF
    out="$RAW/callgrind.$label.$scenario"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
        "$bin" --config "$WORK/$label-$scenario.json" 2>"$WORK/$label-$scenario.log" &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    # Warm-up (pools, first allocations), not counted.
    wrk -t1 -c"$conns" -d2s -s bench/post.lua "http://127.0.0.1:$port/v1/chat/completions" \
        >/dev/null 2>&1 || true
    callgrind_control -i on "$pid" >/dev/null
    wrk_out="$RAW/wrk.$label.$scenario.txt"
    wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN}s" --timeout 30s -s bench/post.lua \
        "http://127.0.0.1:$port/v1/chat/completions" >"$wrk_out" 2>&1 || die "wrk failed"
    callgrind_control -i off "$pid" >/dev/null
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    python3 - "$label" "$scenario" "$out" "$wrk_out" >>"$RAW/ir.tsv" <<'PY'
import re, sys
label, scenario, cg, wrk = sys.argv[1:]
total = None
for line in open(cg):
    if line.startswith(("summary:", "totals:")):
        total = int(line.split()[1])
text = open(wrk).read()
reqs = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{label}\t{scenario}\t{reqs}\t{bad.group(1) if bad else 0}\t{total}\t{total / max(reqs, 1):.0f}")
PY
    tail -n1 "$RAW/ir.tsv"
}

printf 'binary\tscenario\trequests\tnon2xx\tinstructions\tper_request\n' >"$RAW/ir.tsv"
for t in "${TARGETS[@]}"; do
    label=${t%%=*}
    bin=${t#*=}
    [ -x "$bin" ] || die "$bin is not executable"
    for scenario in ${BENCH_SCENARIOS:-limited queued}; do
        case $scenario in
            limited) run "$label" "$bin" limited "{\"urls\": [$urls], \"maxConcurrentRequests\": 8}" 1 ;;
            queued) run "$label" "$bin" queued \
                "{\"urls\": [$urls], \"maxConcurrentRequests\": 1, \"queue\": {\"size\": 64, \"timeout\": 30}}" 8 ;;
            tiered) run "$label" "$bin" tiered \
                "{\"urls\": [${URLS[0]}, ${URLS[1]}, {\"url\": ${URLS[2]}, \"priority\": 1, \"model\": \"provider-model\"}], \"maxConcurrentRequests\": 8}" 1 ;;
            *) die "unknown scenario $scenario" ;;
        esac
    done
done

{
    echo "| binary | scenario | requests | instructions per request |"
    echo "|---|---|---:|---:|"
    awk -F'\t' 'NR > 1 { printf "| %s | %s | %s | %s |\n", $1, $2, $3, $6 }' "$RAW/ir.tsv"
    echo
    echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/replicas_callgrind.md"
cat "$OUT/replicas_callgrind.md"
