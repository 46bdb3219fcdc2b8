#!/usr/bin/env python3
"""Steady load for bench/scaleout.sh (stdlib only).

Plain chat completions and long SSE streams through one address, each on a fresh TCP
connection (`Connection: close`: with HAProxy in TCP mode every request then picks a backend
anew, which is what a rollout has to survive). Every request is checked and every failure is
recorded with its reason: an exception (refused, reset, timeout, truncated chunked body), a
status other than 200, a body that does not name the model, or a stream without all its tokens
and `data: [DONE]`. Each request carries `X-Request-Id` (p-N plain, s-N stream), which
modelgate keeps and logs, so the access logs can be joined with the client's view.

usage: scaleout_load.py HOST:PORT SECONDS OUT.json [--plain-threads N] [--plain-rps R]
       [--stream-threads N] [--stream-events N] [--stream-interval-ms MS]
"""
import argparse
import http.client
import itertools
import json
import sys
import threading
import time

MODEL = "mock"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("seconds", type=float)
    ap.add_argument("out")
    ap.add_argument("--plain-threads", type=int, default=6)
    ap.add_argument("--plain-rps", type=float, default=300.0)
    ap.add_argument("--stream-threads", type=int, default=15)
    ap.add_argument("--stream-events", type=int, default=40)
    ap.add_argument("--stream-interval-ms", type=int, default=100)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    port = int(port)
    stop_at = time.time() + a.seconds
    ids = itertools.count()
    lock = threading.Lock()
    results = []  # (id, kind, start, end, ok, reason)

    def one(kind):
        rid = f"{kind[0]}-{next(ids)}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Content-Type": "application/json", "Connection": "close", "X-Request-Id": rid}
        if kind == "stream":
            body["stream"] = True
            headers["X-Mock-Sse-Events"] = str(a.stream_events)
            headers["X-Mock-Sse-Interval-Ms"] = str(a.stream_interval_ms)
        t0 = time.time()
        ok, reason = False, ""
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                reason = f"status {resp.status}: {data[:200]!r}"
            elif kind == "stream":
                text = data.decode()
                toks = sum(1 for i in range(a.stream_events) if f"tok{i} " in text)
                if toks != a.stream_events or not text.rstrip().endswith("data: [DONE]"):
                    reason = f"stream incomplete: {toks}/{a.stream_events} tokens"
                else:
                    ok = True
            elif f'"model":"{MODEL}"'.encode() not in data:
                reason = f"unexpected body {data[:200]!r}"
            else:
                ok = True
        except Exception as e:  # noqa: BLE001 - every failure counts
            reason = f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        with lock:
            results.append((rid, kind, t0, time.time(), ok, reason))

    def plain_loop(n):
        gap = n / a.plain_rps
        nxt = time.time()
        while time.time() < stop_at:
            one("plain")
            nxt += gap
            d = nxt - time.time()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.time()

    def stream_loop(i):
        # Stagger the streams so some are always mid-flight.
        time.sleep(i * a.stream_events * a.stream_interval_ms / 1000.0 / max(a.stream_threads, 1))
        while time.time() < stop_at:
            one("stream")

    threads = [threading.Thread(target=plain_loop, args=(a.plain_threads,)) for _ in range(a.plain_threads)]
    threads += [threading.Thread(target=stream_loop, args=(i,)) for i in range(a.stream_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if not r[4]]
    summary = {
        "requests": len(results),
        "plain": sum(1 for r in results if r[1] == "plain"),
        "streams": sum(1 for r in results if r[1] == "stream"),
        "failed": len(failed),
        "failures": [{"id": r[0], "kind": r[1], "start": r[2], "end": r[3], "reason": r[5]} for r in failed],
        "ok_ids": [r[0] for r in results if r[4]],
    }
    with open(a.out, "w") as f:
        json.dump(summary, f)
    print(f"load: {summary['requests']} requests ({summary['plain']} plain, {summary['streams']} streams), "
          f"{summary['failed']} failed", file=sys.stderr)


if __name__ == "__main__":
    main()
