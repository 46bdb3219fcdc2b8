#!/usr/bin/env bash
# Builds Dockerfile.scratch with buildah and proves the image routes a request:
#   1. uses target/static/modelgate (runs scripts/static-build.sh when it is missing);
#   2. `buildah bud` (vfs storage, chroot isolation: no daemon, no overlay, no user namespaces
#      needed) into a private store under a temp dir, prints the image size;
#   3. runs the image's own ENTRYPOINT + CMD with `buildah run --isolation chroot
#      --network host`, the config mounted read-only at /config.json, as the image's USER;
#   4. routes a chat completion through it to a mock upstream on the host's loopback.
# Everything it creates (containers, images, storage, processes) is removed on exit.
#
# Needs: buildah (installed with apt when missing and running as root; otherwise the script
# prints "SKIP: ..." and exits 0), python3, curl.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf 'image-check: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
skip() { say "SKIP: $*"; exit 0; }

if ! command -v buildah >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing buildah with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq buildah >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq buildah >/dev/null 2>&1; } ||
            skip "buildah is not installed and apt-get install buildah failed"
    else
        skip "buildah is not installed (install the Debian package buildah, as root)"
    fi
fi
# vfs storage and chroot isolation work as root without fuse-overlayfs or subuid ranges;
# rootless buildah would need /etc/subuid entries and user namespaces.
[[ $(id -u) == 0 ]] || skip "buildah here needs root (vfs storage + chroot isolation)"

if [[ ! -x target/static/modelgate ]]; then
    scripts/static-build.sh >/dev/null
fi

work=$(mktemp -d /tmp/modelgate-image-check.XXXXXX)
store=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
pids=()
ctr=""
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    [[ -n $ctr ]] && buildah "${store[@]}" rm "$ctr" >/dev/null 2>&1 || true
    buildah "${store[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

say "buildah $(buildah --version | awk '{print $3}')"
BUILDAH_ISOLATION=chroot buildah "${store[@]}" bud --isolation chroot --pull=false \
    -f Dockerfile.scratch -t modelgate:scratch . >"$work/build.log" 2>&1 ||
    { cat "$work/build.log" >&2; fail "buildah bud"; }
image_size=$(buildah "${store[@]}" images --format '{{.Size}}' modelgate:scratch)
buildah "${store[@]}" push modelgate:scratch "oci-archive:$work/image.tar" >/dev/null 2>&1 ||
    fail "buildah push to an oci-archive"
archive_bytes=$(stat -c %s "$work/image.tar")
say "image modelgate:scratch: $image_size (oci-archive of the whole image: $archive_bytes bytes)"

buildah "${store[@]}" inspect --type image modelgate:scratch >"$work/inspect.json" ||
    fail "buildah inspect"
# Prints USER, then ENTRYPOINT + CMD one word a line (buildah 1.28 templates have no json).
mapfile -t image_cfg < <(python3 -c '
import json, sys
c = json.load(open(sys.argv[1]))["OCIv1"]["config"]
print(c.get("User", ""))
print("\n".join((c.get("Entrypoint") or []) + (c.get("Cmd") or [])))' "$work/inspect.json")
user=${image_cfg[0]}
argv=("${image_cfg[@]:1}")
[[ $user == 65534:65534 ]] || fail "image USER is '$user', want 65534:65534"
say "user $user, entrypoint + cmd: ${argv[*]}"
[[ ${argv[*]} == "/modelgate --config /config.json" ]] || fail "unexpected entrypoint/cmd: ${argv[*]}"

# Mock upstream on the host's loopback (the container shares the host network).
cat >"$work/mock.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        req = json.loads(self.rfile.read(n) or b"{}")
        body = json.dumps({"object": "chat.completion", "model": req.get("model"),
                           "choices": [{"index": 0, "message": {"role": "assistant",
                                        "content": "hello from mock"}}]}).encode()
        self.send_response(200 if self.path == "/v1/chat/completions" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
PY
python3 "$work/mock.py" "$work/mock.port" &
pids+=($!)
for _ in $(seq 1 100); do [[ -s $work/mock.port ]] && break; sleep 0.1; done
mock_port=$(cat "$work/mock.port") || fail "mock upstream did not start"

# The config as a user would mount it: listen on all interfaces (port 0 = any free port,
# reported in the startup line), readable by the image's non-root user.
cat >"$work/config.json" <<JSON
{
  "listen": ":0",
  "timeouts": {"shutdown": 5},
  "models": {"chat": {"url": "http://127.0.0.1:$mock_port"}}
}
JSON
chmod 0644 "$work/config.json"

ctr=$(buildah "${store[@]}" from --pull=false modelgate:scratch)
buildah "${store[@]}" run --isolation chroot --network host \
    -v "$work/config.json:/config.json:ro" "$ctr" -- "${argv[@]}" 2>"$work/modelgate.log" &
pids+=($!)
for _ in $(seq 1 100); do
    grep -q 'listening on' "$work/modelgate.log" && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/modelgate.log" >&2; fail "container exited"; }
    sleep 0.1
done
line=$(grep -m1 'listening on' "$work/modelgate.log") ||
    { cat "$work/modelgate.log" >&2; fail "no startup line"; }
say "startup: $line"
port=$(sed -E 's/.*listening on [^,]*:([0-9]+),.*/\1/' <<<"$line")

# The process really runs as the image's user: find modelgate among the descendants of our
# `buildah run` (other modelgate processes on this machine are not ours).
find_child() { # pid -> the first descendant named modelgate
    local child
    for child in $(pgrep -P "$1" || true); do
        if [[ $(cat "/proc/$child/comm" 2>/dev/null) == modelgate ]]; then
            echo "$child"
            return 0
        fi
        find_child "$child" && return 0
    done
    return 1
}
mg_pid=$(find_child "${pids[-1]}") || fail "no modelgate process under buildah run"
uid=$(awk '/^Uid:/ {print $2}' "/proc/$mg_pid/status")
say "container process $mg_pid runs as uid $uid"
[[ $uid == 65534 ]] || fail "container process runs as uid $uid, want 65534"

out=$(curl -sS --max-time 10 -w '\n%{http_code}' "http://127.0.0.1:$port/v1/chat/completions" \
    -H 'Content-Type: application/json' \
    -d '{"model":"chat","messages":[{"role":"user","content":"hi"}]}') ||
    { cat "$work/modelgate.log" >&2; fail "curl through the container"; }
code=${out##*$'\n'}
[[ $code == 200 && $out == *"hello from mock"* ]] ||
    { cat "$work/modelgate.log" >&2; fail "HTTP $code: $out"; }
say "routed chat through the image -> HTTP $code"
say "PASS: image builds ($image_size) and routes a request"
