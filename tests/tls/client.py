"""A real TLS client for tests/tls.rs (Python's ssl module, and the websockets package).

  get HOST PORT CAFILE SNI PATH   one GET; prints the status line, then the body
  cert HOST PORT CAFILE SNI       prints the common name of the certificate served for SNI
  resume HOST PORT CAFILE SNI     two connections, the second offering the first's session;
                                  prints "reused True|False"
  alpn HOST PORT CAFILE SNI PROTO offers only PROTO; prints "selected X" or "refused ERROR"
  version HOST PORT CAFILE SNI V  allows only TLS version V (1.2 or 1.3); prints the version
                                  negotiated and the status of a GET /health
  ws URL CAFILE                   WebSocket echo of one message; prints what came back
"""
import asyncio
import socket
import ssl
import sys


def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


def connect(host, port, ctx, sni, session=None):
    raw = socket.create_connection((host, int(port)), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=sni, session=session)


def get(s, sni, path):
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, sni)).encode())
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), body


def main():
    mode = sys.argv[1]
    if mode == "ws":
        import websockets

        async def echo(url, cafile):
            ctx = context(cafile) if url.startswith("wss") else None
            async with websockets.connect(url, ssl=ctx, open_timeout=10) as ws:
                await ws.send("hello over tls")
                print(await asyncio.wait_for(ws.recv(), 10))

        asyncio.run(echo(sys.argv[2], sys.argv[3]))
        return
    host, port, cafile, sni = sys.argv[2:6]
    ctx = context(cafile)
    if mode == "get":
        status, body = get(connect(host, port, ctx, sni), sni, sys.argv[6])
        print(status)
        print(body.decode(errors="replace"))
    elif mode == "cert":
        s = connect(host, port, ctx, sni)
        subject = dict(x[0] for x in s.getpeercert()["subject"])
        print(subject["commonName"])
    elif mode == "resume":
        s = connect(host, port, ctx, sni)
        get(s, sni, "/health")  # reading lets the TLS 1.3 session ticket arrive
        session = s.session
        s.close()
        s2 = connect(host, port, ctx, sni, session=session)
        print("reused", s2.session_reused)
        s2.close()
    elif mode == "version":
        v = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[sys.argv[6]]
        ctx.minimum_version = ctx.maximum_version = v
        s = connect(host, port, ctx, sni)
        version = s.version()
        status, _ = get(s, sni, "/health")
        print(version, status)
    elif mode == "alpn":
        ctx.set_alpn_protocols([sys.argv[6]])
        try:
            s = connect(host, port, ctx, sni)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(1)
            print("selected", s.selected_alpn_protocol())
        except (ssl.SSLError, OSError) as e:
            print("refused", e)


main()
