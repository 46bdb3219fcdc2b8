#!/usr/bin/env bash
# The project's test command: unit + integration tests, including the OpenAI Python SDK test.
#
#   scripts/test.sh [cargo test args...]      e.g. scripts/test.sh --test openai_sdk
#
# Creates (once) a venv at target/sdk-venv with the `openai` package (pinned: OPENAI_VERSION
# below, so CI runs are reproducible; a venv with another version is rebuilt), exports
# MODELGATE_SDK_PYTHON so tests/openai_sdk.rs (and the SDK audio upload test in tests/multipart.rs)
# run, installs Debian's chromium for tests/status_page.rs when missing (as root), then runs
# `cargo test --all-targets`.
# Idempotent: with the venv in place it only runs cargo. Set MODELGATE_SDK_PYTHON yourself
# to use another interpreter (the venv step is then skipped).
# The shared-limits tests (tests/shared_limits.rs) run Debian's redis-server and haproxy: they
# are installed with apt-get when missing and this runs as root (versions pinned below, the
# archive's current ones if those are gone), and MODELGATE_REQUIRE_STORES=1 then makes those
# tests fail rather than skip if they cannot find them. Without root they skip, saying why.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/target/sdk-venv"
# The openai SDK the tests drive; bump deliberately (and run the suite) to test a newer one.
OPENAI_VERSION=3.63.0
# Debian bookworm's packages for the shared-limits tests.
REDIS_DEB_VERSION=5:7.0.15-1~deb12u10
HAPROXY_DEB_VERSION=2.6.12-1+deb12u4

say() { printf '[test.sh] %s\n' "$*" >&2; }
die() { printf '[test.sh] ERROR: %s\n' "$*" >&2; exit 1; }

venv_works() {
    [ -x "$VENV/bin/python" ] \
        && [ "$("$VENV/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null)" = "$OPENAI_VERSION" ]
}

make_venv() {
    command -v python3 >/dev/null 2>&1 || install_python
    # `python3 -m venv --help` succeeds even without ensurepip (Debian splits it out), so probe
    # by actually creating a throwaway venv.
    local probe
    probe=$(mktemp -d)
    if ! python3 -m venv "$probe/v" >/dev/null 2>&1; then
        rm -rf "$probe"
        install_python
        probe=$(mktemp -d)
        python3 -m venv "$probe/v" >/dev/null 2>&1 \
            || die "python3 -m venv does not work even after installing python3-venv"
    fi
    rm -rf "$probe"
    say "creating $VENV with openai==$OPENAI_VERSION"
    rm -rf "$VENV"
    mkdir -p "$ROOT/target"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" \
        || die "pip install openai==$OPENAI_VERSION failed (is PyPI reachable?)"
    venv_works || die "the venv at $VENV cannot import openai $OPENAI_VERSION"
}

install_python() {
    if [ "$(id -u)" != 0 ]; then
        die "python3 with venv support is missing; install python3 and python3-venv (e.g. apt-get install python3-venv), or set MODELGATE_SDK_PYTHON"
    fi
    command -v apt-get >/dev/null 2>&1 || die "python3-venv is missing and apt-get is not available"
    say "installing python3 python3-venv python3-pip with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq python3 python3-venv python3-pip >/dev/null \
        || die "apt-get install python3-venv failed"
}

# The status page test (tests/status_page.rs) drives headless Chromium; it installs nothing
# itself. Install Debian's chromium here when it is missing and we are root; otherwise (or if
# the install fails) that test says it skips and why, except under CI, where it fails.
# Not pinned: Debian keeps only the current security release of chromium in its archive,
# so a pinned version would stop installing at the next update.
have_chromium() {
    [ -n "${MODELGATE_CHROMIUM:-}" ] && return 0
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1
}
if ! have_chromium; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing chromium with apt-get (for tests/status_page.rs)"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
            say "could not install chromium: the status page test will skip (and fail under CI)"
        fi
    else
        say "chromium is missing and this is not root: the status page test will skip (apt-get install chromium)"
    fi
fi
have_chromium && say "chromium: $( { chromium --version || chromium-browser --version || google-chrome --version; } 2>/dev/null | head -1)"

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }

ensure_stores() {
    local missing=()
    have redis-server || missing+=(redis-server)
    have haproxy || missing+=(haproxy)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            say "${missing[*]} missing and no root apt-get: tests/shared_limits.rs will skip (apt-get install redis-server haproxy)"
            return
        fi
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        local pinned=()
        for pkg in "${missing[@]}"; do
            case $pkg in
                redis-server) pinned+=("redis-server=$REDIS_DEB_VERSION") ;;
                haproxy) pinned+=("haproxy=$HAPROXY_DEB_VERSION") ;;
            esac
        done
        # RUNLEVEL=1: the packages' init scripts do not start system-wide daemons.
        if ! RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${pinned[@]}" >/dev/null 2>&1; then
            say "pinned ${pinned[*]} not in the archive any more; installing its current versions"
            RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
                || die "apt-get install ${missing[*]} failed"
        fi
    fi
    if have redis-server && have haproxy; then
        export MODELGATE_REQUIRE_STORES=1
        say "redis-server and haproxy present: tests/shared_limits.rs runs them"
    fi
}

ensure_stores

if [ -z "${MODELGATE_SDK_PYTHON:-}" ]; then
    venv_works || make_venv
    export MODELGATE_SDK_PYTHON="$VENV/bin/python"
fi
say "MODELGATE_SDK_PYTHON=$MODELGATE_SDK_PYTHON"

# Run everything, then close with one plain line that totals every suite (the per-binary
# "test result" lines end with targets that hold no tests).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(grep -E '^test result: ' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | awk '{s+=$1} END {print s+0}')
summary="tests: $passed passed, $failed failed"
mkdir -p target
echo "$summary" > target/test-summary.txt
echo "$summary"
exit "$status"
