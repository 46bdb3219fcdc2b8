#!/usr/bin/env bash
# Replica benchmark (issue 9), loopback only, a few minutes after the release build:
#
# 1. CPU per request, 1 replica vs 3: wrk -c64 with bench/post.lua (~1 KB body, model last)
#    against modelgate (workers 1, access log off) routing `bench-model` to one mock upstream,
#    then to three (`urls`, least-outstanding), then to the first mock listed three times
#    (the balancer's own cost with the upstream side unchanged). CPU = modelgate's utime+stime ticks over the
#    run / requests. Interleaved (1 3 1 3 ...), BENCH_REPEATS rounds, medians.
# 2. SSE time to first byte with one slow replica: three bench/replica_sse.py upstreams, two
#    serving 32 streams at once and one only 2 (a replica on a smaller GPU: requests beyond
#    its capacity wait for a slot), each stream 16 events 10 ms apart after 20 ms. BENCH_SSE_CLIENTS
#    closed-loop streaming clients for BENCH_SSE_SECONDS against modelgate with
#    `"balance": "least-outstanding"` and with `"round-robin"`, interleaved; p50/p90/p99 of the
#    time to the response head, and the slow replica's share of requests (from /metrics).
#
# Knobs: BENCH_DURATION (5 s per wrk run), BENCH_REPEATS (3), BENCH_SSE_CLIENTS (24),
# BENCH_SSE_SECONDS (10), BENCH_SKIP_BUILD=1, BENCH_SKIP_SSE=1 (part 1 only). Output: bench/out/replicas.md (tables) and the
# raw lines under bench/out/replicas/. Every process started here is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
RAW="$OUT/replicas"
rm -rf "$RAW"
mkdir -p "$RAW"

DURATION=${BENCH_DURATION:-5}
REPEATS=${BENCH_REPEATS:-3}
SSE_CLIENTS=${BENCH_SSE_CLIENTS:-24}
SSE_SECONDS=${BENCH_SSE_SECONDS:-10}
LOAD_BEFORE=$(cut -d" " -f1-3 /proc/loadavg)
WORK=$(mktemp -d /tmp/modelgate-replicas.XXXXXX)
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

die() { echo "replicas: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is needed"
command -v python3 >/dev/null || die "python3 is needed"

if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    cargo build --release -q --bin modelgate --example mock-upstream
fi
BIN="$ROOT/target/release/modelgate"
MOCK="$ROOT/target/release/examples/mock-upstream"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    python3 - "$1" <<'PY' || die "nothing listens on port $1"
import socket, sys, time
deadline = time.time() + 20
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
PY
}

# CPU ticks (utime+stime, all threads) of one process.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
CLK_TCK=$(getconf CLK_TCK)

