#!/usr/bin/env python3
"""RSS per idle connection of a running server (docs/benchmarks.md, "TLS on both sides").

    python3 benches/tls/idle.py PID PORT N plain|tls [CAFILE]

Opens N connections to 127.0.0.1:PORT (over TLS, verified against CAFILE, for `tls`; the
handshake done), keeps them idle, and prints the server's RSS (VmRSS of PID) before and 2 s
after, and the difference per connection. 200 connects in flight at a time; the connections
close when it exits.
"""
import asyncio
import re
import resource
import ssl
import sys


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pid, port, n, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ctx = ssl.create_default_context(cafile=sys.argv[5]) if mode == "tls" else None

    def rss():
        return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read()).group(1))

    async def run():
        sem, conns = asyncio.Semaphore(200), []

        async def one():
            async with sem:
                _, w = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None)
                conns.append(w)

        before = rss()
        await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.sleep(2)
        after = rss()
        print(f"before {before} KiB, after {after} KiB, per connection "
              f"{(after - before) / n:.2f} KiB")

    asyncio.run(run())


main()
