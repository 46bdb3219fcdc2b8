#!/usr/bin/env python3
"""SSE pieces of bench/replicas.sh (issue 9), stdlib only.

  replica_sse.py serve PORT CAPACITY       # an SSE upstream serving CAPACITY streams at once
  replica_sse.py load URL CLIENTS SECONDS  # closed-loop streaming clients; prints TTFB stats

`serve`: an asyncio HTTP/1.1 server (keep-alive) answering every POST with a stream of
EVENTS `data:` events INTERVAL_MS apart after PREFILL_MS, like an inference server. At most
CAPACITY requests are served at once; the others wait their turn (as on a GPU with a fixed
batch size), so a replica with a small CAPACITY gets slow when it gets more than its share.

`load`: CLIENTS tasks, each sending one streaming chat request after the other for SECONDS;
time to first byte (the response head) is measured per request. Prints one line:
`requests=N errors=E ttfb_p50_ms=.. ttfb_p90_ms=.. ttfb_p99_ms=.. ttfb_max_ms=..`.
"""

import asyncio
import sys
import time

EVENTS = 16
INTERVAL_MS = 10
PREFILL_MS = 20


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)


async def serve_conn(reader, writer, slots):
    try:
        while True:
            await read_request(reader)
            async with slots:
                await asyncio.sleep(PREFILL_MS / 1000)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for i in range(EVENTS):
                    event = b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                    await asyncio.sleep(INTERVAL_MS / 1000)
                done = b"data: [DONE]\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(port, capacity):
    slots = asyncio.Semaphore(capacity)
    server = await asyncio.start_server(
        lambda r, w: serve_conn(r, w, slots), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


async def one_client(host, port, deadline, ttfbs, errors):
    body = b'{"messages":[{"role":"user","content":"hi"}],"stream":true,"model":"m"}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    reader = writer = None
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            start = time.monotonic()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            ttfbs.append((time.monotonic() - start) * 1000)
            if not head.startswith(b"HTTP/1.1 200"):
                errors.append(head[:40])
            # Read the chunked body to its end.
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.strip(), 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            errors.append(str(e)[:40])
            if writer is not None:
                writer.close()
            reader = writer = None


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * len(values) + 0.5)) - 1))
    return values[k]


async def load(url, clients, seconds):
    hostport = url.split("://", 1)[-1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    deadline = time.monotonic() + seconds
    ttfbs, errors = [], []
    await asyncio.gather(
        *(one_client(host, int(port), deadline, ttfbs, errors) for _ in range(clients))
    )
    print(
        "requests=%d errors=%d ttfb_p50_ms=%.1f ttfb_p90_ms=%.1f ttfb_p99_ms=%.1f ttfb_max_ms=%.1f"
        % (
            len(ttfbs),
            len(errors),
            percentile(ttfbs, 50),
            percentile(ttfbs, 90),
            percentile(ttfbs, 99),
            max(ttfbs) if ttfbs else float("nan"),
        )
    )


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    elif len(sys.argv) == 5 and sys.argv[1] == "load":
        asyncio.run(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
