#!/usr/bin/env python3
"""RSS of a running gateway through a connection storm (docs/benchmarks.md, "Memory given back").

    python3 benches/memory/release.py PID PORT N [PATH] [PID...]

Opens N connections to 127.0.0.1:PORT, each makes one `GET PATH` (default /health; a
proxied path such as /api/small measures a proxied connection) and stays open; then
all close. Prints the gateway's RSS (VmRSS of PID, KiB) at the start, with the N open, and
1, 5, 15 and 33 s after they closed. RSS is summed over every PID given (nginx: its workers).
"""
import asyncio
import re
import resource
import sys


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/health"
    pids = [pid] + [int(p) for p in sys.argv[5:]]

    def rss():
        return sum(
            int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p}/status").read()).group(1))
            for p in pids
        )

    async def run():
        sem, conns = asyncio.Semaphore(500), []

        async def one():
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await r.readexactly(int(m.group(1)) if m else 0)
                conns.append(w)

        print("start", rss())
        await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.sleep(1)
        print("with", n, rss())
        for w in conns:
            w.close()
        waited = 0
        for t in (1, 5, 15, 33):
            await asyncio.sleep(t - waited)
            waited = t
            print(f"+{t}s", rss())

    asyncio.run(run())


main()
