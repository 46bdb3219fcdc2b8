#!/usr/bin/env python3
"""RSS of a running modelgate under two memory loads (BENCHMARKS.md, "Memory").

  bench/memory.py burst  PID ADDR [--clients 50] [--mb 20] [--rounds 1]
  bench/memory.py inflight PID ADDR [--clients 10000] [--rounds 3]

burst: CLIENTS concurrent POSTs of MB MiB each ("model" last, so the whole body is read and
scanned before routing). inflight: CLIENTS connections each send a small chat request to a
model whose upstream answers slowly (the mock's --latency-ms 4000), so all are in flight at
once. (10k in flight needs about 20k descriptors in modelgate, two per request: with a hard
limit of 20,000 per process, this machine measures up to 9,000.)
RSS (VmRSS of PID) is sampled every 50 ms during each round and for --after seconds after it;
printed: idle before, peak during, and RSS 1, 2, 5, 10 and 15 s after the round ended.
"""
import argparse, socket, sys, threading, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def request(addr, body, out, i, hold=None):
    host, port = addr.rsplit(":", 1)
    try:
        s = socket.create_connection((host, int(port)), timeout=120)
        if hold is not None:
            hold.wait()
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        s.sendall(head + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        out[i] = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "none"
        s.close()
    except Exception as e:  # noqa: BLE001 - a bench tool reports, it does not raise
        out[i] = type(e).__name__


def big_body(model, mib):
    filler = b"A" * (mib * 1024 * 1024)
    return (b'{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,'
            + filler + b'"}}]}],"model":"' + model.encode() + b'"}')


def small_body(model):
    return b'{"messages":[{"role":"user","content":"hi"}],"model":"' + model.encode() + b'"}'


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["burst", "inflight"])
    p.add_argument("pid", type=int)
    p.add_argument("addr")
    p.add_argument("--clients", type=int)
    p.add_argument("--mb", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--model", default="chat")
    p.add_argument("--after", type=float, default=15.0)
    a = p.parse_args()
    clients = a.clients or (50 if a.mode == "burst" else 10000)
    body = big_body(a.model, a.mb) if a.mode == "burst" else small_body(a.model)
    print(f"idle before: {rss_kib(a.pid) / 1024:.1f} MiB")
    for r in range(a.rounds):
        out = [None] * clients
        # Each client connects right before it sends: a connection left silent for longer
        # than timeouts.header (10 s) while 10k threads start would be closed, correctly.
        hold = None
        threads = [threading.Thread(target=request, args=(a.addr, body, out, i, hold), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        peak = 0
        while any(t.is_alive() for t in threads):
            peak = max(peak, rss_kib(a.pid))
            time.sleep(0.05)
        end = time.monotonic()
        codes = {}
        for c in out:
            codes[c] = codes.get(c, 0) + 1
        marks, after = [1, 2, 5, 10, 15], {}
        while time.monotonic() - end < a.after:
            t = time.monotonic() - end
            for m in marks:
                if m not in after and t >= m:
                    after[m] = rss_kib(a.pid)
            time.sleep(0.05)
        tail = " ".join(f"{m}s={after[m] / 1024:.1f}" for m in marks if m in after)
        print(f"round {r + 1}: statuses {codes}; peak {peak / 1024:.1f} MiB; after: {tail} MiB")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
