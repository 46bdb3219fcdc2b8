#!/usr/bin/env bash
# Loopback benchmark: the mock upstream directly vs. nginx vs. modelgate in front of it.
#
#   bench/run.sh                      # everything (~2-3 min after the release build)
#   BENCH_TARGETS=direct,nginx bench/run.sh
#
# Knobs (env): BENCH_TARGETS (direct,nginx,modelgate), BENCH_DURATION (s per run, 5),
# BENCH_REPEATS (3), BENCH_WORKERS (1: nginx worker_processes = modelgate workers),
# BENCH_CONCURRENCY ("1 64"), BENCH_SKIP_BUILD=1, BENCH_MODELGATE_BIN (another modelgate build).
#
# What it does: builds release binaries and the mock (`cargo build --release --bins
# --examples`), starts the mock upstream, nginx (plain proxy_pass with an upstream keepalive
# pool; config generated under bench/out/) and modelgate (generated config, accessLog false),
# then runs wrk with bench/post.lua (~1 KB chat body, `model` after `messages`) against each
# target, interleaved (direct, nginx, modelgate, direct, ...) BENCH_REPEATS times, at -t1 -c1
# and -t2 -c64. Per run it records requests/s, p50/p99 latency and, for the proxies, CPU time
# per request (utime+stime of the proxy's whole process tree from /proc, before/after).
# Medians are printed as a markdown table for BENCHMARKS.md; raw results go to bench/out/.
#
# Fairness notes: nginx gets worker_processes = modelgate's `workers`, keepalive to the
# upstream (64 idle connections), HTTP/1.1 upstream, `proxy_buffering off` (streaming, like
# modelgate), request buffering left on (modelgate also reads the whole body to find `model`),
# access log off on both, and keepalive_requests raised so neither closes client connections
# during a run. Everything shares the same cores with wrk and the mock: compare ratios, not
# absolute numbers.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"

TARGETS=${BENCH_TARGETS:-direct,nginx,modelgate}
DURATION=${BENCH_DURATION:-5}
REPEATS=${BENCH_REPEATS:-3}
WORKERS=${BENCH_WORKERS:-1}
CONCURRENCY=${BENCH_CONCURRENCY:-1 64}
MODEL=bench-model
export BENCH_MODEL=$MODEL

say() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }

