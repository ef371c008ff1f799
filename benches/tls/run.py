#!/usr/bin/env python3
"""TLS on both sides, coregate beside nginx (docs/benchmarks.md, "TLS").

    benches/tls/run.py [--repeat 3] [--duration 8] [--conns 100,1000] [--idle 5000]
    benches/tls/run.py --table target/tls-bench.jsonl     # medians of a results file

Layout, as the shared testbed's: the server under test (coregate, 1 shard; nginx, 1 worker)
alone on CPU 1; the provider (`coregate mock-provider --tls-cert`, HTTPS) and the load (wrk,
HTTPS) on CPU 0. Both servers terminate TLS for wrk with the same ECDSA P-256 certificate
and reach the provider over verified TLS with a keep-alive pool (nginx: `proxy_ssl` with
`keepalive 1024`, `proxy_ssl_session_reuse on`).

Measured, per server, in one alternated run (repeats interleave the servers):
  proxied  `small` (100 B) and `big` (16 KiB) at each --conns: requests/s, server CPU µs per
           request (utime+stime of its process tree / requests), p99, errors; coregate's
           provider handshakes from /stats (≈ 0 at steady state means its pool held).
  handshake  `Connection: close` to the locally answered health path: every request a new
           TLS connection. Server CPU µs per handshake and the handshakes per second one core
           could do (1e6 / that): wrk on one core cannot saturate a server core with full
           handshakes, so CPU per handshake is the fair figure.
  idle     RSS of the server's process tree with --idle TLS client connections open and
           idle (handshake done), minus before, per connection.

Needs: nginx and wrk (the shared testbed's setup.sh installs them), openssl, python3, and
target/release/coregate. Every process started is stopped by PID; every load is bounded.
"""
import argparse
import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("COREGATE_BIN", os.path.join(ROOT, "target/release/coregate"))
SERVER_CPU, CLIENT_CPU = "1", "0"
UP_PORT, CG_PORT, CG_ADMIN, NG_PORT = 19601, 19611, 19612, 19621
TICK = os.sysconf("SC_CLK_TCK")


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def make_certs(d):
    """A CA and a certificate for localhost signed by it (ECDSA P-256), made now."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
       "-days", "2", "-subj", "/CN=coregate bench CA")
    sh("openssl", "req", *ec, "-keyout", f"{d}/srv.key", "-out", f"{d}/srv.csr",
       "-subj", "/CN=localhost")
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{d}/srv.csr", "-CA", f"{d}/ca.pem", "-CAkey",
       f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/srv.pem", "-days", "2",
       "-extfile", f"{d}/ext.cnf")


NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
    access_log off;
    server_tokens off;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream provider {{
        server 127.0.0.1:{up};
        keepalive 1024;
        keepalive_requests 100000000;
        keepalive_timeout 120s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl reuseport backlog=4096;
        ssl_certificate {d}/srv.pem;
        ssl_certificate_key {d}/srv.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        location = / {{ default_type text/plain; return 200 "ok"; }}
        location / {{
            proxy_pass https://provider;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_server_name on;
            proxy_ssl_name localhost;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {d}/ca.pem;
            proxy_ssl_session_reuse on;
        }}
    }}
}}
"""

COREGATE_CONF = """
[server]
listen = ""
tls_listen = "127.0.0.1:{port}"
cores = "{cpu}"
[server.tls]
cert = "{d}/srv.pem"
key = "{d}/srv.key"
[admin]
listen = "127.0.0.1:{admin}"
[[providers]]
name = "mock"
endpoints = ["https://localhost:{up}"]
ca_file = "{d}/ca.pem"
[[routes]]
prefix = "/api/"
provider = "mock"
"""


