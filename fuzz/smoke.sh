#!/usr/bin/env bash
# Fuzz smoke test: build every target and run each for FUZZ_SECONDS (default 30) seconds.
# Exits non-zero when a target crashes (libFuzzer leaves the input in fuzz/artifacts/).
# Without a nightly toolchain it skips (exit 0): fuzzing is a smoke check, not a gate.
set -euo pipefail

cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-30}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped (no nightly toolchain)"
    exit 0
fi
# cargo-fuzz at a pinned version, built with its own lock file (`--locked`), installed under
# target/ (not ~/.cargo/bin), so every CI run fuzzes with the same tool.
CARGO_FUZZ_VERSION=0.13.2
TOOLS="$(cd .. && pwd)/target/tools"
export PATH="$TOOLS/bin:$PATH"
if [ "$(cargo +nightly fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into $TOOLS"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS"
fi

cargo +nightly fuzz build

# New inputs go to a scratch corpus; the committed seeds (fuzz/corpus/<target>) stay as they are.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

status=0
for target in $(cargo +nightly fuzz list); do
    mkdir -p "$scratch/$target" "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 2>"$scratch/$target.log"; then
        tail -n 40 "$scratch/$target.log"
        echo "fuzz: $target FAILED"
        status=1
    else
        grep -E "^(stat::number_of_executed_units|#[0-9]+.*DONE)" "$scratch/$target.log" || true
    fi
done
exit "$status"
