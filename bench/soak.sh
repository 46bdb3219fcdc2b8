#!/usr/bin/env bash
# Soak (issue 6): mixed traffic through modelgate for a fixed time, on loopback only.
#
#   SOAK_SECONDS=600 bash bench/soak.sh      # the full run (CI does not run this)
#   SOAK_SECONDS=30 bash bench/soak.sh       # a quick check
#
# Builds release (modelgate, the mock upstream and the soak client), starts two mock upstreams
# (`alpha`, `beta`) and modelgate routing `alpha-1`/`alpha-2` → alpha and `beta-1` → beta,
# then runs `examples/soak.rs` (see its header for the traffic mix, checks and verdict).
# Knobs (env): SOAK_SECONDS (600), SOAK_THREADS (8), SOAK_WORKERS (modelgate workers, 2),
# SOAK_WARMUP, SOAK_RSS_GROWTH_KIB (10240), SOAK_KINDS (e.g. "abort"), SOAK_SKIP_BUILD=1.
# Every process started here is stopped by PID on exit; the exit status is the client's.
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_TOTAL=${SOAK_SECONDS:-600}
WORKERS=${SOAK_WORKERS:-2}
OUT=$(mktemp -d /tmp/modelgate-soak.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$OUT"
}
trap cleanup EXIT INT TERM

if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
    cargo build --release --bin modelgate --example mock-upstream --example soak
fi
BIN=target/release

wait_line() { # file pattern -> the line, within 10 s
    for _ in $(seq 100); do
        if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
        sleep 0.1
    done
    echo "soak: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}

"$BIN/examples/mock-upstream" --listen 127.0.0.1:0 --name alpha --no-pacing 2>"$OUT/alpha.err" &
PIDS+=($!)
"$BIN/examples/mock-upstream" --listen 127.0.0.1:0 --name beta --no-pacing 2>"$OUT/beta.err" &
PIDS+=($!)
ALPHA=$(wait_line "$OUT/alpha.err" 'listening on' | awk '{print $NF}')
BETA=$(wait_line "$OUT/beta.err" 'listening on' | awk '{print $NF}')

cat >"$OUT/config.json" <<JSON
{
  "listen": "127.0.0.1:0",
  "workers": $WORKERS,
  "accessLog": false,
  "models": {
    "alpha-1": {"url": "http://$ALPHA"},
    "alpha-2": {"url": "http://$ALPHA/"},
    "beta-1": {"url": "http://$BETA"}
  }
}
JSON
"$BIN/modelgate" --config "$OUT/config.json" 2>"$OUT/modelgate.err" &
MG_PID=$!
PIDS+=($MG_PID)
MG=$(wait_line "$OUT/modelgate.err" 'listening on' | sed -E 's/.*listening on ([^,]+),.*/\1/')
echo "soak: modelgate pid $MG_PID on $MG; mocks alpha=$ALPHA beta=$BETA; ${SECONDS_TOTAL}s" >&2
sleep 1

status=0
SOAK_ADDR="$MG" SOAK_PID="$MG_PID" SOAK_SECONDS="$SECONDS_TOTAL" \
    SOAK_MODELS="alpha-1=alpha,beta-1=beta,alpha-2=alpha" \
    "$BIN/examples/soak" || status=$?

if ! kill -0 "$MG_PID" 2>/dev/null; then
    echo "soak: modelgate died" >&2
    cat "$OUT/modelgate.err" >&2
    status=1
fi
if grep -qi "panic" "$OUT/modelgate.err"; then
    echo "soak: modelgate logged a panic" >&2
    grep -i -A5 panic "$OUT/modelgate.err" >&2
    status=1
fi
exit "$status"
