#!/usr/bin/env python3
"""RSS of a running gateway through a connection storm (docs/benchmarks.md, "Memory given back").

    python3 benches/memory/release.py PID PORT N

Opens N connections to 127.0.0.1:PORT, each makes one `GET /health` and stays open; then
all close. Prints the gateway's RSS (VmRSS of PID, KiB) at the start, with the N open, and
1, 5, 15 and 33 s after they closed.
"""
import asyncio
import re
import resource
import sys


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def rss():
        return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))

    async def run():
        sem, conns = asyncio.Semaphore(500), []

        async def one():
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
                await w.drain()
                await r.readuntil(b'{"status":"ok"}')
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
