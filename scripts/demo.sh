#!/usr/bin/env bash
# The README's quick start in one terminal: build, start the mock OpenAI upstream on
# 127.0.0.1:8080 (standing in for llama.cpp on its usual port, serving the model "chat"),
# then modelgate without a config file: the embedded default listens on 127.0.0.1:4000 and
# discovers the mock. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cargo build --release --bin modelgate --example mock-upstream
target/release/examples/mock-upstream --listen 127.0.0.1:8080 --name chat &
mock=$!
# An empty working directory: no ./config.json, so the embedded default runs.
empty=$(mktemp -d)
trap 'kill "$mock" 2>/dev/null || true; rmdir "$empty" 2>/dev/null || true' EXIT
cd "$empty"
echo "try: curl -s localhost:4000/v1/chat/completions -d '{\"model\":\"chat\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'"
"$root/target/release/modelgate"
