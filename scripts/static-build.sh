#!/usr/bin/env bash
# Build modelgate as one statically linked, stripped executable that runs on any x86_64 Linux
# (a bare host, a FROM-scratch image, an appliance) with nothing from a distribution.
#
#   scripts/static-build.sh            # build, print the output path
#
# Target choice:
#   - x86_64-unknown-linux-gnu with `-C target-feature=+crt-static` (static glibc), the default.
#     Everything modelgate needs works statically (sockets, signals, IP literals, unix sockets).
#     Static glibc still tries to dlopen NSS modules for getaddrinfo(); see docs/DEPLOYMENT.md,
#     "Name resolution in the static binary", for exactly what resolves and what does not.
#   - MODELGATE_STATIC_TARGET=x86_64-unknown-linux-musl builds for musl (needs
#     `rustup target add x86_64-unknown-linux-musl` and Debian's musl-tools for ring's C code):
#     a smaller binary (2.43 MiB) with a plain resolver, but 9.3% more user-space
#     instructions per proxied request (callgrind: musl's malloc on three per-request
#     allocations, its memcpy and bcmp; docs/DEPLOYMENT.md, "Memory and the allocator"), so
#     it is opt-in until those allocations are gone.
#
# Size knobs: MODELGATE_STATIC_SMALL=1 also builds modelgate's own code for size (2.99 MiB,
# about 10% more CPU per request: for appliances where flash matters more than CPU);
# MODELGATE_STATIC_FULL_OPT=1 builds every crate at opt-level 3.
#
# Output: the binary is copied to target/static/modelgate (the path Dockerfile.scratch COPYs and
# scripts/static-check.sh runs), whichever target built it. CARGO_TARGET_DIR is honoured for the
# cargo build itself; the copy always lands in ./target/static/ of the repository.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

target=${MODELGATE_STATIC_TARGET:-x86_64-unknown-linux-gnu}
if [[ $target == *-musl && -z ${CC_x86_64_unknown_linux_musl:-} ]] && command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl=musl-gcc
fi

# crt-static is the default on musl and what makes glibc links static. Keep any RUSTFLAGS the
# caller set (e.g. -C target-cpu) and add ours.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# Size: static glibc alone is ~1.2 MB of the binary. The crates off the per-byte data path
# (TLS handshake/record code whose ciphers are assembly anyway, the config/endpoint JSON, the
# CLI parser, the root store) are optimised for size; the engine, httparse, memchr and mio keep
# the release profile's opt-level 3. Measured when it was introduced: 3.04 MiB -> 2.76 MiB;
# with issues 9-11 (replicas, tokens, profiles, multipart, tunnels, discovery) 3.21 MiB.
size_opts=()
if [[ ${MODELGATE_STATIC_FULL_OPT:-0} != 1 ]]; then
    crates=(rustls rustls-webpki ring webpki-roots serde_json pico-args)
    if [[ ${MODELGATE_STATIC_SMALL:-0} == 1 ]]; then
        crates+=(modelgate)
    fi
    for crate in "${crates[@]}"; do
        size_opts+=(--config "profile.release.package.$crate.opt-level=\"s\"")
    done
fi

echo "static-build: cargo build --release --locked --target $target (RUSTFLAGS=$RUSTFLAGS)" >&2
cargo build --release --locked --target "$target" --bin modelgate "${size_opts[@]}"

built="$target_dir/$target/release/modelgate"
out_dir="$repo/target/static"
mkdir -p "$out_dir"
# The release profile already strips (strip = true); strip again only if a tool is around and
# the profile ever changes. cp -f keeps the copy a plain file (no hard link into target/).
cp -f "$built" "$out_dir/modelgate"
if command -v strip >/dev/null; then
    strip --strip-all "$out_dir/modelgate" 2>/dev/null || true
fi
echo "$target" >"$out_dir/TARGET"
echo "$out_dir/modelgate"
