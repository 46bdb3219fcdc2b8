#!/usr/bin/env bash
# Scale-out test (issue 12), loopback only, about a minute including waits (plus a release
# build when target/release is stale):
#   mock upstream <- 3 modelgate instances <- HAProxy (Debian package; `mode tcp`,
#   `balance leastconn`, `option httpchk` on /health, `retries 3`, `option redispatch 1`)
#   <- steady load (bench/scaleout_load.py: plain requests + 4 s SSE streams, each on a new
#   connection, every failure recorded) for DURATION seconds (default 30).
# Midway: SIGTERM to instance 1 (drain), wait for exit 0, restart it with a config that has an
# extra model; instance 2's config is a Kubernetes-style symlink (config.json -> ..data/…)
# whose ..data gets swapped (watchConfig must see it within 5 s); instance 3 gets the new
# config by SIGHUP. Checks: zero failed client requests, the streams in flight on instance 1
# at SIGTERM all completed, instance 1 exited 0, the extra model is served after the restart
# (directly and through HAProxy, on all 3). Prints PASS/FAIL lines and
# "scaleout: N passed, N failed"; exits 1 on any FAIL. Every process is stopped by PID.
# Needs: cargo, python3, curl; haproxy (installed with apt-get when missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30}
TERM_AT=${TERM_AT:-8}           # seconds into the load when instance 1 gets SIGTERM
KEEP=${KEEP:-0}                 # 1: keep the work dir (logs) even on success
# How instance 1 is stopped:
#   drain (default): the rollout procedure of docs/SCALING.md: `set server … state drain` on
#     HAProxy's admin socket, 1 s, then SIGTERM (what a Kubernetes preStop sleep does);
#   sigterm: SIGTERM alone, relying on connect retries + redispatch + the health check.
STOP_MODE=${STOP_MODE:-drain}

WORK=$(mktemp -d /tmp/modelgate-scaleout.XXXXXX)
PIDS=()
passed=0
failed=0
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.5
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "$failed" = 0 ] && [ "$KEEP" != 1 ]; then
        rm -rf "$WORK"
    else
        echo "scaleout: logs kept in $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

if ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "scaleout: haproxy is missing and we are not root to apt-get it" >&2
        exit 1
    fi
    echo "scaleout: installing haproxy (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
echo "scaleout: $(haproxy -v | head -1)"

cargo build --release --quiet --bin modelgate --example mock-upstream
MG=$PWD/target/release/modelgate
MOCK=$PWD/target/release/examples/mock-upstream

# Six free loopback ports (asked of the kernel, then released).
read -r MOCK_PORT P1 P2 P3 LB_PORT <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss: s.close()')"
PORTS=("" "$P1" "$P2" "$P3")

config() { # PORT WATCH EXTRA(0|1)
    local extra=""
    [ "$3" = 1 ] && extra=", \"extra\": {\"url\": \"http://127.0.0.1:$MOCK_PORT\"}"
    printf '{"listen": "127.0.0.1:%s", "watchConfig": %s, "timeouts": {"shutdown": 20},\n "models": {"mock": {"url": "http://127.0.0.1:%s"}%s}}\n' \
        "$1" "$2" "$MOCK_PORT" "$extra"
}

# Instance 1: a plain file, replaced before the restart.
config "$P1" false 0 >"$WORK/mg1.json"
# Instance 2: laid out like a mounted ConfigMap: config.json -> ..data/config.json,
# ..data -> ..v1 (the kubelet swaps ..data atomically).
mkdir -p "$WORK/mg2/..v1"
config "$P2" true 0 >"$WORK/mg2/..v1/config.json"
ln -s ..v1 "$WORK/mg2/..data"
ln -s ..data/config.json "$WORK/mg2/config.json"
# Instance 3: a plain file, reloaded by SIGHUP.
config "$P3" false 0 >"$WORK/mg3.json"
CFG=("" "$WORK/mg1.json" "$WORK/mg2/config.json" "$WORK/mg3.json")

wait_http() { # URL SECONDS
    local end=$((SECONDS + $2))
    until curl -sf -o /dev/null "$1"; do
        [ $SECONDS -ge $end ] && return 1
        sleep 0.1
    done
}

"$MOCK" --listen "127.0.0.1:$MOCK_PORT" --name mock --no-pacing 2>"$WORK/mock.log" &
PIDS+=($!)
MGPID=("" "" "" "")
start_mg() { # N LOG
    "$MG" --config "${CFG[$1]}" 2>"$2" &
    MGPID[$1]=$!
    PIDS+=($!)
}
for i in 1 2 3; do start_mg "$i" "$WORK/mg$i.log"; done
wait_http "http://127.0.0.1:$MOCK_PORT/health" 10 || { fail "mock upstream did not start"; exit 1; }
for i in 1 2 3; do
    wait_http "http://127.0.0.1:${PORTS[$i]}/health" 10 || { fail "modelgate $i did not start"; cat "$WORK/mg$i.log"; exit 1; }
