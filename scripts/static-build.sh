#!/usr/bin/env bash
# Build modelgate as one statically linked, stripped executable that runs on any x86_64 Linux
# (a bare host, a FROM-scratch image, an appliance) with nothing from a distribution.
#
#   scripts/static-build.sh            # build, print the output path
#
# Target choice:
#   - x86_64-unknown-linux-musl, the default and the build users copy (onto hosts, into the
#     FROM-scratch image): 2.6 MiB, with musl's plain resolver (/etc/hosts, /etc/resolv.conf,
#     no NSS). Since issue 19 a proxied request makes no allocator call, so musl's malloc is
#     off the data path; what is left of musl's cost is its memcpy/bcmp on short copies,
#     ~3% more user-space instructions per request than glibc (callgrind; about 0.5% of a
#     request's CPU, which is mostly the kernel's). Needs the Rust target
#     (`rustup target add x86_64-unknown-linux-musl`: tried here when it is missing) and a C
#     compiler for musl for ring's C code (Debian's musl-tools, installed here with apt when
#     missing and root).
#   - MODELGATE_STATIC_TARGET=x86_64-unknown-linux-gnu builds static glibc
#     (`-C target-feature=+crt-static`): 3.4 MiB. Static glibc still tries to dlopen NSS
#     modules for getaddrinfo(); see docs/DEPLOYMENT.md, "Name resolution in the static
#     binary". It is also what this script falls back to, saying so, on a machine whose Rust
#     has no musl target and cannot fetch it.
#
# Size knobs: MODELGATE_STATIC_SMALL=1 also builds modelgate's own code for size (about 10%
# more CPU per request: for appliances where flash matters more than CPU);
# MODELGATE_STATIC_FULL_OPT=1 builds every crate at opt-level 3.
#
# Output: the binary is copied to target/static/modelgate (the path Dockerfile.scratch COPYs and
# scripts/static-check.sh runs), whichever target built it. CARGO_TARGET_DIR is honoured for the
# cargo build itself; the copy always lands in ./target/static/ of the repository.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

say() { printf 'static-build: %s\n' "$*" >&2; }

target=${MODELGATE_STATIC_TARGET:-x86_64-unknown-linux-musl}
if [[ $target == *-musl ]]; then
    # The Rust standard library for musl (rustup's target; it brings musl's own libc.a).
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        say "the Rust target $target is not installed: rustup target add $target"
        rustup target add "$target" >&2 || true
    fi
    # ring builds C code: it needs a compiler for musl (Debian: musl-tools' musl-gcc).
    if ! command -v musl-gcc >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing musl-tools (musl-gcc, for ring's C code) with apt"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null 2>&1; } || true
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target" || ! command -v musl-gcc >/dev/null; then
        if [[ -n ${MODELGATE_STATIC_TARGET:-} ]]; then
            say "FAIL: $target asked for, but its Rust target or musl-gcc is missing"
            exit 1
        fi
        say "WARNING: no Rust musl target or no musl-gcc here: building static glibc instead"
        say "WARNING: (3.4 MiB, over the 3 MiB of the musl build that is shipped)"
        target=x86_64-unknown-linux-gnu
    fi
fi
if [[ $target == *-musl && -z ${CC_x86_64_unknown_linux_musl:-} ]]; then
    export CC_x86_64_unknown_linux_musl=musl-gcc
fi

# crt-static is the default on musl and what makes glibc links static. Keep any RUSTFLAGS the
# caller set (e.g. -C target-cpu) and add ours.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# Size: the crates off the per-byte data path (TLS handshake/record code whose ciphers are
# assembly anyway, the config/endpoint JSON, the CLI parser, the root store) are optimised for
# size; the engine, httparse, memchr and mio keep the release profile's opt-level 3. Measured
# when it was introduced (glibc): 3.04 MiB -> 2.76 MiB. Static glibc alone is ~1.2 MB of its
# binary (getaddrinfo pulls in NSS), musl ~0.3 MB: musl 2.59 MiB, glibc 3.44 MiB (issue 19).
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

say "cargo build --release --locked --target $target (RUSTFLAGS=$RUSTFLAGS)"
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
