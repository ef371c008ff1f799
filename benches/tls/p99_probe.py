#!/usr/bin/env python3
"""p99 at 1,000 TLS connections against run duration (docs/benchmarks.md, "TLS on both sides").

    python3 benches/tls/p99_probe.py 4,30       # one wrk run per duration (s), each server

run.py's setup (same certificates, CPUs and HTTPS provider), small responses at 1,000
connections; prints run.py's row for each server and duration. Short runs measure wrk's
own start-up handshakes, long ones the server.
"""
import importlib.util
import os
import resource
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tls_bench", os.path.join(HERE, "run.py"))
tb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tb)


def main():
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = tempfile.mkdtemp(prefix="coregate-p99-")
    tb.make_certs(d)
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(tb.NGINX_CONF.format(d=d, up=tb.UP_PORT, port=tb.NG_PORT))
    with open(f"{d}/coregate.toml", "w") as f:
        f.write(tb.COREGATE_CONF.format(d=d, up=tb.UP_PORT, port=tb.CG_PORT,
                                        admin=tb.CG_ADMIN, cpu=tb.SERVER_CPU))
    up = tb.Proc([tb.BIN, "mock-provider", "--listen", f"127.0.0.1:{tb.UP_PORT}", "--cores",
                  tb.CLIENT_CPU, "--tls-cert", f"{d}/srv.pem", "--tls-key", f"{d}/srv.key"],
                 f"{d}/mock.log", tb.CLIENT_CPU)
    servers = {
        "coregate": tb.Proc([tb.BIN, "serve", "--config", f"{d}/coregate.toml"],
                            f"{d}/coregate.log", tb.SERVER_CPU),
        "nginx": tb.Proc(["nginx", "-c", f"{d}/nginx.conf", "-g", "daemon off;"],
                         f"{d}/nginx.log", tb.SERVER_CPU),
    }
    ports = {"coregate": tb.CG_PORT, "nginx": tb.NG_PORT}
    try:
        tb.wait_tls(tb.UP_PORT, f"{d}/ca.pem")
        for port in ports.values():
            tb.wait_tls(port, f"{d}/ca.pem")
        for duration in (int(x) for x in sys.argv[1].split(",")):
            for name, port in ports.items():
                row = tb.measure(servers[name], port, "/api/small", 1000, duration)
                print(name, duration, row, flush=True)
    finally:
        for s in servers.values():
            s.stop()
        up.stop()


main()