done

cat >"$WORK/haproxy.cfg" <<HAP
global
    maxconn 4096
    log stdout format raw local0
    stats socket $WORK/haproxy.sock mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    # A refused connect (an instance that has closed its listener to drain) is retried on
    # another server at once: redispatch on every retry.
    retries 3
    option redispatch 1
listen modelgate
    bind 127.0.0.1:$LB_PORT
    balance leastconn
    option httpchk
    http-check send meth GET uri /health ver HTTP/1.1 hdr Host modelgate
    http-check expect status 200
    default-server inter 500ms fastinter 200ms downinter 500ms fall 1 rise 2
    server mg1 127.0.0.1:$P1 check
    server mg2 127.0.0.1:$P2 check
    server mg3 127.0.0.1:$P3 check
HAP
haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$LB_PORT/health" 10 || { fail "haproxy did not start"; cat "$WORK/haproxy.log"; exit 1; }
sleep 1.5 # every server through `rise 2`

haproxy_cmd() { # one admin-socket command
    python3 - "$WORK/haproxy.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode() + b"\n")
while s.recv(65536): pass
PY
}

haproxy_stat() { # prints "srv:status" pairs and backend retries/redispatches
    python3 - "$WORK/haproxy.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"show stat\n")
data = b""
while chunk := s.recv(65536): data += chunk
rows = [l.split(",") for l in data.decode().splitlines() if l and not l.startswith("#")]
hdr = data.decode().splitlines()[0].lstrip("# ").split(",")
for r in rows:
    d = dict(zip(hdr, r))
    if d["svname"] in ("FRONTEND",): continue
    print(f'{d["svname"]}:{d["status"]}:conns={d["stot"]}:retries={d["wretr"]}:redisp={d["wredis"]}:errcon={d["econ"]}')
PY
}

echo "scaleout: mock :$MOCK_PORT, modelgate :$P1 :$P2 :$P3, haproxy :$LB_PORT; load ${DURATION}s"
python3 bench/scaleout_load.py "127.0.0.1:$LB_PORT" "$DURATION" "$WORK/load.json" &
LOADPID=$!
PIDS+=($LOADPID)
sleep "$TERM_AT"

# --- drain instance 1 under load --------------------------------------------------------
if [ "$STOP_MODE" = drain ]; then
    haproxy_cmd "set server modelgate/mg1 state drain"
    sleep 1
fi
inflight=$(curl -sf "http://127.0.0.1:$P1/metrics" | awk '/^modelgate_in_flight_requests /{print $2}')
T_TERM=$(now)
kill -TERM "${MGPID[1]}"
rc=0
wait "${MGPID[1]}" || rc=$?
T_EXIT=$(now)
DRAIN=$(secs "$T_TERM" "$T_EXIT")
echo "scaleout: instance 1 had $inflight requests in flight at SIGTERM; exited rc=$rc after ${DRAIN}s"
if [ "$rc" = 0 ]; then pass "instance 1 drained and exited 0 (${DRAIN}s)"; else fail "instance 1 exit code $rc after SIGTERM"; fi

config "$P1" false 1 >"$WORK/mg1.json.tmp" && mv "$WORK/mg1.json.tmp" "$WORK/mg1.json"
start_mg 1 "$WORK/mg1-restarted.log"
if wait_http "http://127.0.0.1:$P1/health" 10; then
    T_UP=$(now)
    echo "scaleout: instance 1 restarted, healthy $(secs "$T_EXIT" "$T_UP")s after the old one exited"
else
    fail "instance 1 did not come back"
fi
[ "$STOP_MODE" = drain ] && haproxy_cmd "set server modelgate/mg1 state ready"
if curl -sf "http://127.0.0.1:$P1/v1/models" | grep -q '"id":"extra"'; then
    pass "restarted instance 1 lists the extra model"
else
    fail "restarted instance 1 does not list the extra model"
fi

# --- watchConfig: swap instance 2's ..data symlink --------------------------------------
mkdir -p "$WORK/mg2/..v2"
config "$P2" true 1 >"$WORK/mg2/..v2/config.json"
ln -s ..v2 "$WORK/mg2/..data_tmp"
T_SWAP=$(now)
mv -T "$WORK/mg2/..data_tmp" "$WORK/mg2/..data"
seen=""
while [ "$(secs "$T_SWAP" "$(now)" | cut -d. -f1)" -lt 5 ]; do
    if curl -sf "http://127.0.0.1:$P2/v1/models" | grep -q '"id":"extra"'; then seen=$(now); break; fi
    sleep 0.05