# start_gate NAME MODEL_JSON -> sets GATE_PORT and GATE_PID
start_gate() {
    local name=$1 model=$2
    GATE_PORT=$(free_port)
    cat >"$WORK/$name.json" <<EOF
{"listen": "127.0.0.1:$GATE_PORT", "workers": 1, "accessLog": false,
 "models": {"bench-model": $model, "m": $model}}
EOF
    "$BIN" --config "$WORK/$name.json" 2>"$WORK/$name.log" &
    GATE_PID=$!
    PIDS+=("$GATE_PID")
    wait_port "$GATE_PORT"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- 1. CPU per request, 1 vs 3 replicas ------------------------------------------------
MOCK_URLS=()
for i in 1 2 3; do
    p=$(free_port)
    "$MOCK" --listen "127.0.0.1:$p" --name "r$i" --no-pacing 2>"$WORK/mock$i.log" &
    PIDS+=($!)
    wait_port "$p"
    MOCK_URLS+=("http://127.0.0.1:$p")
done
start_gate one "{\"url\": \"${MOCK_URLS[0]}\"}"
ONE_PORT=$GATE_PORT ONE_PID=$GATE_PID
start_gate three "{\"urls\": [\"${MOCK_URLS[0]}\", \"${MOCK_URLS[1]}\", \"${MOCK_URLS[2]}\"]}"
THREE_PORT=$GATE_PORT THREE_PID=$GATE_PID
# The same upstream listed three times: the balancer's cost alone, with the upstream's
# capacity (and so the batching of events per wakeup) exactly as in the 1-replica case.
start_gate same "{\"urls\": [\"${MOCK_URLS[0]}\", \"${MOCK_URLS[0]}\", \"${MOCK_URLS[0]}\"]}"
SAME_PORT=$GATE_PORT SAME_PID=$GATE_PID

printf 'target\trepeat\trps\tp99_ms\trequests\tcpu_us_per_req\tnon2xx\n' >"$RAW/cpu.tsv"
run_wrk() {
    local target=$1 port=$2 pid=$3 r=$4 f="$RAW/wrk-$1-$4.txt" before after
    before=$(ticks "$pid")
    wrk -t2 -c64 -d"${DURATION}s" --timeout 10s --latency -s bench/post.lua \
        "http://127.0.0.1:$port/v1/chat/completions" >"$f" 2>&1 || die "wrk failed"
    after=$(ticks "$pid")
    python3 - "$target" "$r" "$f" "$before" "$after" "$CLK_TCK" >>"$RAW/cpu.tsv" <<'PY'
import re, sys
target, r, f, before, after, hz = sys.argv[1:]
text = open(f).read()
reqs = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
cpu_us = (int(after) - int(before)) / int(hz) * 1e6 / max(reqs, 1)
print(f"{target}\t{r}\t{rps:.0f}\t{p99:.2f}\t{reqs}\t{cpu_us:.2f}\t{non2xx.group(1) if non2xx else 0}")
PY
}
# Warm both (pools, page cache) before measuring.
for port in "$ONE_PORT" "$THREE_PORT" "$SAME_PORT"; do
    wrk -t1 -c16 -d1s -s bench/post.lua "http://127.0.0.1:$port/v1/chat/completions" >/dev/null 2>&1
done
for r in $(seq 1 "$REPEATS"); do
    run_wrk one "$ONE_PORT" "$ONE_PID" "$r"
    run_wrk three "$THREE_PORT" "$THREE_PID" "$r"
    run_wrk same "$SAME_PORT" "$SAME_PID" "$r"
done

if [ -n "${BENCH_SKIP_SSE:-}" ]; then
    printf 'balance\trepeat\tline\tslow_share\n' >"$RAW/sse.tsv"
fi
# ---- 2. SSE TTFB with one slow replica ---------------------------------------------------
SSE_URLS=()
[ -n "${BENCH_SKIP_SSE:-}" ] || for cap in 32 32 2; do
    p=$(free_port)
    python3 bench/replica_sse.py serve "$p" "$cap" 2>"$WORK/sse-$p.log" &
    PIDS+=($!)
    wait_port "$p"
    SSE_URLS+=("http://127.0.0.1:$p")
done
if [ -z "${BENCH_SKIP_SSE:-}" ]; then
SLOW_URL=${SSE_URLS[2]}
urls="[\"${SSE_URLS[0]}\", \"${SSE_URLS[1]}\", \"${SSE_URLS[2]}\"]"
start_gate lo "{\"urls\": $urls, \"balance\": \"least-outstanding\"}"
LO_PORT=$GATE_PORT
start_gate rr "{\"urls\": $urls, \"balance\": \"round-robin\"}"
RR_PORT=$GATE_PORT

slow_requests() {
    curl -s "http://127.0.0.1:$1/metrics" |
        awk -v u="$SLOW_URL" 'index($0, "modelgate_replica_requests_total{model=\"m\",replica=\"" u "\"}") == 1 { print $2 }'
}
all_requests() {
    curl -s "http://127.0.0.1:$1/metrics" |
        awk 'index($0, "modelgate_replica_requests_total{model=\"m\",") == 1 { s += $2 } END { print s + 0 }'
}

printf 'balance\trepeat\tline\tslow_share\n' >"$RAW/sse.tsv"
for r in $(seq 1 "$REPEATS"); do
    for b in lo rr; do
        port=$LO_PORT
        [ "$b" = rr ] && port=$RR_PORT
        s0=$(slow_requests "$port"); a0=$(all_requests "$port")
        line=$(python3 bench/replica_sse.py load "http://127.0.0.1:$port" "$SSE_CLIENTS" "$SSE_SECONDS")
        s1=$(slow_requests "$port"); a1=$(all_requests "$port")
        share=$(python3 -c "print(f'{(${s1:-0} - ${s0:-0}) / max(1, $a1 - $a0):.3f}')")
        printf '%s\t%s\t%s\t%s\n' "$b" "$r" "$line" "$share" >>"$RAW/sse.tsv"
        echo "sse $b round $r: $line slow_share=$share"
    done
done
fi

# ---- summary -----------------------------------------------------------------------------
col() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { print $c }' "$3"; }
one_cpu=$(col one 6 "$RAW/cpu.tsv" | median)
three_cpu=$(col three 6 "$RAW/cpu.tsv" | median)
one_rps=$(col one 3 "$RAW/cpu.tsv" | median)
three_rps=$(col three 3 "$RAW/cpu.tsv" | median)
same_cpu=$(col same 6 "$RAW/cpu.tsv" | median)
same_rps=$(col same 3 "$RAW/cpu.tsv" | median)
field() { grep -o "$1=[0-9.]*" | cut -d= -f2; }
sse_stat() { awk -F'\t' -v b="$1" '$1 == b { print $3 }' "$RAW/sse.tsv" | field "$2" | median; }
sse_share() { awk -F'\t' -v b="$1" '$1 == b { print $4 }' "$RAW/sse.tsv" | median; }
{
    echo "| replicas | req/s (median) | CPU µs/request (median) |"
    echo "|---|---|---|"
    echo "| 1 | $one_rps | $one_cpu |"
    echo "| 3 | $three_rps | $three_cpu |"
    echo "| 3 (one upstream listed 3 times) | $same_rps | $same_cpu |"
    python3 -c "print(f'\n3 vs 1: {($three_cpu / $one_cpu - 1) * 100:+.1f}% CPU per request; same upstream x3 vs 1: {($same_cpu / $one_cpu - 1) * 100:+.1f}% (target: under +5%)\n')"
    echo "| balance | requests | TTFB p50 ms | p90 ms | p99 ms | slow replica's share |"
    echo "|---|---|---|---|---|---|"
    for b in lo rr; do
        name=least-outstanding
        [ "$b" = rr ] && name=round-robin
        echo "| $name | $(sse_stat "$b" requests) | $(sse_stat "$b" ttfb_p50_ms) | $(sse_stat "$b" ttfb_p90_ms) | $(sse_stat "$b" ttfb_p99_ms) | $(sse_share "$b") |"
    done
    echo
    echo "(medians of $REPEATS interleaved rounds; $(nproc) cores; load average before the run: $LOAD_BEFORE)"
} >"$OUT/replicas.md"
cat "$OUT/replicas.md"
