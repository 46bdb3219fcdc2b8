#!/usr/bin/env bash
# Checks deploy/prometheus and deploy/grafana (issue 20) with the real promtool:
#   1. `promtool check rules` on the alert rules;
#   2. `promtool test rules` on their unit tests (each alert fires on the series that should
#      trigger it and stays quiet on a healthy neighbour);
#   3. every PromQL query of the Grafana dashboard parses: the queries are written into a
#      throwaway rules file (Grafana's variables replaced by plain values) and checked the same way.
# That every metric name they use exists in a live scrape is tests/monitoring.rs's job.
#
# Installs Debian's `prometheus` package (pinned) when promtool is missing and we are root;
# otherwise says what to install and fails.
set -euo pipefail

cd "$(dirname "$0")/.."
PROMETHEUS_DEB_VERSION=${PROMETHEUS_DEB_VERSION:-2.42.0+ds-5+deb12u1}

say() { printf '[monitoring-check] %s\n' "$*" >&2; }
die() { printf '[monitoring-check] ERROR: %s\n' "$*" >&2; exit 1; }

if ! command -v promtool >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "promtool is missing: apt-get install prometheus (as root)"
    command -v apt-get >/dev/null 2>&1 || die "promtool is missing and apt-get is not available"
    say "installing prometheus=$PROMETHEUS_DEB_VERSION (for promtool) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null \
        || die "apt-get install prometheus=$PROMETHEUS_DEB_VERSION failed"
fi
promtool --version 2>&1 | head -1

say "promtool check rules deploy/prometheus/modelgate-alerts.yaml"
promtool check rules deploy/prometheus/modelgate-alerts.yaml

say "promtool test rules deploy/prometheus/modelgate-alerts.test.yaml"
(cd deploy/prometheus && promtool test rules modelgate-alerts.test.yaml)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "every query of deploy/grafana/modelgate-dashboard.json parses (promtool check rules)"
python3 - deploy/grafana/modelgate-dashboard.json "$work/dashboard-queries.yaml" <<'PY'
import json, sys

dashboard = json.load(open(sys.argv[1]))
queries = []

def walk(panels):
    for p in panels:
        walk(p.get("panels", []))
        for t in p.get("targets", []):
            queries.append((p.get("title", "?"), t["expr"]))

walk(dashboard["panels"])
if not queries:
    sys.exit("the dashboard has no queries")
# Grafana's variables, replaced by what a selection of "All" sends.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*", "$model": ".*"}
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, expr) in enumerate(queries):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            sys.exit(f"panel {title!r}: unknown variable in {expr}")
        out.write(f"      - record: dashboard:query{i}\n        expr: {json.dumps(expr)}\n")
print(f"{len(queries)} queries", file=sys.stderr)
PY
promtool check rules "$work/dashboard-queries.yaml"
say "ok"