done
if [ -n "$seen" ]; then
    pass "watchConfig: instance 2 serves the swapped symlink config after $(secs "$T_SWAP" "$seen")s (limit 5s)"
else
    fail "watchConfig: instance 2 did not pick up the symlink swap within 5s"
fi

# --- SIGHUP: instance 3 -----------------------------------------------------------------
config "$P3" false 1 >"$WORK/mg3.json.tmp" && mv "$WORK/mg3.json.tmp" "$WORK/mg3.json"
kill -HUP "${MGPID[3]}"
wait_http "http://127.0.0.1:$P3/v1/models/extra" 5 && pass "SIGHUP: instance 3 serves the extra model" \
    || fail "SIGHUP: instance 3 does not serve the extra model"

# --- the extra model through HAProxy, on every instance ---------------------------------
sleep 1 # instance 1 back through `rise 2`
bad=0
for n in $(seq 1 30); do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Connection: close' -H 'Content-Type: application/json' \
        -d '{"model":"extra","messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$LB_PORT/v1/chat/completions" || true)
    [ "$code" = 200 ] || bad=$((bad + 1))
done
if [ "$bad" = 0 ]; then pass "extra model: 30/30 requests through HAProxy answered 200"; else fail "extra model: $bad/30 requests through HAProxy failed"; fi
for i in 1 2 3; do
    curl -sf -o /dev/null "http://127.0.0.1:${PORTS[$i]}/v1/models/extra" || fail "instance $i does not serve the extra model"
done

# --- results of the load ----------------------------------------------------------------
wait "$LOADPID" || echo "scaleout: load client exited non-zero"
echo "scaleout: haproxy after the run:"
haproxy_stat | sed 's/^/  /'
python3 - "$WORK/load.json" "$T_TERM" "$WORK/mg1.log" "$WORK/mg1-restarted.log" >"$WORK/analysis.txt" <<'PY' || true
import datetime, json, sys
load = json.load(open(sys.argv[1]))
t_term = float(sys.argv[2])
ok_ids = set(load["ok_ids"])
status = 0
def out(ok, msg):
    global status
    print(("PASS " if ok else "FAIL ") + msg)
    if not ok: status |= 1
print(f"scaleout: load: {load['requests']} requests ({load['plain']} plain, {load['streams']} SSE streams), {load['failed']} failed")
for f in load["failures"][:10]:
    print(f"  failed {f['id']} ({f['kind']}) at t_term{f['start'] - t_term:+.3f}s: {f['reason']}")
out(load["failed"] == 0 and load["requests"] > 0, f"zero failed client requests ({load['failed']} of {load['requests']})")
def entries(path):
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try: yield json.loads(line)
            except ValueError: pass
spanning, bad = 0, []
for e in entries(sys.argv[3]):
    # ts is when the request started (src/accesslog.rs), duration_ms how long it took.
    start = datetime.datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
    end = start + e["duration_ms"] / 1000.0
    rid = e.get("request_id") or ""
    if rid.startswith("s-") and start < t_term < end:
        spanning += 1
        if e["status"] != 200 or e["outcome"] != "ok" or rid not in ok_ids:
            bad.append(rid)
out(spanning > 0 and not bad, f"{spanning} SSE streams in flight on instance 1 at SIGTERM all completed intact"
    + (f" (broken: {bad})" if bad else ""))
after = sum(1 for e in entries(sys.argv[4]) if (e.get("request_id") or "").startswith(("p-", "s-")))
out(after > 0, f"restarted instance 1 took load again ({after} requests)")
sys.exit(status)
PY
cat "$WORK/analysis.txt"
passed=$((passed + $(grep -c '^PASS ' "$WORK/analysis.txt" || true)))
failed=$((failed + $(grep -c '^FAIL ' "$WORK/analysis.txt" || true)))
grep -q '^PASS zero failed' "$WORK/analysis.txt" || [ "$(grep -c '^FAIL zero failed' "$WORK/analysis.txt" || true)" = 1 ] \
    || fail "load analysis did not run"

# Connections HAProxy did not complete (tcplog termination state other than "--").
awk '/ modelgate modelgate\// && $0 !~ / -- / {n++; if (n <= 5) print "  haproxy: " $0} END {print "scaleout: haproxy logged " n+0 " abnormal connection endings"}' "$WORK/haproxy.log"
echo "scaleout: summary: stop mode $STOP_MODE; drain of instance 1 took ${DRAIN}s with ${inflight:-?} requests in flight"
echo "scaleout: $passed passed, $failed failed"
[ "$failed" = 0 ]
