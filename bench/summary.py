#!/usr/bin/env python3
"""Turns bench/run.sh's raw rows (bench/out/*.tsv) into bench/out/summary.md (printed too) and
the chart data bench/out/chart-cpu.tsv / chart-lat.tsv.

Medians over rounds. "Added" figures are paired: proxy minus direct *in the same round*
(rounds are interleaved, so a paired difference cancels most of the drift of a shared machine),
then the median of those differences.

usage: summary.py OUT WORKERS DURATION REPEATS IDLE_REPEATS SSE_STREAMS SSE_EVENTS SSE_MS BIG_MB [quick]
"""
import csv
import os
import statistics
import sys

out = sys.argv[1]
workers, duration, repeats, idle_repeats, sse_streams, sse_events, sse_ms, big_mb = sys.argv[2:10]
quick = len(sys.argv) > 10 and sys.argv[10] == "quick"

LABEL = {"direct": "direct (mock)", "nginx": "nginx", "modelgate": "modelgate",
         "mg_log": "modelgate, accessLog on", "mg_tls": "modelgate, TLS upstream"}


def rows(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    return list(csv.DictReader(open(path), delimiter="\t"))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def col(rs, target, key):
    return [num(r[key]) for r in rs if r["target"] == target]


def paired(rs, target, base, key):
    """median over rounds of (target - base) in the same round."""
    by = {}
    for r in rs:
        by.setdefault(r["repeat"], {})[r["target"]] = num(r[key])
    return med([d[target] - d[base] for d in by.values()
                if d.get(target) is not None and d.get(base) is not None])


def paired_ratio(rs, target, base, key):
    by = {}
    for r in rs:
        by.setdefault(r["repeat"], {})[r["target"]] = num(r[key])
    return med([d[target] / d[base] for d in by.values() if d.get(target) and d.get(base)])


def f(v, d=0, suffix=""):
    return "–" if v is None else f"{v:,.{d}f}{suffix}"


def ratio(a, b):
    return None if a is None or not b else a / b


def verdict(ok):
    return "–" if ok is None else ("meets" if ok else "**misses**")


L = []
cpu_model = os.popen("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").read().strip()
load = open("/proc/loadavg").read().split()[:3]
nginx_v = os.popen("nginx -v 2>&1 | sed 's/.*version: //'").read().strip()
if quick:
    L.append("> **QUICK MODE (BENCH_QUICK=1): a smoke test with short runs on a shared machine. "
             "The numbers are noisy and not for publication.**")
    L.append("")
shape = (f"both at their defaults (nginx `worker_processes auto`, modelgate without `workers`: "
         f"{os.cpu_count()} each)" if workers == "default" else f"{workers} worker(s) for both proxies")
L.append(f"Loopback, {os.cpu_count()} CPU(s) ({cpu_model}), load average at the end "
         f"{' '.join(load)}; {shape} ({nginx_v}); wrk runs of "
         f"{duration} s; medians of {repeats} interleaved rounds (idle connections: "
         f"{idle_repeats} round(s)). \"Added\" = proxy − direct in the same round, median over rounds.")
L.append("")
targets = []  # (name, ok-or-None) for the issue-8 checklist
issue19 = []  # (name, ok-or-None) for issue 19's table
chart_cpu, chart_lat = [], []

# (1) latency at c=1 ---------------------------------------------------------------------
lat = rows("latency.tsv")
added50 = {}
if lat:
    L.append("### 1. Latency, 1 connection (~1 KB chat body, `model` after `messages`)")
    L.append("")
    L.append("| target | req/s | p50 (µs) | p99 (µs) | added p50 (µs) | added p99 (µs) | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for t in ("direct", "nginx", "modelgate"):
        if not col(lat, t, "rps"):
            continue
        a50 = None if t == "direct" else paired(lat, t, "direct", "p50_us")
        a99 = None if t == "direct" else paired(lat, t, "direct", "p99_us")
        added50[t] = a50
        errs = sum(int(num(r["non2xx"]) or 0) + int(num(r["socket_errors"]) or 0) for r in lat if r["target"] == t)
        L.append(f"| {LABEL[t]} | {f(med(col(lat, t, 'rps')))} | {f(med(col(lat, t, 'p50_us')), 1)} "
                 f"| {f(med(col(lat, t, 'p99_us')), 1)} | {f(a50, 1)} | {f(a99, 1)} | {errs} |")
    L.append("")
    m50, n50 = added50.get("modelgate"), added50.get("nginx")
    r50 = ratio(m50, n50)
    m99 = med(col(lat, "modelgate", "p99_us"))
    n99 = med(col(lat, "nginx", "p99_us"))
    L.append(f"- added p50, modelgate/nginx: **{f(r50, 2, '×')}** ({f(m50, 1)} vs {f(n50, 1)} µs; target ≤ 0.6×)")
    L.append(f"- p99, modelgate/nginx: **{f(ratio(m99, n99), 2, '×')}** ({f(m99, 1)} vs {f(n99, 1)} µs; target ≤ 1×)")
    L.append("")
    by = {}
    for r in lat:
        by.setdefault(r["repeat"], {})[r["target"]] = num(r["p50_us"])
    per_round = []
    for rep in sorted(by, key=int):
        d = by[rep]
        if None not in (d.get("direct"), d.get("nginx"), d.get("modelgate")):
            per_round.append((d["modelgate"] - d["direct"], d["nginx"] - d["direct"]))
    if per_round:
        L.append("- added p50 per round, modelgate / nginx (µs): "
                 + ", ".join(f"{m:+.0f} / {n:+.0f}" for m, n in per_round))
        every = all(n > 0 and m <= 0.6 * n for m, n in per_round)
        L.append(f"- modelgate ≤ 0.6× nginx's added p50 in every round: **{'yes' if every else 'no'}**")
        L.append("")
        issue19.append(("added p50 at c=1 ≤ 0.6× nginx's, every round", every))
    targets.append(("added p50 at c=1 ≤ 0.6× nginx's", None if r50 is None or n50 is None or n50 <= 0 else r50 <= 0.6))
    targets.append(("p99 at c=1 ≤ nginx's", None if m99 is None or n99 is None else m99 <= n99))
    for t in ("nginx", "modelgate"):
        if added50.get(t) is not None:
            chart_lat.append((LABEL[t], added50[t]))

# (2) throughput at c=64, (7) TLS upstream, (8) access log -------------------------------
thr = rows("throughput.tsv")
if thr:
    L.append("### 2. Throughput and CPU, 64 connections")
    L.append("")
    L.append("| target | req/s | p50 (µs) | p99 (µs) | CPU µs/request | errors |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for t in ("direct", "nginx", "modelgate"):
        if not col(thr, t, "rps"):
            continue
        errs = sum(int(num(r["non2xx"]) or 0) + int(num(r["socket_errors"]) or 0) for r in thr if r["target"] == t)
        L.append(f"| {LABEL[t]} | {f(med(col(thr, t, 'rps')))} | {f(med(col(thr, t, 'p50_us')), 1)} "
                 f"| {f(med(col(thr, t, 'p99_us')), 1)} | {f(med(col(thr, t, 'cpu_us_per_req')), 2)} | {errs} |")
    L.append("")
    mc, nc = med(col(thr, "modelgate", "cpu_us_per_req")), med(col(thr, "nginx", "cpu_us_per_req"))
    mr, nr = med(col(thr, "modelgate", "rps")), med(col(thr, "nginx", "rps"))
    pr = paired_ratio(thr, "modelgate", "nginx", "cpu_us_per_req")
    L.append(f"- CPU per request, modelgate/nginx: **{f(ratio(mc, nc), 2, '×')}** ({f(mc, 2)} vs {f(nc, 2)} µs; "
             f"per-round median {f(pr, 2, '×')}; target ≤ 0.8×)")
    L.append(f"- req/s, modelgate/nginx: **{f(ratio(mr, nr), 2, '×')}** (target ≥ 1×)")
    L.append("")
    targets.append(("CPU per request ≤ 0.8× nginx's", None if ratio(mc, nc) is None else ratio(mc, nc) <= 0.8))
    issue19.append((f"CPU per request at c=64 ≤ 0.8× nginx's ({f(ratio(mc, nc), 2, '×')})",
                    None if ratio(mc, nc) is None else ratio(mc, nc) <= 0.8))
    targets.append(("req/s at c=64 ≥ nginx's", None if ratio(mr, nr) is None else ratio(mr, nr) >= 1))
    for t in ("nginx", "modelgate", "mg_log", "mg_tls"):
        v = med(col(thr, t, "cpu_us_per_req"))
        if v is not None:
            chart_cpu.append((LABEL[t], v))
    for t, title, what in (("mg_tls", "7. HTTPS upstream (modelgate → nginx TLS terminator → mock), 64 connections",
                            "TLS/plain"),
                           ("mg_log", "8. Access log on vs off (metrics always on), 64 connections",
                            "on/off")):
        if not col(thr, t, "rps"):
            continue
        L.append(f"### {title}")
        L.append("")
        L.append("| modelgate | req/s | p50 (µs) | CPU µs/request |")
        L.append("|---|---:|---:|---:|")
        for x in ("modelgate", t):
            L.append(f"| {LABEL[x]} | {f(med(col(thr, x, 'rps')))} | {f(med(col(thr, x, 'p50_us')), 1)} "
                     f"| {f(med(col(thr, x, 'cpu_us_per_req')), 2)} |")
        L.append("")
        a, b = med(col(thr, t, "cpu_us_per_req")), mc
        L.append(f"- CPU per request {what}: **{f(ratio(a, b), 2, '×')}** (+{f(None if a is None or b is None else a - b, 2)} µs; "
                 f"per-round median {f(paired_ratio(thr, t, 'modelgate', 'cpu_us_per_req'), 2, '×')})")
        if t == "mg_tls":
            L.append("- req/s here is bounded by the TLS nginx in front of the mock, which shares the cores; "
                     "CPU per request counts modelgate's process only.")
        L.append("")

# (3) SSE, one section per stream count ------------------------------------------------------
sse_files = sorted((int(n[4:-4]), n) for n in os.listdir(out) if n.startswith("sse-") and n.endswith(".tsv"))
for sse_n, sse_file in sse_files:
    sse = rows(sse_file)
    if not sse:
        continue
    L.append(f"### 3. SSE: {sse_n} concurrent streams × {sse_events} events every {sse_ms} ms (+ `[DONE]`)")
    L.append("")
    L.append("| target | streams ok | events lost | TTFE p50 (µs) | TTFE p99 (µs) | added TTFE p50 (µs) "
             "| max gap, worst stream (ms) | added max gap (ms) | per-stream max gap p50 (ms) | batched streams | CPU ms/round |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    sse_added = {}
    for t in ("direct", "nginx", "modelgate"):
        if not col(sse, t, "streams"):
            continue
        ok = sum(int(num(r["ok"]) or 0) for r in sse if r["target"] == t)
        total = sum(int(num(r["streams"]) or 0) for r in sse if r["target"] == t)
        lost = sum(int(num(r["events_lost"]) or 0) for r in sse if r["target"] == t)
        at = None if t == "direct" else paired(sse, t, "direct", "ttfe_p50_us")
        ag = None if t == "direct" else paired(sse, t, "direct", "gap_max_us")
        sse_added[t] = (at, ag, lost, max(col(sse, t, "batched_streams")))
        gm = med(col(sse, t, "gap_max_us"))
        g50 = med(col(sse, t, "gap_p50_us"))
        L.append(f"| {LABEL[t]} | {ok}/{total} | {lost} | {f(med(col(sse, t, 'ttfe_p50_us')))} "
                 f"| {f(med(col(sse, t, 'ttfe_p99_us')))} | {f(at)} | {f(None if gm is None else gm / 1000, 1)} "
                 f"| {f(None if ag is None else ag / 1000, 1)} | {f(None if g50 is None else g50 / 1000, 1)} "
                 f"| {f(med(col(sse, t, 'batched_streams')))} (max {f(max(col(sse, t, 'batched_streams')))}) "
                 f"| {f(med(col(sse, t, 'cpu_ms')))} |")
    L.append("")
    if "modelgate" in sse_added and "nginx" in sse_added:
        ma, na = sse_added["modelgate"][0], sse_added["nginx"][0]
        r = ratio(ma, na)
        by = {}
        for row in sse:
            by.setdefault(row["repeat"], {})[row["target"]] = num(row["ttfe_p50_us"])
        rounds = [(by[k].get("modelgate"), by[k].get("nginx")) for k in sorted(by, key=int)]
        L.append("- TTFE p50 per round, modelgate / nginx (µs): "
                 + ", ".join(f"{f(m)} / {f(n)}" for m, n in rounds))
        every = all(m is not None and n is not None and m <= n for m, n in rounds)
        L.append(f"- modelgate's TTFE p50 ≤ nginx's in every round: **{'yes' if every else 'no'}**")
        issue19.append((f"SSE TTFE p50 at {sse_n} streams ≤ nginx's, every round", every))
        L.append(f"- added TTFE p50, modelgate/nginx: **{f(r, 2, '×')}** ({f(ma)} vs {f(na)} µs; target ≤ 0.5×)")
        mg_gap = sse_added["modelgate"][1]
        L.append(f"- modelgate added max inter-event gap: {f(None if mg_gap is None else mg_gap / 1000, 2)} ms (target ≤ 1 ms); "
                 f"events lost {sse_added['modelgate'][2]}; streams batched (worst round) "
                 f"{f(sse_added['modelgate'][3])} (direct: {f(sse_added.get('direct', (0, 0, 0, None))[3])})")
        L.append("- Through a proxy, TTFE includes opening upstream connections beyond the proxy's idle pool "
                 "(nginx keeps 64) — the mock accepts them with a new thread each; direct clients connect "
                 "before the clock starts.")
        L.append("- A stream is *batched* when one client `read` returned two or more complete events. The "
                 "direct row is the floor set by the client and the mock sharing the cores "
                 "(a late reader finds two events queued); TTFE is measured from writing the request.")
        L.append("")
        if sse_n == sse_files[0][0]:
            targets.append(("SSE added TTFE ≤ 0.5× nginx's", None if r is None or na is None or na <= 0 else r <= 0.5))
            targets.append(("SSE added max gap ≤ 1 ms", None if mg_gap is None else mg_gap <= 1000))
            targets.append(("SSE 0 events lost", sse_added["modelgate"][2] == 0))
            targets.append(("SSE no stream batched", None if sse_added["modelgate"][3] is None else sse_added["modelgate"][3] == 0))

# (4) idle connections, (6) RSS ------------------------------------------------------------
idle = rows("idle.tsv")
rss = rows("rss.tsv")
if idle or rss:
    L.append("### 4 + 6. Memory (RSS of the process tree: nginx master + workers, modelgate)")
    L.append("")
    L.append("| target | idle after startup (MiB) | peak during c=64 (MiB) | peak over the whole run (MiB) "
             "| idle conns held | RSS before → with them (MiB) | added by the idle conns (MiB) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    mem = {}
    for t in ("nginx", "modelgate"):
        def ph(p):
            v = [num(r["rss_kib"]) for r in rss if r["target"] == t and r["phase"] == p]
            return None if not v or v[0] is None else v[0] / 1024
        ir = [r for r in idle if r["target"] == t]
        held = med([num(r["held"]) for r in ir])
        b = med([num(r["rss_before_kib"]) for r in ir])
        a = med([num(r["rss_after_kib"]) for r in ir])
        d = med([num(r["delta_kib"]) for r in ir])
        mem[t] = (ph("idle"), None if d is None else d / 1024)
        L.append(f"| {LABEL[t]} | {f(ph('idle'), 1)} | {f(ph('peak_c64'), 1)} | {f(ph('peak_all'), 1)} "
                 f"| {f(held)} | {f(None if b is None else b / 1024, 1)} → {f(None if a is None else a / 1024, 1)} "
                 f"| {f(None if d is None else d / 1024, 1)} |")
    L.append("")
    mi, ni = mem["modelgate"][0], mem["nginx"][0]
    md, nd = mem["modelgate"][1], mem["nginx"][1]
    L.append(f"- idle RSS, modelgate/nginx: **{f(ratio(mi, ni), 2, '×')}**; added by idle connections, "
             f"modelgate/nginx: **{f(ratio(md, nd), 2, '×')}**")
    L.append("- Peaks are the kernel's VmHWM (exact high-water mark, summed over the tree's processes); "
             "the whole-run peak includes the big-body scenario (4 × the body in flight).")
    L.append(f"- nginx runs with worker_connections {os.environ.get('BENCH_NGINX_CONNS', '?')} (enough for the idle "
             "scenario) and preallocates that connection table at startup, which is part of its idle RSS. "
             "The idle-connection rounds use a fresh nginx and a fresh modelgate each.")
    L.append("")
    targets.append(("idle RSS ≤ 3 MiB", None if mi is None else mi <= 3))
    issue19.append((f"idle RSS ≤ 3 MiB ({f(mi, 1)} MiB after start and one request)", None if mi is None else mi <= 3))
    if idle:
        targets.append(("idle keep-alive conns add ≤ 40 MiB", None if md is None else md <= 40))

# (5) big body -------------------------------------------------------------------------------
big = rows("bigbody.tsv")
if big:
    L.append(f"### 5. {big_mb} MiB request body (base64 image, `model` last), 4 connections")
    L.append("")
    L.append("| target | req/s | p50 (ms) | CPU µs/request | errors |")
    L.append("|---|---:|---:|---:|---:|")
    for t in ("direct", "nginx", "modelgate"):
        if not col(big, t, "rps"):
            continue
        p = med(col(big, t, "p50_us"))
        errs = sum(int(num(r["non2xx"]) or 0) + int(num(r["socket_errors"]) or 0) for r in big if r["target"] == t)
        L.append(f"| {LABEL[t]} | {f(med(col(big, t, 'rps')), 1)} | {f(None if p is None else p / 1000, 2)} "
                 f"| {f(med(col(big, t, 'cpu_us_per_req')), 0)} | {errs} |")
    L.append("")
    mc, nc = med(col(big, "modelgate", "cpu_us_per_req")), med(col(big, "nginx", "cpu_us_per_req"))
    L.append(f"- CPU per request, modelgate/nginx: **{f(ratio(mc, nc), 2, '×')}**; req/s modelgate/nginx: "
             f"**{f(ratio(med(col(big, 'modelgate', 'rps')), med(col(big, 'nginx', 'rps'))), 2, '×')}** "
             "(nginx buffers the body in memory, client_body_buffer_size 16m, and does not parse it)")
    L.append("")

if issue19:
    L.append("### Issue 19 goals (this run)")
    L.append("")
    L.append("| goal | result |")
    L.append("|---|---|")
    for name, ok in issue19:
        L.append(f"| {name} | {verdict(ok)} |")
    L.append("")

if targets:
    L.append("### Issue 8 targets (this run)")
    L.append("")
    L.append("| target | result |")
    L.append("|---|---|")
    for name, ok in targets:
        L.append(f"| {name} | {verdict(ok)} |")
    L.append("")

text = "\n".join(L) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)


def write_chart(name, data):
    with open(os.path.join(out, name), "w") as fh:
        for label, v in data:
            fh.write(f"\"{label}\"\t{v:.3f}\n")


write_chart("chart-cpu.tsv", chart_cpu)
write_chart("chart-lat.tsv", chart_lat)
with open(os.path.join(out, "chart.tsv"), "w") as fh:  # run.sh draws the chart when this is non-empty
    if chart_cpu or chart_lat:
        fh.write("# see chart-cpu.tsv and chart-lat.tsv\n")
