#!/usr/bin/env bash
# modelgate benchmark suite (issue 8): the mock upstream directly vs. nginx vs. modelgate, on
# loopback, interleaved (A B C A B C ...), medians of BENCH_REPEATS rounds.
#
#   bench/run.sh                  # everything, ~8-10 min after the release build
#   BENCH_QUICK=1 bench/run.sh    # smoke test of every scenario, ~2 min (numbers meaningless)
#
# Scenarios (BENCH_SCENARIOS, comma list; default all):
#   latency    (1) c=1, ~1 KB chat body, model last (bench/post.lua): p50/p99, added over direct
#   throughput (2) c=64: req/s and CPU µs per request of each proxy's process tree, peak RSS (6)
#   sse        (3) 512 concurrent SSE streams x 64 events at 10 ms (examples/sse_bench.rs):
#                  added time to first event, max inter-event gap, events lost, batched streams
#   idle       (4) 10,000 idle keep-alive client connections (examples/idle_conns.rs): RSS
#   bigbody    (5) 10 MiB base64 "image" body, model last (bench/bigbody.lua), c=4: CPU/req, req/s
#   tls        (7) modelgate -> TLS nginx -> mock vs modelgate -> mock, c=64: CPU/req
#   accesslog  (8) modelgate accessLog true vs false, c=64: CPU/req
#   RSS idle after startup (6) is always measured.
# tls and accesslog run inside the c=64 rounds (extra targets), so they need `throughput`.
#
# Knobs (env): BENCH_DURATION (s per wrk run; 5, quick 2), BENCH_REPEATS (5, quick 3),
# BENCH_WORKERS (1: modelgate `workers` = nginx worker_processes; `default`: each at its own
# default, nginx `worker_processes auto` and modelgate without `workers`, one per CPU),
# BENCH_SSE_STREAMS (512; a comma list such as `32,512` runs the SSE scenario once per count),
# BENCH_SSE_EVENTS (64), BENCH_SSE_INTERVAL_MS (10), BENCH_IDLE_CONNS (10000),
# BENCH_IDLE_REPEATS (3, quick 1), BENCH_BIG_MB (10), BENCH_SKIP_BUILD=1,
# BENCH_MODELGATE_BIN (another modelgate build), BENCH_MODELGATE_JSON (extra top-level config
# keys for modelgate, e.g. '"busyPoll": 0,'), BENCH_NO_INSTALL=1 (never apt-get).
#
# Output: bench/out/summary.md (markdown tables + ratios against issue 8's targets),
# bench/out/{latency,throughput,sse,idle,bigbody,rss}.tsv (one row per run), the raw wrk and
# sse_bench outputs under bench/out/raw/, and bench/out/chart.svg (gnuplot).
#
# Fairness: nginx gets worker_processes = modelgate's `workers`, an upstream keepalive pool
# (idle connections kept 60 s, nginx's default; modelgate gets upstreamKeepAlive 60 to match),
# HTTP/1.1 upstream, `proxy_buffering off` (streams like modelgate), request buffering on with
# client_body_buffer_size 16m (modelgate also holds the whole body in memory to find `model`;
# nginx's default would spill bodies > 16 KiB to a temp file), access log off on both (except
# in scenario 8), keepalive_requests raised so neither closes client connections mid-run.
# Everything (wrk, the mock, the load clients, other builds) shares the same cores: compare
# ratios from the same run, not absolute numbers.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
RAW="$OUT/raw"
rm -rf "$RAW"
mkdir -p "$OUT" "$RAW"
rm -f "$OUT"/*.tsv "$OUT"/summary.md "$OUT"/chart.svg # never mix in a previous run's rows

QUICK=${BENCH_QUICK:-}
if [ -n "$QUICK" ]; then
    DURATION=${BENCH_DURATION:-2}
    REPEATS=${BENCH_REPEATS:-3}
    IDLE_REPEATS=${BENCH_IDLE_REPEATS:-1}
else
    DURATION=${BENCH_DURATION:-5}
    REPEATS=${BENCH_REPEATS:-5}
    IDLE_REPEATS=${BENCH_IDLE_REPEATS:-3}
fi
SCENARIOS=${BENCH_SCENARIOS:-latency,throughput,sse,idle,bigbody,tls,accesslog}
WORKERS=${BENCH_WORKERS:-1}
if [ "$WORKERS" = default ]; then
    NGINX_WORKERS=auto
    MG_WORKERS_JSON=""
else
    NGINX_WORKERS=$WORKERS
    MG_WORKERS_JSON="\"workers\": $WORKERS,"
fi
SSE_STREAMS=${BENCH_SSE_STREAMS:-512}
SSE_EVENTS=${BENCH_SSE_EVENTS:-64}
SSE_INTERVAL_MS=${BENCH_SSE_INTERVAL_MS:-10}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
BIG_MB=${BENCH_BIG_MB:-10}
MODEL=bench-model
export BENCH_MODEL=$MODEL BENCH_BIG_MB=$BIG_MB

say() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
has() { [[ ",$SCENARIOS," == *",$1,"* ]]; }
for s in ${SCENARIOS//,/ }; do
    case $s in latency | throughput | sse | idle | bigbody | tls | accesslog) ;;
        *) die "unknown scenario $s" ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Processes we start, stopped by PID on exit.
PIDS=()
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Tools.
apt_has() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; }
install_tools() {
    local need=()
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
    command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    command -v curl >/dev/null 2>&1 || need+=(curl)
    command -v openssl >/dev/null 2>&1 || need+=(openssl)
    [ ${#need[@]} -eq 0 ] && return 0
    if [ -n "${BENCH_NO_INSTALL:-}" ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        # gnuplot only draws the chart: go on without it; the rest is required.
        local hard=("${need[@]/gnuplot/}")
        [ -z "${hard[*]// /}" ] && { say "gnuplot missing: no chart"; return 0; }
        die "missing ${need[*]}; run as root on Debian (apt-get) or install them"
    fi
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=() p
    for p in "${need[@]}"; do
        case $p in
            nginx) if apt_has nginx-light; then pkgs+=(nginx-light); else pkgs+=(nginx); fi ;;
            gnuplot) if apt_has gnuplot-nox; then pkgs+=(gnuplot-nox); else pkgs+=(gnuplot); fi ;;
            *) pkgs+=("$p") ;;
        esac
    done
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}
install_tools
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CLK_TCK=$(getconf CLK_TCK)

# Scenario 4 holds IDLE_CONNS sockets in the client and as many in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if has idle && [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS + 1000)) ]; then
    say "fd limit $NOFILE is too low for $IDLE_CONNS idle connections; using $((NOFILE - 1000))"
    IDLE_CONNS=$((NOFILE - 1000))
fi

# nginx preallocates its connection table (worker_connections) at startup; size it for the idle
# scenario (it must hold IDLE_CONNS clients plus upstream connections), not more.
NGINX_CONNS=$((IDLE_CONNS + 1024 < 4096 ? 4096 : IDLE_CONNS + 1024))

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU ticks (utime+stime, all threads) of a process and all its descendants.
tree_ticks() {
    python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
procs = {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        with open(f"/proc/{d}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    procs[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
kids = {}
for pid, (ppid, _) in procs.items():
    kids.setdefault(ppid, []).append(pid)
total, todo = 0, [root]
while todo:
    p = todo.pop()
    if p in procs:
        total += procs[p][1]
    todo.extend(kids.get(p, []))
print(total)
PY
}

# Sum of a /proc/PID/status field (KiB) over a process and its children: VmRSS (now) or
# VmHWM (peak since start).
tree_status_kib() {
    local total=0 p kb
    for p in "$1" $(pgrep -P "$1" || true); do
        kb=$(awk -v k="$2:" '$1 == k {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}
tree_rss_kib() { tree_status_kib "$1" VmRSS; }

# Waits until FILE has a line matching REGEX (printing it), or dies after 10 s / when PID exits.
wait_line() {
    local file=$1 regex=$2 pid=$3 what=$4 line
    for _ in $(seq 200); do
        line=$(grep -m1 -E "$regex" "$file" 2>/dev/null || true)
        if [ -n "$line" ]; then
            echo "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "$what exited during startup (log: $file)"; }
        sleep 0.05
    done
    cat "$file" >&2
    die "$what did not start within 10 s (log: $file)"
}

# Checks that a target answers the benchmark request from the mock; dies with the answer if not.
check_target() {
    local name=$1 url=$2 body hdrs
    hdrs=$(mktemp)
    body=$(curl -sS -m 5 -D "$hdrs" -H 'Content-Type: application/json' \
        --data '{"messages":[{"role":"user","content":"hi"}],"model":"'"$MODEL"'"}' \
        "$url/v1/chat/completions" 2>&1) || { rm -f "$hdrs"; die "$name ($url) did not answer: $body"; }
    if ! head -1 "$hdrs" | grep -q ' 200' || ! grep -qi '^x-mock-name: bench' "$hdrs"; then
        cat "$hdrs" >&2
        rm -f "$hdrs"
        die "$name ($url) did not route the request to the mock upstream: $body"
    fi
    rm -f "$hdrs"
}

# ---------------------------------------------------------------------------------------------
# Build and start.
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    say "cargo build --release --bins --examples"
    cargo build --release --bins --examples --quiet
fi
EX="$ROOT/target/release/examples"
MOCK_BIN="$EX/mock-upstream"
MG_BIN=${BENCH_MODELGATE_BIN:-$ROOT/target/release/modelgate}
for b in "$MOCK_BIN" "$EX/sse_bench" "$EX/idle_conns" "$MG_BIN"; do
    [ -x "$b" ] || die "$b is missing (cargo build --release --bins --examples)"
done

: >"$OUT/mock.log"
"$MOCK_BIN" --listen 127.0.0.1:0 --name bench --no-pacing 2>"$OUT/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK_ADDR=$(wait_line "$OUT/mock.log" 'listening on' "$MOCK_PID" mock-upstream | sed 's/.*listening on //')
say "mock upstream on $MOCK_ADDR (pid $MOCK_PID)"

declare -A URL PID LABEL
URL[direct]="http://$MOCK_ADDR"
PID[direct]=$MOCK_PID
LABEL[direct]=direct
check_target direct "${URL[direct]}"

# start_nginx NAME PORT LOCATION_AND_LISTEN_LINES → an nginx with its own prefix under bench/out.
start_nginx() {
    local name=$1 port=$2 server=$3 dir="$OUT/$1"
    mkdir -p "$dir/tmp" "$dir/logs"
    cat >"$OUT/$name.conf" <<EOF
# Generated by bench/run.sh.
daemon off;
master_process on;
worker_processes $NGINX_WORKERS;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections $NGINX_CONNS; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    client_max_body_size 100m;
    client_body_buffer_size 16m;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream mock {
        server $MOCK_ADDR;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
$server
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    chmod -R a+rwx "$dir/tmp"
    "$NGINX" -p "$dir" -e "$dir/logs/error.log" -c "$OUT/$name.conf" -t -q \
        || die "nginx rejected $OUT/$name.conf"
    "$NGINX" -p "$dir" -e "$dir/logs/error.log" -c "$OUT/$name.conf" >"$dir/logs/stdout.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
}
wait_http() { # name url [curl args]
    local name=$1 url=$2
    shift 2
    for _ in $(seq 100); do
        curl -s -o /dev/null -m 1 "$@" "$url/health" && return 0
        kill -0 "${PID[$name]}" 2>/dev/null || die "$name exited (see $OUT/$name/logs/error.log)"
        sleep 0.1
    done
    die "$name did not answer on $url"
}

NGINX_PORT=$(free_port)
start_nginx nginx "$NGINX_PORT" "        listen 127.0.0.1:$NGINX_PORT;"
URL[nginx]="http://127.0.0.1:$NGINX_PORT"
LABEL[nginx]=nginx
wait_http nginx "${URL[nginx]}"
check_target nginx "${URL[nginx]}"
say "nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //') on ${URL[nginx]} (pid ${PID[nginx]}, worker_processes $NGINX_WORKERS)"

# start_modelgate NAME JSON_MODELS_AND_EXTRA → a modelgate instance (stderr appended to a log).
start_modelgate() {
    local name=$1 access=$2 url=$3 extra=${4:-} line addr
    cat >"$OUT/$name.json" <<EOF
{
  "listen": "127.0.0.1:0",
  $MG_WORKERS_JSON ${BENCH_MODELGATE_JSON:-}
  "accessLog": $access,
  "timeouts": { "keepAlive": 300, "upstreamKeepAlive": 60 },
  "models": { "$MODEL": { "url": "$url"$extra } }
}
EOF
    : >"$OUT/$name.log"
    "$MG_BIN" --config "$OUT/$name.json" </dev/null >>"$OUT/$name.log" 2>&1 &
    PID[$name]=$!
    PIDS+=("${PID[$name]}")
    line=$(wait_line "$OUT/$name.log" 'listening on' "${PID[$name]}" "$name")
    addr=$(sed -E 's/.*listening on ([^ ,]+).*/\1/; s#^https?://##' <<<"$line")
    URL[$name]="http://${addr/0.0.0.0/127.0.0.1}"
    check_target "$name" "${URL[$name]}"
    say "$name on ${URL[$name]} (pid ${PID[$name]}, accessLog $access, upstream $url)"
}
start_modelgate modelgate false "http://$MOCK_ADDR"
LABEL[modelgate]=modelgate

