#!/usr/bin/env bash
# Syntax-and-shape check of the Nix files, for machines without nixpkgs (like CI here):
#   1. `nix-instantiate --parse` on every .nix file in the repository;
#   2. evaluates nix/module.nix against nix/tests/eval-stub.nix, a small stand-in for the
#      NixOS module system, and fails unless every shape check holds (Type=notify, hardening,
#      socket units, credentials, workers, assertions; see that file).
# This is NOT the NixOS VM test (nix/tests/vm.nix, `nix build .#checks.x86_64-linux.vm`), which
# needs nixpkgs and KVM and is the real test of the module.
#
# Needs: nix-instantiate (Debian package nix-bin; installed with apt when missing and root,
# otherwise the script prints "SKIP: ..." and exits 0). No daemon, no store writes beyond
# what --eval needs, no network.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf 'nix-check: %s\n' "$*" >&2; }

if ! command -v nix-instantiate >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing nix-bin with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq nix-bin >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq nix-bin >/dev/null 2>&1; } ||
            { say "SKIP: nix-instantiate missing and apt-get install nix-bin failed"; exit 0; }
    else
        say "SKIP: nix-instantiate missing (install the Debian package nix-bin, as root)"
        exit 0
    fi
fi
say "$(nix-instantiate --version)"

# Evaluation only: keep Nix from wanting a daemon or a writable /nix/var as a normal user.
export NIX_REMOTE=${NIX_REMOTE:-}
export NIX_CONFIG="${NIX_CONFIG:-}
experimental-features = nix-command flakes"

mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort)
((${#files[@]} > 0)) || { say "FAIL: no .nix files found"; exit 1; }
failed=0
for f in "${files[@]}"; do
    if nix-instantiate --parse "$f" >/dev/null 2>"$repo/.nix-check.err"; then
        say "parse ok: $f"
    else
        say "parse FAILED: $f"
        cat "$repo/.nix-check.err" >&2
        failed=1
    fi
done
rm -f "$repo/.nix-check.err"
((failed == 0)) || { say "FAIL: parse errors"; exit 1; }

summary=$(nix-instantiate --eval --strict nix/tests/eval-stub.nix -A summary 2>&1) || {
    echo "$summary" >&2
    say "FAIL: module shape check"
    exit 1
}
say "${summary//\"/}"
# The whole list, so a reader of the CI log sees what "shape" covered.
nix-instantiate --eval --strict --json nix/tests/eval-stub.nix -A checks |
    python3 -c 'import json, sys
for name, ok in sorted(json.load(sys.stdin).items()):
    print(("  ok    " if ok else "  FAIL  ") + name)' >&2
say "PASS: ${#files[@]} files parse; module shape holds (a stand-in, not the NixOS VM test)"