class Proc:
    def __init__(self, args, log, cpu):
        self.p = subprocess.Popen(["taskset", "-c", cpu, *args], stdout=open(log, "w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def pids(self):
        """The process and its children (nginx's worker)."""
        out = [self.p.pid]
        try:
            kids = open(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read().split()
            out += [int(k) for k in kids]
        except OSError:
            pass
        return out

    def cpu_s(self):
        t = 0
        for pid in self.pids():
            try:
                f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                t += int(f[11]) + int(f[12])
            except OSError:
                pass
        return t / TICK

    def rss_kib(self):
        total = 0
        for pid in self.pids():
            try:
                m = re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{pid}/status").read())
                total += int(m.group(1)) if m else 0
            except OSError:
                pass
        return total

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGTERM)
            self.p.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_tls(port, cafile, timeout=15):
    ctx = ssl.create_default_context(cafile=cafile)
    end = time.time() + timeout
    while time.time() < end:
        try:
            import socket
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                with ctx.wrap_socket(s, server_hostname="localhost"):
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port}: no TLS listener")


def wrk(port, path, conns, duration, close=False):
    args = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s",
            "--latency", "--timeout", "5s"]
    if close:
        args += ["-H", "Connection: close"]
    out = subprocess.run(args + [f"https://localhost:{port}{path}"], capture_output=True,
                         text=True, timeout=duration + 60).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 1, "ms": 1e3, "s": 1e6}
    p99_us = float(p99.group(1)) * scale[p99.group(2)] if p99 else None
    errs = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errs += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errs += int(m.group(1))
    return reqs, p99_us, errs


def measure(server, port, path, conns, duration, close=False, counter=None):
    """One wrk run after a warm-up at the same concurrency; `counter` (read before and
    after the measured run, after the warm-up) adds its difference as `upstream_handshakes`."""
    wrk(port, path, conns, 1, close)  # warm-up: pools fill to this concurrency, sessions cached
    if counter:
        time.sleep(1.1)  # the stats interval: the warm-up's handshakes are in
        before = counter()
    c0 = server.cpu_s()
    t0 = time.time()
    reqs, p99, errs = wrk(port, path, conns, duration, close)
    wall = time.time() - t0
    cpu = server.cpu_s() - c0
    row = {"rps": round(reqs / duration), "cpu_us_per_req": round(cpu * 1e6 / max(reqs, 1), 1),
           "p99_us": p99, "errors": errs, "requests": reqs, "wall_s": round(wall, 1)}
    if counter:
        time.sleep(1.1)
        row["upstream_handshakes"] = counter() - before
    return row


async def hold_idle(port, cafile, n):
    """Opens n TLS connections (handshake done) and keeps them; returns the writers."""
    ctx = ssl.create_default_context(cafile=cafile)
    sem = asyncio.Semaphore(200)
    conns = []

    async def one():
        async with sem:
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                 server_hostname="localhost")
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))
    return conns


