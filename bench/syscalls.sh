#!/usr/bin/env bash
# Syscalls per proxied request, by name: the proxy under `strace -f -c` while wrk sends exactly
# N requests (bench/post.lua's ~1 KB chat body, model last) on one keep-alive connection.
#
#   bench/syscalls.sh [modelgate|nginx] [N]      # default: modelgate 2000
#
# The proxy is started (1 worker, access log off, same configs as bench/run.sh), warmed up
# (so the client and upstream connections already exist and are pooled), then strace attaches
# to every thread (modelgate) or every worker (nginx), wrk -t1 -c1 sends N requests, strace
# detaches and its counts are divided by N. The ideal per exchange (issue 8): one read and one
# write per direction (client read, upstream write, upstream read, client write) plus the
# readiness waits (epoll_wait). Needs strace (installed via apt when missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
TARGET=${1:-modelgate}
N=${2:-2000}
MODEL=bench-model
export BENCH_MODEL=$MODEL BENCH_N=$N BENCH_DIR="$ROOT/bench"
say() { printf '[syscalls] %s\n' "$*" >&2; }
die() { printf '[syscalls] ERROR: %s\n' "$*" >&2; exit 1; }
case $TARGET in modelgate | nginx) ;; *) die "usage: bench/syscalls.sh [modelgate|nginx] [N]" ;; esac

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=()
for t in strace wrk curl python3; do command -v $t >/dev/null 2>&1 || need+=("$t"); done
[ "$TARGET" = nginx ] && ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ] && need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]}"
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -n "${BENCH_SKIP_BUILD:-}" ] || cargo build --release --bins --examples --quiet
MOCK_BIN="$ROOT/target/release/examples/mock-upstream"
MG_BIN=${BENCH_MODELGATE_BIN:-$ROOT/target/release/modelgate}

wait_line() { # file regex pid
    for _ in $(seq 200); do
        grep -m1 -E "$2" "$1" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "process $3 exited"; }
        sleep 0.05
    done
    die "no '$2' in $1"
}

"$MOCK_BIN" --listen 127.0.0.1:0 --name bench --no-pacing 2>"$OUT/sys-mock.log" &
PIDS+=($!)
MOCK_ADDR=$(wait_line "$OUT/sys-mock.log" 'listening on' "${PIDS[0]}" | sed 's/.*listening on //')

# Busy polling stays off in what is counted here (bench/nospin.sh).
source "$ROOT/bench/nospin.sh"
if [ "$TARGET" = modelgate ]; then
    cat >"$OUT/sys-modelgate.json" <<JSON
{ "listen": "127.0.0.1:0", "workers": 1, "accessLog": false, $(nospin "$MG_BIN")
  "models": { "$MODEL": { "url": "http://$MOCK_ADDR" } } }
JSON
    "$MG_BIN" --config "$OUT/sys-modelgate.json" </dev/null >"$OUT/sys-modelgate.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    line=$(wait_line "$OUT/sys-modelgate.log" 'listening on' "$PID")
    addr=$(sed -E 's/.*listening on ([^ ,]+).*/\1/; s#^https?://##' <<<"$line")
    URL="http://${addr/0.0.0.0/127.0.0.1}"
    ATTACH=(-p "$PID") # with -f, strace attaches to every thread of the process
else
    NGX="$OUT/sys-nginx"
    mkdir -p "$NGX/tmp" "$NGX/logs"
    PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$NGX/nginx.conf" <<CONF
daemon off; master_process on; worker_processes 1; pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off; client_body_temp_path $NGX/tmp/body; proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/f; uwsgi_temp_path $NGX/tmp/u; scgi_temp_path $NGX/tmp/s;
    client_body_buffer_size 16m; keepalive_requests 1000000;
    upstream mock { server $MOCK_ADDR; keepalive 64; keepalive_requests 1000000; }
    server { listen 127.0.0.1:$PORT;
        location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection "";
                     proxy_buffering off; } }
}
CONF
    chmod -R a+rwx "$NGX/tmp"
    nginx -p "$NGX" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" >"$NGX/logs/stdout.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    URL="http://127.0.0.1:$PORT"
    for _ in $(seq 100); do curl -s -o /dev/null -m 1 "$URL/health" && break; sleep 0.1; done
    ATTACH=()
    for w in $(pgrep -P "$PID"); do ATTACH+=(-p "$w"); done
    [ ${#ATTACH[@]} -gt 0 ] || die "no nginx worker"
fi

# Warm-up: connections open, pools filled, allocator warm.
wrk -t1 -c1 -d1s -s "$ROOT/bench/post.lua" "$URL/v1/chat/completions" >/dev/null

STRACE_OUT="$OUT/syscalls-$TARGET.strace"
strace -f -c -o "$STRACE_OUT" "${ATTACH[@]}" 2>"$OUT/syscalls-strace.err" &
SPID=$!
PIDS+=("$SPID")
sleep 1 # attach
WRK_OUT="$OUT/syscalls-$TARGET.wrk"
export BENCH_DONE="$OUT/syscalls-$TARGET.done"
rm -f "$BENCH_DONE"
wrk -t1 -c1 -d300s --latency -s "$ROOT/bench/post_n.lua" "$URL/v1/chat/completions" >"$WRK_OUT" 2>&1 &
WPID=$!
PIDS+=("$WPID")
for _ in $(seq 3000); do [ -e "$BENCH_DONE" ] && break; kill -0 "$WPID" 2>/dev/null || break; sleep 0.1; done
[ -e "$BENCH_DONE" ] || die "wrk did not finish $N requests"
kill -INT "$WPID" # wrk prints its report on SIGINT
wait "$WPID" || true
sleep 0.2
kill -INT "$SPID"
wait "$SPID" 2>/dev/null || true
REQS=$(awk '/requests in/ {print $1}' "$WRK_OUT")
[ "${REQS:-0}" -gt 0 ] || { cat "$WRK_OUT" >&2; die "wrk sent no request"; }
grep -q 'Non-2xx' "$WRK_OUT" && { cat "$WRK_OUT" >&2; die "non-2xx responses"; }

python3 - "$STRACE_OUT" "$REQS" "$TARGET" <<'PY' | tee "$OUT/syscalls-$TARGET.md"
import sys
path, n, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for line in open(path):
    p = line.split()
    if len(p) < 5 or not p[3].isdigit() or p[-1] == "total":
        continue
    calls, name = int(p[3]), p[-1]
    errors = int(p[4]) if len(p) == 6 else 0
    rows.append((calls, errors, name))
rows.sort(reverse=True)
total = sum(c for c, _, _ in rows)
print(f"{target}: syscalls per proxied request (strace -f -c over {n} requests at c=1, "
      f"~1 KB chat body, 1 worker, access log off)\n")
print("| syscall | calls | per request | errors |")
print("|---|---:|---:|---:|")
for calls, errors, name in rows:
    print(f"| {name} | {calls} | {calls / n:.2f} | {errors} |")
print(f"| **total** | {total} | **{total / n:.2f}** | |")
PY
say "strace table: $STRACE_OUT; wrk: $WRK_OUT"