# ---------------------------------------------------------------------------------------------
# Processes we start, stopped by PID on exit.
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Tools.
apt_has() { apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [0-9]'; }
install_tools() {
    local need=()
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    if has_target nginx && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        need+=(nginx)
    fi
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    [ ${#need[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}; run as root or install them"
    command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get"
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=() p
    for p in "${need[@]}"; do
        if [ "$p" = nginx ]; then
            if apt_has nginx-light; then pkgs+=(nginx-light); else pkgs+=(nginx); fi
        else
            pkgs+=("$p")
        fi
    done
    apt-get install -y -qq "${pkgs[@]}" >/dev/null
}
install_tools
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CLK_TCK=$(getconf CLK_TCK)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU ticks (utime+stime) of a process and all its descendants.
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

# VmRSS (KiB) of a process tree.
tree_rss_kib() {
    local total=0 p kb
    for p in "$1" $(pgrep -P "$1" || true); do
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

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
command -v curl >/dev/null 2>&1 || die "curl is needed"
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
    say "cargo build --release --bins --examples"
    cargo build --release --bins --examples --quiet
fi
MOCK_BIN="$ROOT/target/release/examples/mock-upstream"
MG_BIN=${BENCH_MODELGATE_BIN:-$ROOT/target/release/modelgate}
[ -x "$MOCK_BIN" ] || die "$MOCK_BIN is missing"

: >"$OUT/mock.log"
"$MOCK_BIN" --listen 127.0.0.1:0 --name bench 2>"$OUT/mock.log" &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
MOCK_ADDR=$(wait_line "$OUT/mock.log" 'listening on' "$MOCK_PID" mock-upstream | sed 's/.*listening on //')
say "mock upstream on $MOCK_ADDR (pid $MOCK_PID)"

declare -A URL PID
URL[direct]="http://$MOCK_ADDR"
PID[direct]=$MOCK_PID
check_target direct "${URL[direct]}"

if has_target nginx; then
    NGINX_PORT=$(free_port)
    NGX="$OUT/nginx"
    mkdir -p "$NGX/tmp" "$NGX/logs"
    cat >"$OUT/nginx.conf" <<EOF
# Generated by bench/run.sh: a plain reverse proxy, the baseline modelgate is compared with.
daemon off;
master_process on;
worker_processes $WORKERS;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    client_max_body_size 100m;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    upstream mock {
        server $MOCK_ADDR;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
}
EOF
    chmod -R a+rwx "$NGX/tmp"
    "$NGINX" -p "$NGX" -e "$NGX/logs/error.log" -c "$OUT/nginx.conf" -t -q \
        || die "nginx rejected $OUT/nginx.conf"
    "$NGINX" -p "$NGX" -e "$NGX/logs/error.log" -c "$OUT/nginx.conf" >"$NGX/logs/stdout.log" 2>&1 &
    PID[nginx]=$!
    PIDS+=("${PID[nginx]}")
    URL[nginx]="http://127.0.0.1:$NGINX_PORT"
    for _ in $(seq 100); do
        curl -s -o /dev/null -m 1 "${URL[nginx]}/health" && break
        kill -0 "${PID[nginx]}" 2>/dev/null || die "nginx exited (see $NGX/logs/error.log)"
        sleep 0.1
    done
    check_target nginx "${URL[nginx]}"
    say "nginx $("$NGINX" -v 2>&1 | sed 's/.*version: //') on ${URL[nginx]} (pid ${PID[nginx]}, $WORKERS worker(s))"
fi

MG_RSS_KIB=
if has_target modelgate; then
    [ -x "$MG_BIN" ] || die "$MG_BIN is missing"
    cat >"$OUT/modelgate.json" <<EOF
{
  "listen": "127.0.0.1:0",
  "workers": $WORKERS,
  "accessLog": false,
  "models": { "$MODEL": { "url": "http://$MOCK_ADDR" } }
}
EOF
    "$MG_BIN" --config "$OUT/modelgate.json" </dev/null >"$OUT/modelgate.log" 2>&1 &
    PID[modelgate]=$!
    PIDS+=("${PID[modelgate]}")
    line=$(wait_line "$OUT/modelgate.log" 'listening on' "${PID[modelgate]}" modelgate)
    addr=$(sed -E 's/.*listening on ([^ ,]+).*/\1/; s#^https?://##' <<<"$line")
    addr=${addr/0.0.0.0/127.0.0.1}
    URL[modelgate]="http://$addr"
    sleep 1
    MG_RSS_KIB=$(tree_rss_kib "${PID[modelgate]}")
    check_target modelgate "${URL[modelgate]}"
    say "modelgate on ${URL[modelgate]} (pid ${PID[modelgate]}, $WORKERS worker(s), idle RSS ${MG_RSS_KIB} KiB)"
fi
NGINX_RSS_KIB=
has_target nginx && NGINX_RSS_KIB=$(tree_rss_kib "${PID[nginx]}")

# ---------------------------------------------------------------------------------------------
# Runs.
IFS=',' read -r -a TLIST <<<"$TARGETS"
for t in "${TLIST[@]}"; do
    [ -n "${URL[$t]:-}" ] || die "unknown target $t (use direct, nginx, modelgate)"
done

# to_us VALUE: wrk's "123.45us" / "1.20ms" / "1.00s" → microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else m = 1;
        printf "%.1f", n * m }'
}

RESULTS="$OUT/results.tsv"
printf 'repeat\tconcurrency\ttarget\trps\tp50_us\tp99_us\trequests\tcpu_us_per_req\tnon2xx\tsocket_errors\n' >"$RESULTS"

run_wrk() { # target conc threads duration outfile
    local t=$1 c=$2 th=$3 d=$4 f=$5
    wrk -t"$th" -c"$c" -d"${d}s" --latency -s "$ROOT/bench/post.lua" "${URL[$t]}/v1/chat/completions" >"$f" 2>&1 \
        || { cat "$f" >&2; die "wrk failed against $t"; }
}

say "warm-up"
for c in $CONCURRENCY; do
    th=1; [ "$c" -gt 1 ] && th=2
    for t in "${TLIST[@]}"; do run_wrk "$t" "$c" "$th" 1 "$OUT/warmup.txt"; done
done

total=$(( REPEATS * $(wc -w <<<"$CONCURRENCY") * ${#TLIST[@]} ))
n=0
for r in $(seq "$REPEATS"); do
    for c in $CONCURRENCY; do
        th=1; [ "$c" -gt 1 ] && th=2
        for t in "${TLIST[@]}"; do
            n=$((n + 1))
            f="$OUT/wrk-$t-c$c-r$r.txt"
            before=0
            [ "$t" != direct ] && before=$(tree_ticks "${PID[$t]}")
            run_wrk "$t" "$c" "$th" "$DURATION" "$f"
            after=0
            [ "$t" != direct ] && after=$(tree_ticks "${PID[$t]}")
            rps=$(awk '/^Requests\/sec:/ {print $2}' "$f")
            reqs=$(awk '/requests in/ {print $1}' "$f")
            p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$f")")
            p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$f")")
            non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$f")
            sockerr=$(awk '/Socket errors:/ { s = 0; for (i = 3; i <= NF; i++) s += $i; print s }' "$f")
            cpu=-
            if [ "$t" != direct ] && [ "${reqs:-0}" -gt 0 ]; then
                cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$reqs" \
                    'BEGIN { printf "%.2f", d * 1000000 / hz / n }')
            fi
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$t" "${rps:-0}" "$p50" "$p99" \
                "${reqs:-0}" "$cpu" "${non2xx:-0}" "${sockerr:-0}" >>"$RESULTS"
            say "[$n/$total] $t c=$c: ${rps:-?} req/s, p50 ${p50}us, p99 ${p99}us, cpu/req ${cpu}us${non2xx:+, NON-2xx $non2xx}"
        done
    done
done

# ---------------------------------------------------------------------------------------------
# Summary (medians), markdown for BENCHMARKS.md.
python3 - "$RESULTS" "$OUT/summary.md" "${MG_RSS_KIB:-}" "${NGINX_RSS_KIB:-}" "$WORKERS" "$DURATION" "$REPEATS" <<'PY'
import csv, statistics, sys, platform, os
path, out, mg_rss, ngx_rss, workers, duration, repeats = sys.argv[1:8]
rows = list(csv.DictReader(open(path), delimiter="\t"))
groups = {}
for r in rows:
    groups.setdefault((int(r["concurrency"]), r["target"]), []).append(r)
def med(rs, k):
    vals = [float(r[k]) for r in rs if r[k] not in ("-", "")]
    return statistics.median(vals) if vals else None
def fmt(v, d=0):
    return "-" if v is None else f"{v:,.{d}f}"
lines = []
cpu = os.popen("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").read().strip()
lines.append(f"Loopback, {os.cpu_count()} CPU(s) ({cpu}), {workers} proxy worker(s), "
             f"wrk with bench/post.lua (~1 KB chat body, model last), {duration} s runs, "
             f"median of {repeats}.")
lines.append("")
lines.append("| target | conns | req/s | p50 (µs) | p99 (µs) | CPU µs/req | added p50 vs direct (µs) | errors |")
lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
concs = sorted({c for c, _ in groups})
targets = [t for t in ("direct", "nginx", "modelgate") if any(t == tt for _, tt in groups)]
for c in concs:
    d50 = med(groups.get((c, "direct"), []), "p50_us")
    for t in targets:
        rs = groups.get((c, t), [])
        if not rs:
            continue
        p50 = med(rs, "p50_us")
        added = None if (t == "direct" or d50 is None or p50 is None) else p50 - d50
        errs = sum(int(float(r["non2xx"] or 0)) + int(float(r["socket_errors"] or 0)) for r in rs)
        lines.append(f"| {t} | {c} | {fmt(med(rs, 'rps'))} | {fmt(p50, 1)} | {fmt(med(rs, 'p99_us'), 1)} "
                     f"| {fmt(med(rs, 'cpu_us_per_req'), 2)} | {fmt(added, 1)} | {errs} |")
lines.append("")
for c in concs:
    m = med(groups.get((c, "modelgate"), []), "cpu_us_per_req")
    n = med(groups.get((c, "nginx"), []), "cpu_us_per_req")
    if m is not None and n:
        lines.append(f"- {c} conn(s): modelgate/nginx CPU per request = **{m / n:.2f}×** ({m:.2f} vs {n:.2f} µs)")
if mg_rss:
    lines.append(f"- modelgate idle RSS after startup: {int(mg_rss) / 1024:.1f} MiB")
if ngx_rss:
    lines.append(f"- nginx idle RSS (master + workers): {int(ngx_rss) / 1024:.1f} MiB")
text = "\n".join(lines) + "\n"
open(out, "w").write(text)
print(text)
PY
say "raw results: $RESULTS, wrk outputs: $OUT/wrk-*.txt, summary: $OUT/summary.md"
if awk -F'\t' 'NR > 1 && ($9 + $10) > 0 { bad = 1 } END { exit !bad }' "$RESULTS"; then
    die "some runs had non-2xx responses or socket errors (see $RESULTS)"
fi