# Scenario 8: a second modelgate with the access log on (stderr to a file, like a service).
if has accesslog && has throughput; then
    start_modelgate mg_log true "http://$MOCK_ADDR"
    LABEL[mg_log]="modelgate accessLog"
fi

# Scenario 7: modelgate -> nginx TLS terminator (self-signed CA, P-256 leaf for IP 127.0.0.1) -> mock.
if has tls && has throughput; then
    PKI="$OUT/pki"
    mkdir -p "$PKI"
    ossl() { openssl "$@" >>"$PKI/openssl.log" 2>&1 || { cat "$PKI/openssl.log" >&2; die "openssl $1 failed"; }; }
    ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj /CN=modelgate-bench-ca -keyout "$PKI/ca.key" -out "$PKI/ca.pem"
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
        -keyout "$PKI/leaf.key" -out "$PKI/leaf.csr"
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >"$PKI/leaf.ext"
    ossl x509 -req -in "$PKI/leaf.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
        -days 30 -extfile "$PKI/leaf.ext" -out "$PKI/leaf.pem"
    TLS_PORT=$(free_port)
    start_nginx nginx_tls "$TLS_PORT" "        listen 127.0.0.1:$TLS_PORT ssl;
        ssl_certificate $PKI/leaf.pem;
        ssl_certificate_key $PKI/leaf.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:bench:1m;"
    wait_http nginx_tls "https://127.0.0.1:$TLS_PORT" --cacert "$PKI/ca.pem"
    start_modelgate mg_tls false "https://127.0.0.1:$TLS_PORT" ", \"caFile\": \"$PKI/ca.pem\""
    LABEL[mg_tls]="modelgate TLS upstream"
