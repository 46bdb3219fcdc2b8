#!/usr/bin/env bash
# The README's first command: build, start the mock OpenAI upstream on 127.0.0.1:9001 and
# modelgate on 127.0.0.1:8080 with examples/config.json. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin modelgate --example mock-upstream
target/release/examples/mock-upstream --listen 127.0.0.1:9001 --name mock &
mock=$!
trap 'kill "$mock" 2>/dev/null || true' EXIT
echo "try: curl -s localhost:8080/v1/chat/completions -d '{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
target/release/modelgate --config examples/config.json
