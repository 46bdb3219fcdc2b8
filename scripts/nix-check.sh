#!/usr/bin/env bash
# The Nix checks that run without nixpkgs (like CI here):
#   1. `nix-instantiate --parse` on every .nix file in the repository;
#   2. nix/tests/eval-stub.nix: nix/module.nix (and flake.nix, and the flake's eval-only
#      checks) evaluated on a stand-in of the NixOS module system (nix/tests/stub/: priorities,
#      mkIf/mkMerge, type merging and checks, unit-name lists, oci-containers), every check
#      listed (router, workers, shared defaults, GPU units, sequential start, image pins, both
#      container backends, assertions, flake outputs);
#   3. the configurations that must fail, failing with the right message: an invalid worker
#      name gives the module's assertion (not a type error from a unit list), a bad unit name
#      in after= is a type error (so the stub can catch one), two plain backend definitions
#      conflict, and pull = "newer" on Docker is refused.
# This is NOT the real module system: the flake's eval-* checks (nixpkgs.lib.nixosSystem,
# `nix flake check --no-build`) and the NixOS VM test (nix/tests/vm.nix,
# `nix build .#checks.x86_64-linux.vm`) need nixpkgs (and KVM) and are the real tests.
#
# Needs: nix-instantiate (Debian package nix-bin, installed with apt when missing and root;
# elsewhere the script prints "SKIP: ..." and exits 0, but under CI=true a missing Nix is a
# failure) and python3. No daemon, no store writes beyond what --eval needs, no network.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf 'nix-check: %s\n' "$*" >&2; }
skip() {
    if [[ ${CI:-} == true ]]; then
        say "FAIL: $* (CI must run these checks)"
        exit 1
    fi
    say "SKIP: $*"
    exit 0
}

# Debian bookworm's nix-bin; another version is used (and named) if the archive moved on.
NIX_BIN_VERSION=${NIX_BIN_VERSION:-2.8.0-1.1+b1}
if ! command -v nix-instantiate >/dev/null; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing nix-bin=$NIX_BIN_VERSION with apt"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq "nix-bin=$NIX_BIN_VERSION" >/dev/null 2>&1 ||
            { say "nix-bin=$NIX_BIN_VERSION not available; installing the archive's nix-bin" &&
                apt-get install -y -qq nix-bin >/dev/null 2>&1; } ||
            skip "nix-instantiate missing and apt-get install nix-bin failed"
    else
        skip "nix-instantiate missing (install the Debian package nix-bin, as root)"
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

stub=nix/tests/eval-stub.nix
summary=$(nix-instantiate --eval --strict "$stub" -A summary 2>&1) || failed=1
# The whole list, so a reader of the CI log sees what was covered; then, for each check that
# failed, its own evaluation error (or `false`).
results=$(nix-instantiate --eval --strict --json "$stub" -A results) || {
    say "FAIL: the checks do not evaluate (an error that tryEval cannot catch, shown above:"
    say "a missing attribute such as an alias the stub's pkgs lacks, or an infinite recursion)"
    exit 1
}
mapfile -t failing < <(python3 -c 'import json, sys
for name, ok in sorted(json.loads(sys.argv[1]).items()):
    print(("  ok    " if ok else "  FAIL  ") + name, file=sys.stderr)
    if not ok:
        print(name)' "$results")
for name in "${failing[@]}"; do
    say "FAILED: $name:"
    nix-instantiate --eval --strict --argstr name "$name" \
        -E "{ name }: (import $repo/$stub { }).checks.\${name}" 2>&1 | head -n 6 >&2 || true
done
if ((failed)); then
    echo "$summary" >&2
    say "FAIL: stub evaluation"
    exit 1
fi
say "${summary//\"/}"

# Each must fail, with its own message (literal text) and, where given, without another.
expect_failure() {
    local name=$1 want=$2 unwanted=${3:-} out
    if out=$(nix-instantiate --eval --strict "$stub" -A "failures.$name" 2>&1); then
        say "FAIL: failures.$name evaluated, but must fail with: $want"
        return 1
    fi
    if ! grep -qF -- "$want" <<<"$out"; then
        say "FAIL: failures.$name failed without: $want"
        echo "$out" >&2
        return 1
    fi
    if [[ -n $unwanted ]] && grep -qF -- "$unwanted" <<<"$out"; then
        say "FAIL: failures.$name shows: $unwanted"
        echo "$out" >&2
        return 1
    fi
    say "fails as it must: $name: $want"
}
expect_failure invalidName \
    '- services.modelgate.vllm.models."bad/name": the attribute name becomes a unit name' \
    'is not of type' || failed=1
expect_failure badAfter \
    "A definition for option \`systemd.services.other.after" || failed=1
expect_failure backendConflict \
    "The option \`virtualisation.oci-containers.backend' has conflicting definition values" || failed=1
expect_failure dockerNewer 'pull = "newer" needs the Podman backend' || failed=1
((failed == 0)) || { say "FAIL: a configuration that must fail did not fail as it must"; exit 1; }

say "PASS: ${#files[@]} files parse; the module holds on the stub module system (a stand-in for nixpkgs: see nix/tests/eval-stub.nix)"