fi

# (6) RSS after startup, before any load (after one check request each).
sleep 1
RSS_TSV="$OUT/rss.tsv"
printf 'target\tphase\trss_kib\n' >"$RSS_TSV"
for t in nginx modelgate; do
    printf '%s\tidle\t%s\n' "$t" "$(tree_rss_kib "${PID[$t]}")" >>"$RSS_TSV"
done
say "idle RSS: nginx $(awk '$1=="nginx" {print $3}' "$RSS_TSV") KiB, modelgate $(awk '$1=="modelgate" {print $3}' "$RSS_TSV") KiB"

# ---------------------------------------------------------------------------------------------
# wrk runs.

# to_us VALUE: wrk's "123.45us" / "1.20ms" / "1.00s" → microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else m = 1;
        printf "%.1f", n * m }'
}

WRK_HDR='scenario\trepeat\ttarget\tconcurrency\trps\tp50_us\tp99_us\trequests\tcpu_us_per_req\tnon2xx\tsocket_errors'
# wrk_run SCENARIO REPEAT TARGET CONC THREADS DURATION LUA TSV: one measured run, a row in TSV.
wrk_run() {
    local sc=$1 r=$2 t=$3 c=$4 th=$5 d=$6 lua=$7 tsv=$8 f before=0 after=0
    f="$RAW/wrk-$sc-$t-r$r.txt"
    [ "$t" != direct ] && before=$(tree_ticks "${PID[$t]}")
    wrk -t"$th" -c"$c" -d"${d}s" --timeout 10s --latency -s "$lua" "${URL[$t]}/v1/chat/completions" >"$f" 2>&1 \
        || { cat "$f" >&2; die "wrk failed against $t"; }
    [ "$t" != direct ] && after=$(tree_ticks "${PID[$t]}")
    local rps reqs p50 p99 non2xx sockerr cpu=-
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
    reqs=$(awk '/requests in/ {print $1}' "$f")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
    sockerr=$(awk '/Socket errors:/ { s = 0; for (i = 4; i <= NF; i += 2) s += $i; print s }' "$f")
    if [ "$t" != direct ] && [ "${reqs:-0}" -gt 0 ]; then
        cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN { printf "%.2f", d * 1000000 / hz / n }')
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sc" "$r" "$t" "$c" "${rps:-0}" "$p50" "$p99" \
        "${reqs:-0}" "$cpu" "${non2xx:-0}" "${sockerr:-0}" >>"$tsv"
    say "  $sc r$r ${LABEL[$t]}: ${rps:-?} req/s, p50 ${p50}us, p99 ${p99}us, cpu/req ${cpu}us$([ "${non2xx:-0}${sockerr:-0}" = 00 ] || echo ", ERRORS: non-2xx ${non2xx:-0}, socket ${sockerr:-0}")"
    # The access-log instance's log would grow without bound: keep it per run only.
    [ "$t" = mg_log ] && : >"$OUT/mg_log.log"
    return 0
}
# wrk_scenario NAME CONC THREADS DURATION LUA TSV TARGET...: warm-up, then REPEATS rounds.
wrk_scenario() {
    local sc=$1 c=$2 th=$3 d=$4 lua=$5 tsv=$6 t r
    shift 6
    printf "$WRK_HDR\n" >"$tsv"
    say "scenario $sc: c=$c, ${d}s x $REPEATS rounds over: $*"
    for t in "$@"; do
        wrk -t"$th" -c"$c" -d1s --timeout 10s -s "$lua" "${URL[$t]}/v1/chat/completions" >"$RAW/warmup.txt" 2>&1 \
            || { cat "$RAW/warmup.txt" >&2; die "warm-up against $t failed"; }
    done
    for r in $(seq "$REPEATS"); do
        for t in "$@"; do wrk_run "$sc" "$r" "$t" "$c" "$th" "$d" "$lua" "$tsv"; done
    done
}