def idle_rss(server, port, cafile, n):
    async def run():
        time.sleep(0.5)
        before = server.rss_kib()
        conns = await hold_idle(port, cafile, n)
        await asyncio.sleep(2)
        after = server.rss_kib()
        for w in conns:
            w.close()
        return before, after

    before, after = asyncio.run(run())
    return {"conns": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": round((after - before) / n, 2)}


def upstream_handshakes():
    with urllib.request.urlopen(f"http://127.0.0.1:{CG_ADMIN}/stats", timeout=5) as r:
        p = json.load(r)["total"].get("providers", {}).get("mock")
        return p["tls"]["handshakes"] if p else 0


def table(path):
    """Medians over the repeats of a results file, coregate beside nginx."""
    import statistics
    rows = [json.loads(l) for l in open(path)]
    keys = sorted({(r["kind"], r["path"], r["conns"]) for r in rows})
    fields = {"proxied": ("rps", "cpu_us_per_req", "p99_us", "errors", "upstream_handshakes"),
              "handshake": ("rps", "cpu_us_per_req", "handshakes_per_core_s", "errors"),
              "idle": ("kib_per_conn", "rss_before_kib", "rss_after_kib")}
    for kind, p, c in keys:
        for server in ("coregate", "nginx"):
            sel = [r for r in rows if (r["kind"], r["path"], r["conns"], r["server"]) ==
                   (kind, p, c, server)]
            if not sel:
                continue
            med = {f: statistics.median(r[f] for r in sel) for f in fields[kind] if f in sel[0]}
            print(f"{kind:9} {p:6} {c:5} {server:8} n={len(sel)} " +
                  " ".join(f"{k}={v:g}" for k, v in med.items()))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        return table(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=int, default=8)
    # wrk's one thread makes its 1,000 client handshakes at the start of a run (~0.4 s of
    # its CPU), and reads no response meanwhile: in an 8 s run those requests are over 1 %
    # and p99 measures wrk. 30 s runs put p99 back on the server.
    ap.add_argument("--long", type=int, default=30, help="duration at 1,000+ connections")
    ap.add_argument("--conns", default="100,1000")
    ap.add_argument("--idle", type=int, default=5000)
    ap.add_argument("--out", default=os.path.join(ROOT, "target/tls-bench.jsonl"))
    a = ap.parse_args()
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle clients' fds
    d = tempfile.mkdtemp(prefix="coregate-tls-bench-")
    make_certs(d)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(NGINX_CONF.format(d=d, up=UP_PORT, port=NG_PORT))
    with open(f"{d}/coregate.toml", "w") as f:
        f.write(COREGATE_CONF.format(d=d, up=UP_PORT, port=CG_PORT, admin=CG_ADMIN,
                                     cpu=SERVER_CPU))
    up = Proc([BIN, "mock-provider", "--listen", f"127.0.0.1:{UP_PORT}", "--cores", CLIENT_CPU,
               "--tls-cert", f"{d}/srv.pem", "--tls-key", f"{d}/srv.key"], f"{d}/mock.log",
              CLIENT_CPU)
    servers = {
        "coregate": Proc([BIN, "serve", "--config", f"{d}/coregate.toml"], f"{d}/coregate.log",
                         SERVER_CPU),
        "nginx": Proc(["nginx", "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
                      f"{d}/nginx.log", SERVER_CPU),
    }
    ports = {"coregate": CG_PORT, "nginx": NG_PORT}
    out = open(a.out, "a")
    try:
        wait_tls(UP_PORT, f"{d}/ca.pem")
        for name, port in ports.items():
            wait_tls(port, f"{d}/ca.pem")
        # Memory first, on servers that have served nothing else yet: a server's RSS keeps
        # what a load once needed, and would hide what idle connections cost.
        for name, server in servers.items():
            row = {"server": name, "rep": 0, "kind": "idle", "path": "-", "conns": a.idle,
                   **idle_rss(server, ports[name], f"{d}/ca.pem", a.idle)}
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
        for rep in range(a.repeat):
            for name, server in servers.items():
                port = ports[name]
                rows = []
                for path, label in (("/api/small", "small"), ("/api/big", "big")):
                    for c in (int(x) for x in a.conns.split(",")):
                        counter = upstream_handshakes if name == "coregate" else None
                        secs = a.long if c >= 1000 else a.duration
                        r = measure(server, port, path, c, secs, counter=counter)
                        rows.append(("proxied", label, c, r))
                r = measure(server, port, "/", 50, a.duration, close=True)
                r["handshakes_per_core_s"] = round(1e6 / max(r["cpu_us_per_req"], 0.1))
                rows.append(("handshake", "health", 50, r))
                for kind, path, c, r in rows:
                    row = {"server": name, "rep": rep, "kind": kind, "path": path, "conns": c, **r}
                    print(json.dumps(row), flush=True)
                    out.write(json.dumps(row) + "\n")
    finally:
        for s in servers.values():
            s.stop()
        up.stop()
        print(f"logs and certificates: {d}", file=sys.stderr)


if __name__ == "__main__":
    main()
