#!/usr/bin/env bash
# Offline checks of deploy/kubernetes/:
#   1. every manifest validates (strict: unknown fields are errors) against the Kubernetes
#      1.30 OpenAPI schemas that kubernetes-validate ships inside its wheel (no network, no
#      cluster); 1.30 is the oldest version the manifests support (preStop `sleep`);
#   2. kustomization.yaml lists exactly the manifests in the directory but
#      secret.example.yaml, and no Secret at all (`kubectl apply -k` must never overwrite a
#      real Secret with the example's placeholders);
#   3. the ConfigMap's config.json passes `modelgate --check` (reads no secret).
# Needs python3 with venv and pip (for the one-time `pip install` into target/k8s-venv).
# Runtime: ~20 s the first time (venv + pip), ~3 s after, plus a debug build if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=${K8S_VERSION:-1.30.0}
# Pinned: the package version decides which schema sets are bundled.
KV_PIN=${KV_PIN:-kubernetes-validate==1.37.0}
DIR=deploy/kubernetes
VENV=target/k8s-venv
fail=0

if [ ! -x "$VENV/bin/kubernetes-validate" ] || ! "$VENV/bin/pip" show -q "${KV_PIN%%==*}" >/dev/null 2>&1 \
    || [ "$("$VENV/bin/pip" show "${KV_PIN%%==*}" | sed -n 's/^Version: //p')" != "${KV_PIN##*==}" ]; then
    echo "k8s-validate: installing $KV_PIN into $VENV"
    mkdir -p target
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$KV_PIN"
fi

manifests=()
for f in "$DIR"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] && continue
    manifests+=("$f")
done

echo "k8s-validate: ${#manifests[@]} manifests against Kubernetes $K8S_VERSION (strict)"
for f in "${manifests[@]}"; do
    if "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$K8S_VERSION" "$f"; then
        echo "PASS schema $f"
    else
        echo "FAIL schema $f"
        fail=1
    fi
done

# kustomization.yaml is not a Kubernetes object (no schema): check it lists every manifest
# and nothing else, and read the ConfigMap's config.json.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if "$VENV/bin/python" - "$DIR" "$tmp/config.json" <<'PY'
import os, sys, yaml
d, out = sys.argv[1], sys.argv[2]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
listed = set(k.get("resources", []))
example = "secret.example.yaml"
present = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
ok = True
for f in sorted(present - listed - {example}):
    print(f"FAIL kustomization.yaml does not list {f}"); ok = False
for f in sorted(listed - present):
    print(f"FAIL kustomization.yaml lists missing {f}"); ok = False
if example in listed:
    print(f"FAIL kustomization.yaml lists {example}: apply -k would overwrite the real Secret"); ok = False
for gen in ("secretGenerator",):
    for g in k.get(gen) or []:
        for src in (g.get("literals") or []) + (g.get("files") or []):
            if "REPLACE" in str(src):
                print(f"FAIL {gen} carries a placeholder: {src}"); ok = False
for f in sorted(listed & present):
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        if doc and doc.get("kind") == "Secret":
            print(f"FAIL {f} is a Secret listed in kustomization.yaml"); ok = False
found = []
for f in sorted(present):
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        if doc and doc.get("kind") == "ConfigMap" and "config.json" in doc.get("data", {}):
            found.append(doc["data"]["config.json"])
if len(found) != 1:
    print(f"FAIL expected one ConfigMap with config.json, found {len(found)}"); ok = False
else:
    open(out, "w").write(found[0])
sys.exit(0 if ok else 1)
PY
then
    echo "PASS kustomization.yaml lists every manifest, and no Secret"
else
    fail=1
fi

if [ -s "$tmp/config.json" ]; then
    # Any modelgate build will do (MODELGATE_BIN, e.g. target/static/modelgate in CI); else
    # the debug one, built when missing.
    bin=${MODELGATE_BIN:-}
    if [ -z "$bin" ]; then
        for b in target/debug/modelgate target/release/modelgate; do
            [ -x "$b" ] && { bin=$b; break; }
        done
    fi
    if [ -z "$bin" ]; then
        bin=target/debug/modelgate
        echo "k8s-validate: building $bin"
        cargo build --quiet --bin modelgate
    fi
    if out=$("$bin" --check --config "$tmp/config.json" 2>&1) && [ "$out" = "config ok" ]; then
        echo "PASS modelgate --check on the ConfigMap's config.json"
    else
        printf '%s\n' "$out"
        echo "FAIL modelgate --check on the ConfigMap's config.json"
        fail=1
    fi
fi

if [ "$fail" = 0 ]; then echo "k8s-validate: all checks passed"; else echo "k8s-validate: FAILED"; fi
exit "$fail"