if has latency; then
    wrk_scenario latency 1 1 "$DURATION" "$ROOT/bench/post.lua" "$OUT/latency.tsv" direct nginx modelgate
fi

if has throughput; then
    targets=(direct nginx modelgate)
    [ -n "${PID[mg_log]:-}" ] && targets+=(mg_log)
    [ -n "${PID[mg_tls]:-}" ] && targets+=(mg_tls)
    wrk_scenario throughput 64 2 "$DURATION" "$ROOT/bench/post.lua" "$OUT/throughput.tsv" "${targets[@]}"
    # (6) RSS under load: VmHWM (the kernel's exact peak RSS) right after the c=64 rounds —
    # nothing before them (startup, c=1) uses more.
    for t in nginx modelgate; do
        printf '%s\tpeak_c64\t%s\n' "$t" "$(tree_status_kib "${PID[$t]}" VmHWM)" >>"$RSS_TSV"
    done
fi

# ---------------------------------------------------------------------------------------------
# (3) SSE streams, once per stream count (bench/out/sse.tsv for the first, sse-N.tsv for each).
if has sse; then
    for SSE_N in ${SSE_STREAMS//,/ }; do
    SSE_TSV="$OUT/sse-$SSE_N.tsv"
    printf 'repeat\ttarget\tcpu_ms\t' >"$SSE_TSV"
    # The whole output first: `| head -1` could close the pipe while sse_bench still writes.
    header=$("$EX/sse_bench" --addr "${URL[direct]#http://}" --streams 1 --events 2 --interval-ms 1 --header)
    head -1 <<<"$header" >>"$SSE_TSV"
    say "scenario sse: $SSE_N streams x $SSE_EVENTS events @ ${SSE_INTERVAL_MS} ms, $REPEATS rounds"
    for t in direct nginx modelgate; do # warm-up (and a check that each target streams)
        "$EX/sse_bench" --addr "${URL[$t]#http://}" --streams 8 --events 4 --interval-ms 1 >"$RAW/warmup.txt" \
            || die "sse warm-up against $t failed"
    done
    for r in $(seq "$REPEATS"); do
        for t in direct nginx modelgate; do
            before=0 after=0
            [ "$t" != direct ] && before=$(tree_ticks "${PID[$t]}")
            line=$(timeout 180 "$EX/sse_bench" --addr "${URL[$t]#http://}" --streams "$SSE_N" \
                --events "$SSE_EVENTS" --interval-ms "$SSE_INTERVAL_MS" --model "$MODEL" \
                --raw "$RAW/sse$SSE_N-$t-r$r.tsv" 2>"$RAW/sse$SSE_N-$t-r$r.err") \
                || { cat "$RAW/sse$SSE_N-$t-r$r.err" >&2; die "sse_bench failed against $t"; }
            [ "$t" != direct ] && after=$(tree_ticks "${PID[$t]}")
            cpu_ms=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d * 1000 / hz }')
            [ "$t" = direct ] && cpu_ms=-
            printf '%s\t%s\t%s\t%s\n' "$r" "$t" "$cpu_ms" "$line" >>"$SSE_TSV"
            say "  sse$SSE_N r$r $t: $(awk -F'\t' '{printf "ok %s/%s, lost %s, ttfe p50 %sus p99 %sus, max gap p50 %sus max %sus, batched streams %s", $2, $1, $4, $5, $6, $8, $10, $11}' <<<"$line")"
        done
    done
    done
