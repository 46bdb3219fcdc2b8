#!/usr/bin/env bash
# User-space instructions per proxied request of a modelgate binary, by callgrind (repeatable on
# a loaded machine, unlike wall-clock figures):
#
#   bench/instructions.sh BINARY [N1] [N2]     # default 200 and 1200 requests
#
# The binary runs under `valgrind --tool=callgrind` (1 worker, access log off) twice: once
# serving N1 and once N2 requests (bench/post.lua's ~1 KB chat body, `model` last, on one
# keep-alive connection, sent by a small Python client), then SIGTERM. Per request =
# (instructions of run 2 - run 1) / (N2 - N1): startup, shutdown and warm-up cancel out.
# Prints the figure and leaves both callgrind files in bench/out/ for callgrind_annotate.
# Optional environment: EXTRA_CONFIG (top-level JSON members added to the config, e.g.
# '"authTokens": [...]'), TOKEN (sent as `Authorization: Bearer`), LABEL (names the output
# files, so several variants can be measured side by side; bench/shared_limits.sh does),
# MOCK_BIN (the mock upstream binary; default target/release/examples/mock-upstream).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
BIN=$(realpath "$1")
N1=${2:-200}
N2=${3:-1200}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
MOCK_BIN=${MOCK_BIN:-$ROOT/target/release/examples/mock-upstream}
[ -x "$MOCK_BIN" ] || cargo build --release --example mock-upstream --quiet
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
"$MOCK_BIN" --listen 127.0.0.1:0 --name bench 2>"$OUT/ins-mock.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'listening on' "$OUT/ins-mock.log" && break; sleep 0.05; done
MOCK=$(grep -m1 'listening on' "$OUT/ins-mock.log" | sed 's/.*listening on //')
LABEL=${LABEL:-$(basename "$BIN")}
CONFIG="$OUT/ins-$LABEL.json"
# Busy polling stays off in what is counted here (bench/nospin.sh).
source "$ROOT/bench/nospin.sh"
NOSPIN=$(nospin "$BIN")
cat >"$CONFIG" <<JSON
{ "listen": "127.0.0.1:0", "workers": 1, "accessLog": false, $NOSPIN ${EXTRA_CONFIG:+$EXTRA_CONFIG,}
  "models": { "bench": { "url": "http://$MOCK" } } }
JSON
export TOKEN=${TOKEN:-}
client() { # addr n
    python3 - "$1" "$2" <<'PY'
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
body = b'{"messages":[{"role":"user","content":"' + b"x" * 900 + b'"}],"max_tokens":16,"model":"bench"}'
import os
auth = b"Authorization: Bearer " + os.environ["TOKEN"].encode() + b"\r\n" if os.environ.get("TOKEN") else b""
req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
       + auth + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
s = socket.create_connection((host, int(port)))
f = s.makefile("rb")
for _ in range(n):
    s.sendall(req)
    status = f.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    f.read(length)
PY
}
run() { # n -> instructions
    local n=$1 log="$OUT/ins-$LABEL-$1.log"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$LABEL.$n" \
        "$BIN" --config "$CONFIG" 2>"$log" &
    local pid=$!
    for _ in $(seq 600); do grep -q 'listening on' "$log" && break; sleep 0.1; done
    local addr
    addr=$(grep -m1 'listening on' "$log" | sed -E 's/.*listening on ([^ ,]+).*/\1/')
    client "$addr" 20 # warm-up: pooled upstream connection, first-touch pages
    client "$addr" "$n"
    kill -TERM $pid
    wait $pid || true
    # The totals of the output file (valgrind's own summary line can miss threads).
    awk '/^totals:/ {print $2}' "$OUT/callgrind.$LABEL.$n"
}
i1=$(run "$N1")
i2=$(run "$N2")
echo "$LABEL: $(( (i2 - i1) / (N2 - N1) )) instructions per request ($N1: $i1, $N2: $i2)"