fi

# ---------------------------------------------------------------------------------------------
# (4) Idle keep-alive connections: RSS before / with IDLE_CONNS connections held open, on a
# fresh nginx and a fresh modelgate per round (same configs as the main ones), so the heap left
# behind by earlier scenarios cannot absorb the connections' memory.
if has idle; then
    IDLE_TSV="$OUT/idle.tsv"
    printf 'repeat\ttarget\tconns\theld\tfailed\trss_before_kib\trss_after_kib\tdelta_kib\n' >"$IDLE_TSV"
    say "scenario idle: $IDLE_CONNS idle keep-alive connections, $IDLE_REPEATS round(s) (fd limit $NOFILE)"
    for r in $(seq "$IDLE_REPEATS"); do
        for t in nginx modelgate; do
            if [ "$t" = nginx ]; then
                inst=nginx_idle
                port=$(free_port)
                start_nginx "$inst" "$port" "        listen 127.0.0.1:$port;"
                URL[$inst]="http://127.0.0.1:$port"
                wait_http "$inst" "${URL[$inst]}"
                check_target "$inst" "${URL[$inst]}"
            else
                inst=mg_idle
                start_modelgate "$inst" false "http://$MOCK_ADDR" >/dev/null 2>&1
            fi
            sleep 1
            before=$(tree_rss_kib "${PID[$inst]}")
            "$EX/idle_conns" --addr "${URL[$inst]#http://}" --conns "$IDLE_CONNS" --model "$MODEL" \
                --hold-secs 300 >"$RAW/idle-$t-r$r.out" 2>"$RAW/idle-$t-r$r.err" </dev/null &
            cpid=$!
            PIDS+=("$cpid")
            held=
            for _ in $(seq 1200); do
                held=$(grep -m1 '^held ' "$RAW/idle-$t-r$r.out" 2>/dev/null || true)
                [ -n "$held" ] && break
                kill -0 "$cpid" 2>/dev/null || { cat "$RAW/idle-$t-r$r.err" >&2; die "idle_conns exited against $t"; }
                sleep 0.1
            done
            [ -n "$held" ] || die "idle_conns did not establish $IDLE_CONNS connections to $t in 120 s"
            sleep 1
            after=$(tree_rss_kib "${PID[$inst]}")
            stop_pid "$cpid"
            forget_pid "$cpid"
            stop_pid "${PID[$inst]}"
            forget_pid "${PID[$inst]}"
            read -r _ ok failed <<<"$held"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$IDLE_CONNS" "$ok" "$failed" "$before" "$after" \
                $((after - before)) >>"$IDLE_TSV"
            say "  idle r$r $t: held $ok (failed $failed), RSS $before -> $after KiB (+$(((after - before) / 1024)) MiB)"
        done
    done
    sleep 1
fi

# ---------------------------------------------------------------------------------------------
# (5) 10 MiB body, model last, c=4.
if has bigbody; then
    wrk_scenario bigbody 4 2 "$DURATION" "$ROOT/bench/bigbody.lua" "$OUT/bigbody.tsv" direct nginx modelgate
fi

for t in nginx modelgate; do
    printf '%s\tpeak_all\t%s\n' "$t" "$(tree_status_kib "${PID[$t]}" VmHWM)" >>"$RSS_TSV"
done

# ---------------------------------------------------------------------------------------------
# Summary (medians, ratios against issue 8's targets) and chart.
BENCH_NGINX_CONNS=$NGINX_CONNS python3 "$ROOT/bench/summary.py" "$OUT" "$WORKERS" "$DURATION" "$REPEATS" "$IDLE_REPEATS" \
    "$SSE_STREAMS" "$SSE_EVENTS" "$SSE_INTERVAL_MS" "$BIG_MB" "${QUICK:+quick}"
if command -v gnuplot >/dev/null 2>&1 && [ -s "$OUT/chart.tsv" ]; then
    (cd "$OUT" && gnuplot -e "subtitle='${QUICK:+ (quick smoke run: noisy)}'" "$ROOT/bench/chart.gp") \
        >"$OUT/chart.svg" 2>"$RAW/gnuplot.err" \
        && say "chart: $OUT/chart.svg" || { cat "$RAW/gnuplot.err" >&2; say "gnuplot failed: no chart"; }
fi
say "summary: $OUT/summary.md; raw rows: $OUT/*.tsv; wrk/sse outputs: $RAW/"

bad=0
for f in "$OUT"/latency.tsv "$OUT"/throughput.tsv "$OUT"/bigbody.tsv; do
    [ -f "$f" ] || continue
    awk -F'\t' 'NR > 1 && ($10 + $11) > 0 { bad = 1 } END { exit !bad }' "$f" && { say "errors in $f"; bad=1; }
done
[ -f "$OUT/idle.tsv" ] && awk -F'\t' 'NR > 1 && $5 > 0 { bad = 1 } END { exit !bad }' "$OUT/idle.tsv" \
    && { say "failed idle connections (see $OUT/idle.tsv)"; bad=1; }
[ "$bad" = 0 ] || die "some runs had errors (non-2xx, socket errors or failed connections)"
