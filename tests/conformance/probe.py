#!/usr/bin/env python3
"""Raw-socket HTTP/1.1 conformance / smuggling probe for a reverse proxy (stdlib only).

Run by tests/conformance.rs against two gateways; each case names the RFC 9110/9112 section
it checks. A case fails on a wrong status, a smuggled request being answered, a response
handed to the wrong request, or a broken follow-up request on a fresh connection.

Usage:
  probe.py GW_A [GW_B [FAKE_LISTEN]] [-v] [-k SUBSTR]
    GW_A         gateway whose upstream is the coregate mock provider (request-side cases)
    GW_B         gateway whose upstream is FAKE_LISTEN (response-side cases)
    FAKE_LISTEN  where this script runs its crafted fake upstream (default 127.0.0.1:9413)
    -v           print raw bytes sent/received for every case
    -k SUBSTR    only run cases whose name contains SUBSTR
    --tls-ca F   GW_A is a TLS listener (certificate for "localhost" signed by the CA in F):
                 every request-side case runs through TLS
  probe.py --fake-only [FAKE_LISTEN]   run just the fake upstream (Ctrl-C to stop)

Every socket op has a short timeout; every loop is bounded.  Exit code 0 = no FAIL.
"""
import socket, ssl, sys, time, threading, json

T = 2.0                      # default per-case read timeout
SMUG_MARK = b'"target":"/headers?SMUGGLED'   # only a /headers response for the smuggled request has this
S = b"GET /headers?SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"   # the smuggled request
VERBOSE = False
TLS = None                   # (address, SSLContext) when GW_A is a TLS listener


def hp(a):
    h, p = a.rsplit(":", 1)
    return h, int(p)


# ----------------------------------------------------------------------------- response parsing
def parse_responses(buf, methods, eof):
    """Parse as many HTTP/1.x responses as possible. methods: request methods in order
    (for HEAD). Returns (responses, leftover). A response: dict(status, code, headers,
    body, complete, framing)."""
    out = []
    i = 0
    mi = 0
    for _ in range(200):                                    # bounded
        if i >= len(buf):
            break
        end = buf.find(b"\r\n\r\n", i)
        sep = 4
        lf = buf.find(b"\n\n", i)
        if end < 0 or (0 <= lf < end):
            if lf >= 0:
                end, sep = lf, 2
        if end < 0:
            break
        head = buf[i:end].replace(b"\r\n", b"\n")
        lines = head.split(b"\n")
        status = lines[0].decode("latin1")
        parts = status.split(" ", 2)
        try:
            code = int(parts[1])
        except Exception:
            out.append(dict(status=status, code=None, headers=[], body=b"", complete=False, framing="garbage"))
            i = len(buf)
            break
        hdrs = []
        for l in lines[1:]:
            if b":" in l:
                k, v = l.split(b":", 1)
                hdrs.append((k.decode("latin1").strip().lower(), v.decode("latin1").strip()))
        hd = {}
        for k, v in hdrs:
            hd.setdefault(k, []).append(v)
        p = end + sep
        r = dict(status=status, code=code, headers=hdrs, hd=hd, body=b"", complete=True, framing="none")
        if 100 <= code < 200 and code != 101:
            out.append(r)
            i = p
            continue
        meth = methods[mi] if mi < len(methods) else "GET"
        mi += 1
        if meth == "HEAD" or code in (204, 304) or code == 101:
            r["framing"] = "bodyless"
            i = p
        elif "transfer-encoding" in hd:
            r["framing"] = "chunked"
            body = b""
            ok = False
            for _ in range(10000):
                le = buf.find(b"\r\n", p)
                if le < 0:
                    break
                szs = buf[p:le].split(b";")[0].strip()
                try:
                    sz = int(szs, 16)
                except ValueError:
                    break
                p = le + 2
                if sz == 0:
                    te = buf.find(b"\r\n\r\n", p - 2)
                    if te < 0:
                        break
                    p = te + 4
                    ok = True
                    break
                if len(buf) < p + sz + 2:
                    body += buf[p:]
                    p = len(buf)
                    break
                body += buf[p:p + sz]
                p += sz + 2
            r["body"], r["complete"] = body, ok
            i = p
        elif "content-length" in hd:
            r["framing"] = "cl"
            try:
                n = int(hd["content-length"][0].split(",")[0])
            except ValueError:
                n = 0
            r["body"] = buf[p:p + n]
            r["complete"] = len(buf) >= p + n
            i = min(len(buf), p + n)
        else:
            r["framing"] = "close"
            r["body"] = buf[p:]
            r["complete"] = eof
            i = len(buf)
        out.append(r)
        if not r["complete"]:
            break
    return out, buf[i:]


def finals(rs):
    return [r for r in rs if r["code"] is None or not (100 <= r["code"] < 200) or r["code"] == 101]


# ----------------------------------------------------------------------------- one exchange
class Res:
    pass


def exchange(addr, parts, methods=("GET",), nfinal=1, timeout=T, half_close=False, linger=0.4):
    """parts: bytes, or list of (bytes, delay_before_s) or callables. Sends, reads until nfinal
    complete final responses, EOF, or timeout; then lingers to see whether the connection closes."""
    res = Res()
    res.raw = b""
    res.closed = False
    res.err = None
    t0 = time.time()
    try:
        s = socket.create_connection(hp(addr), timeout=timeout)
    except OSError as e:
        res.err = "connect: %s" % e
        res.rs, res.left, res.elapsed, res.eof = [], b"", 0, True
        res.statuses, res.codes, res.info, res.smuggled = [], [], [], False
        return res
    if TLS and addr == TLS[0]:
        try:
            s = TLS[1].wrap_socket(s, server_hostname="localhost")
        except (ssl.SSLError, OSError) as e:
            res.err = "tls: %s" % e
            res.rs, res.left, res.elapsed, res.eof = [], b"", 0, True
            res.statuses, res.codes, res.info, res.smuggled = [], [], [], False
            return res
    s.settimeout(0.1)
    if isinstance(parts, bytes):
        parts = [(parts, 0)]
    eof = False

    def pump(deadline):
        nonlocal eof
        while time.time() < deadline and not eof:
            try:
                d = s.recv(65536)
                if not d:
                    eof = True
                    res.closed = True
                    break
                res.raw += d
            except socket.timeout:
                return
            except (ConnectionResetError, BrokenPipeError):
                eof = True
                res.closed = "RST"
                break
            except ssl.SSLError:
                # a TCP close without close_notify, or a reset under TLS
                eof = True
                res.closed = True
                break

    try:
        for data, delay in parts:
            if delay:
                # while waiting, keep reading (e.g. 100 Continue)
                dl = time.time() + delay
                for _ in range(1000):
                    if time.time() >= dl or eof:
                        break
                    pump(min(dl, time.time() + 0.1))
            if eof:
                break
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                res.err = "send: %s" % e
                break
        if half_close and not eof:
            try:
                # socket.socket's own shutdown: SSLSocket.shutdown would drop the TLS layer
                # and leave the rest of the response undecrypted.
                socket.socket.shutdown(s, socket.SHUT_WR)
            except OSError:
                pass
        deadline = time.time() + timeout
        for _ in range(10000):
            if time.time() >= deadline or eof:
                break
            pump(min(deadline, time.time() + 0.1))
            rs, _ = parse_responses(res.raw, list(methods), eof)
            f = finals(rs)
            if len(f) >= nfinal and all(r["complete"] for r in f[:nfinal]):
                break
        # linger: does the peer close? any extra bytes?
        if not eof:
            dl = time.time() + linger
            for _ in range(100):
                if time.time() >= dl or eof:
                    break
                pump(min(dl, time.time() + 0.1))
    finally:
        s.close()
    res.elapsed = time.time() - t0
    res.eof = eof
    res.rs, res.left = parse_responses(res.raw, list(methods), eof)
    res.statuses = [r["status"] for r in res.rs]
    res.codes = [r["code"] for r in finals(res.rs)]
    res.info = [r["code"] for r in res.rs if r["code"] and 100 <= r["code"] < 200 and r["code"] != 101]
    res.smuggled = SMUG_MARK in res.raw or b"SMUGGLED-RESP" in res.raw
    return res


# ----------------------------------------------------------------------------- verdict helpers
def first(r):
    return r.codes[0] if r.codes else None


def v_reject(codes=(400,), close=True, alt_ok=None):
    """Expect an error status in `codes` then close; smuggling is always FAIL."""
    def f(r):
        if r.smuggled:
            return "FAIL", "smuggled request answered"
        c = first(r)
        if c is None:
            if r.closed:
                return "WARN", "closed without any response"
            return "FAIL", "no response and connection left open (hang)"
        if alt_ok and alt_ok(r):
            return "PASS", "accepted in an RFC-permitted way"
        if c in codes:
            if close and not r.closed:
                return "FAIL", "%d but connection NOT closed" % c
            return "PASS", ""
        if 400 <= c < 600:
            if close and not r.closed:
                return "FAIL", "%d (expected %s) and connection NOT closed" % (c, codes)
            return "WARN", "%d instead of %s" % (c, codes)
        return "FAIL", "accepted with %d" % c
    return f


def v_ok(code=200, body_has=None, keep=None, n=1):
    def f(r):
        if r.smuggled:
            return "FAIL", "smuggled request answered"
        if len(r.codes) < n:
            return "FAIL", "expected %d response(s), got %s" % (n, r.codes)
        if r.codes[0] != code:
            return "FAIL", "expected %d got %s" % (code, r.codes)
        if body_has is not None:
            b = finals(r.rs)[0]["body"]
            if body_has not in b:
                return "FAIL", "body lacks %r: %r" % (body_has, b[:200])
        if keep is True and r.closed:
            return "FAIL", "connection closed unexpectedly"
        if keep is False and not r.closed:
            return "FAIL", "connection not closed"
        return "PASS", ""
    return f


def v_any_safe(r):
    if r.smuggled:
        return "FAIL", "smuggled request answered"
    if r.err and not r.codes:
        return "WARN", r.err
    if not r.codes and not r.closed:
        return "FAIL", "no response and not closed"
    return "PASS", "(either accepting or rejecting is allowed)"


# ----------------------------------------------------------------------------- fake upstream
FAKE = {}     # case -> list of (bytes, delay) ; optional "close" flag
FAKE_CLOSE = set()
HEAD_CASES = set()


def fr(status="200 OK", headers=(), body=b""):
    h = "".join("%s\r\n" % x for x in headers)
    return ("HTTP/1.1 %s\r\n%s\r\n" % (status, h)).encode("latin1") + body


SMR = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nSMUGGLED-RESP"
OK = fr(headers=["Content-Length: 11"], body=b"FOLLOWUP-OK")


def define_fake():
    F = FAKE
    F["ok"] = [(OK, 0)]
    F["cl_te"] = [(fr(headers=["Content-Length: 3", "Transfer-Encoding: chunked"], body=b"5\r\nhello\r\n0\r\n\r\n"), 0)]
    F["te_cl_smuggle"] = [(fr(headers=["Transfer-Encoding: chunked", "Content-Length: 0"], body=b"0\r\n\r\n"), 0),
                          (SMR, 0.15)]
    F["cl_diff"] = [(fr(headers=["Content-Length: 2", "Content-Length: 3"], body=b"abc"), 0)]
    F["cl_list_same"] = [(fr(headers=["Content-Length: 2, 2"], body=b"ok"), 0)]
    F["cl_alpha"] = [(fr(headers=["Content-Length: abc"], body=b"ok"), 0)]
    F["cl_neg"] = [(fr(headers=["Content-Length: -1"], body=b"ok"), 0)]
    F["cl_plus"] = [(fr(headers=["Content-Length: +2"], body=b"ok"), 0)]
    F["cl_huge"] = [(fr(headers=["Content-Length: 99999999999999999999999"], body=b"ok"), 0)]
    F["chunk_bad"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"zz\r\nhello\r\n0\r\n\r\n"), 0)]
    F["chunk_overflow"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"10000000000000002\r\nok\r\n0\r\n\r\n" + SMR), 0)]
    F["chunk_nocrlf"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"2\r\nokXX0\r\n\r\n"), 0)]
    F["chunked_ok"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"5\r\nhello\r\n0\r\n\r\n"), 0)]
    F["chunked_trailers"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"2\r\nok\r\n0\r\nX-T: v\r\n\r\n"), 0)]
    F["te_gzip"] = [(fr(headers=["Transfer-Encoding: gzip"], body=b"abcdef"), 0)]
    FAKE_CLOSE.add("te_gzip")
    F["r103"] = [(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n", 0),
                 (fr(headers=["Content-Length: 2"], body=b"ok"), 0.1)]
    F["r100"] = [(b"HTTP/1.1 100 Continue\r\n\r\n" + fr(headers=["Content-Length: 2"], body=b"ok"), 0)]
    F["many1xx"] = [(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" * 20 + fr(headers=["Content-Length: 2"], body=b"ok"), 0)]
    F["r101"] = [(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 0),
                 (SMR, 0.15)]
    # A provider that accepts h2c: it switches whenever it is asked to.
    F["r101h2c"] = [(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 0),
                    (SMR, 0.15)]
    F["close_delim"] = [(fr(headers=["Content-Type: text/plain"], body=b"close-delimited-body"), 0)]
    FAKE_CLOSE.add("close_delim")
    F["r204_body"] = [(fr("204 No Content", ["Content-Length: %d" % len(SMR)], SMR), 0)]
    F["r204_nocl_body"] = [(fr("204 No Content", [], SMR), 0)]
    F["r304_cl"] = [(fr("304 Not Modified", ["Content-Length: 100", 'ETag: "x"']), 0)]
    F["head_cl"] = [(fr(headers=["Content-Length: 100"]), 0)]
    F["head_chunked"] = [(fr(headers=["Transfer-Encoding: chunked"]), 0)]
    F["bad_ver_x"] = [(b"HTTP/1.x 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["bad_ver_2"] = [(b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["bad_ver_icy"] = [(b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["bad_code"] = [(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["code_099"] = [(b"HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["resp_http10"] = [(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["obs_fold"] = [(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["obs_fold_cl"] = [(b"HTTP/1.1 200 OK\r\nX-A: a\r\n Content-Length: 40\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["extra_same"] = [(fr(headers=["Content-Length: 2"], body=b"ok") + SMR, 0)]
    F["extra_delayed"] = [(fr(headers=["Content-Length: 2"], body=b"ok"), 0), (SMR, 0.15)]
    F["short_cl"] = [(fr(headers=["Content-Length: 10"], body=b"abc"), 0)]
    FAKE_CLOSE.add("short_cl")
    F["nul_hdr"] = [(b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["cr_hdr"] = [(b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok", 0)]
    F["bare_lf"] = [(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", 0)]
    F["space_colon"] = [(b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", 0)]
    F["conn_hop"] = [(fr(headers=["Connection: x-internal", "X-Internal: secret", "Keep-Alive: timeout=5",
                                   "Content-Length: 2"], body=b"ok"), 0)]
    F["no_response"] = []
    FAKE_CLOSE.add("no_response")
    F["huge_hdr"] = [(fr(headers=["X-Big: " + "a" * 100000, "Content-Length: 2"], body=b"ok"), 0)]
    F["chunk_lf"] = [(fr(headers=["Transfer-Encoding: chunked"], body=b"2\nok\n0\n\n"), 0)]


class Fake:
    def __init__(self, addr):
        self.addr = addr
        self.lock = threading.Lock()
        self.conns = {}          # sock -> dict(idle, last_case, closed_by_peer)
        self.events = []
        self.closed_cases = set()
        self.stop = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(hp(addr))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            st = dict(idle=True, last=None, peer_closed=False)
            with self.lock:
                self.conns[c] = st
            threading.Thread(target=self.serve, args=(c, st), daemon=True).start()

    def close_idle(self):
        with self.lock:
            for c, st in list(self.conns.items()):
                if st["idle"]:
                    try:
                        st["we_closed"] = True
                        c.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        time.sleep(0.05)

    def peer_closed(self, case):
        with self.lock:
            return case in self.closed_cases

    def serve(self, c, st):
        c.settimeout(0.2)
        buf = b""
        t_end = time.time() + 120
        try:
            while time.time() < t_end and not self.stop:
                try:
                    d = c.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    if not st.get("we_closed"):
                        self.closed_cases.add(st["last"])
                    break
                if not d:
                    st["peer_closed"] = True
                    self.closed_cases.add(st["last"])
                    break
                buf += d
                for _ in range(20):
                    e = buf.find(b"\r\n\r\n")
                    if e < 0:
                        break
                    head = buf[:e].decode("latin1")
                    buf = buf[e + 4:]
                    # skip a request body (CL only; tests send bodyless requests upstream)
                    for l in head.split("\r\n")[1:]:
                        if l.lower().startswith("content-length:"):
                            try:
                                n = int(l.split(":", 1)[1])
                            except ValueError:
                                n = 0
                            for _ in range(50):
                                if len(buf) >= n:
                                    break
                                try:
                                    buf += c.recv(65536)
                                except socket.timeout:
                                    pass
                            buf = buf[n:]
                    target = head.split(" ")[1] if " " in head else "/"
                    case = target.split("/r/", 1)[1].split("?")[0] if "/r/" in target else "ok"
                    st["idle"] = False
                    st["last"] = case
                    self.events.append((time.time(), case, head.split("\r\n")[0]))
                    if case == "ok":
                        b = ("OK:" + target).encode("latin1")
                        steps = [(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(b) + b, 0)]
                    else:
                        steps = FAKE.get(case, [(OK, 0)])
                    for data, delay in steps:
                        if delay:
                            time.sleep(delay)
                        c.sendall(data)
                    st["idle"] = True
                    if case in FAKE_CLOSE:
                        st["we_closed"] = True
                        c.shutdown(socket.SHUT_RDWR)
                        raise OSError("close")
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass
            with self.lock:
                self.conns.pop(c, None)


# ----------------------------------------------------------------------------- request-side cases
def req(method="GET", target="/headers", ver="HTTP/1.1", headers=("Host: x",), body=b""):
    h = "".join("%s\r\n" % x for x in headers)
    return ("%s %s %s\r\n%s\r\n" % (method, target, ver, h)).encode("latin1") + body


def chunk(b):
    return b"%x\r\n%s\r\n" % (len(b), b)


def post(hdrs, body, target="/echo"):
    return req("POST", target, headers=["Host: x"] + list(hdrs), body=body)


CASES_A = []


def A(name, sec, data, verdict, **kw):
    CASES_A.append((name, sec, data, verdict, kw))


def headers_json(r, i=0):
    try:
        return json.loads(finals(r.rs)[i]["body"].decode("latin1"))
    except Exception:
        return None


def fwd_headers(r, i=0):
    j = headers_json(r, i)
    return [(k.lower(), v) for k, v in j["headers"]] if j else None


def define_a():
    CLTE_BODY = b"0\r\n\r\n" + S
    A("baseline", "-", req(), v_ok(200, b'"target":"/headers"', keep=True))
    # --- CL + TE
    A("cl_te", "9112 6.1/6.3(3): reject or use TE; MUST close",
      post(["Content-Length: %d" % len(CLTE_BODY), "Transfer-Encoding: chunked"], CLTE_BODY),
      v_reject(), nfinal=2)
    tecl = chunk(S) + b"0\r\n\r\n"
    A("te_cl", "9112 6.1/6.3(3)", post(["Transfer-Encoding: chunked", "Content-Length: 4"], tecl),
      v_reject(), nfinal=2)
    # --- TE variants
    A("te_chunked_gzip", "9112 6.3(4): chunked not final => 400 + close",
      post(["Transfer-Encoding: chunked, gzip"], chunk(b"hello") + b"0\r\n\r\n"), v_reject((400, 501)))
    A("te_gzip", "9112 6.3(4)/6.1: 400 (or 501 unknown coding) + close",
      post(["Transfer-Encoding: gzip"], b"hello"), v_reject((400, 501)))
    A("te_gzip_chunked", "9112 6.1: valid framing; forward or 501",
      post(["Transfer-Encoding: gzip, chunked"], chunk(b"hello") + b"0\r\n\r\n"), v_any_safe)
    A("te_chunked_twice_list", "9112 7: chunked MUST NOT be applied twice => 400",
      post(["Transfer-Encoding: chunked, chunked"], chunk(b"hello") + b"0\r\n\r\n"), v_reject())
    A("te_chunked_twice_lines", "9112 7 / 9110 5.3 (combined = 'chunked, chunked')",
      post(["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"], chunk(b"hello") + b"0\r\n\r\n"), v_reject())
    A("te_xchunked", "9112 6.1: unknown coding => 501/400, close",
      post(["Transfer-Encoding: xchunked"], chunk(b"hello") + b"0\r\n\r\n"), v_reject((400, 501)))
    A("te_xchunked_cl", "9112 6.1/6.3",
      post(["Transfer-Encoding: xchunked", "Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY), v_reject((400, 501)), nfinal=2)
    A("te_ows_spaces", "9110 5.6.3: OWS around value is valid => accept as chunked",
      post(["Transfer-Encoding:   chunked   "], chunk(b"hello") + b"0\r\n\r\n"), v_ok(200, b"hello"))
    A("te_ows_tab", "9110 5.6.3: HTAB is OWS => accept",
      post(["Transfer-Encoding:\tchunked"], chunk(b"hello") + b"0\r\n\r\n"), v_ok(200, b"hello"))
    A("te_case", "9112 7: coding names case-insensitive => accept",
      post(["Transfer-Encoding: Chunked"], chunk(b"hello") + b"0\r\n\r\n"), v_ok(200, b"hello"))
    A("te_vtab_cl", "9110 5.5: VT not OWS => invalid TE; with CL must not smuggle",
      post(["Transfer-Encoding:\x0bchunked", "Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY), v_reject((400, 501)), nfinal=2)
    A("te_space_colon_cl", "9112 5.1: ws before colon MUST be rejected (400)",
      post(["Transfer-Encoding : chunked", "Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY), v_reject(), nfinal=2)
    A("te_leading_ws_line", "9112 2.2: ws-preceded first field line: reject or ignore line",
      b"POST /echo HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(CLTE_BODY) + CLTE_BODY,
      v_reject(alt_ok=lambda r: r.codes and r.codes[0] == 200 and not r.smuggled), nfinal=2)
    A("te_obsfold_cl", "9112 5.2: obs-fold reject or unfold to SP (then CL+TE => 400)",
      post(["Content-Length: %d" % len(CLTE_BODY), "X-A: a", " Transfer-Encoding: chunked"], CLTE_BODY), v_reject(), nfinal=2)
    A("te_nul_cl", "9110 5.5: NUL in value => reject",
      post(["Transfer-Encoding: chunked\x00", "Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY), v_reject((400, 501)), nfinal=2)
    A("te_http10", "9112 6.1: TE in HTTP/1.0 => framing faulty, close",
      b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"hello") + b"0\r\n\r\n", v_reject())
    A("te_empty_cl", "9112 6.1: empty TE value is invalid",
      post(["Transfer-Encoding: ", "Content-Length: %d" % len(CLTE_BODY)], CLTE_BODY), v_reject((400, 501)), nfinal=2)
    # --- Content-Length
    A("cl_dup_same", "9112 6.3(5): MAY accept as one value or reject",
      post(["Content-Length: 5", "Content-Length: 5"], b"hello"), v_any_safe)
    A("cl_list_same", "9112 6.3(5) / 9110 8.6",
      post(["Content-Length: 5, 5"], b"hello"), v_any_safe)
    A("cl_dup_diff", "9112 6.3(5): 400 + close",
      post(["Content-Length: 5", "Content-Length: 6"], b"hellox"), v_reject())
    A("cl_list_diff", "9112 6.3(5)", post(["Content-Length: 5, 6"], b"hellox"), v_reject())
    for nm, val in [("cl_plus", "+5"), ("cl_neg", "-1"), ("cl_hex", "0x10"), ("cl_space_inside", "5 5"),
                    ("cl_huge", "99999999999999999999999"), ("cl_empty", ""), ("cl_u64max_plus1", "18446744073709551621")]:
        A(nm, "9110 8.6 (1*DIGIT) / 9112 6.3(5): 400 + close",
          post(["Content-Length: " + val], b"hello"), v_reject((400, 413)))
    A("cl_leading_zeros", "9110 8.6: '005' is valid 1*DIGIT", post(["Content-Length: 005"], b"hello"), v_ok(200, b"hello"))
    A("cl_space_colon", "9112 5.1", post(["Content-Length : 5"], b"hello"), v_reject())
    # --- header syntax
    A("obs_fold", "9112 5.2: 400 or replace with SP before forwarding",
      req(headers=["Host: x", "X-A: a", " b"]),
      v_reject(alt_ok=lambda r: r.codes == [200] and ("x-a", "a b") in (fwd_headers(r) or [])))
    A("space_before_colon_host", "9112 5.1: MUST 400", req(headers=["Host : x"]), v_reject())
    A("missing_host_11", "9112 3.2: MUST 400", req(headers=[]), v_reject(close=False))
    A("two_hosts", "9112 3.2: MUST 400", req(headers=["Host: x", "Host: y"]), v_reject(close=False))
    A("host_list", "9112 3.2 (two values in one line)", req(headers=["Host: x, y"]), v_reject(close=False))
    A("bare_lf_lines", "9112 2.2: MAY accept bare LF",
      b"GET /headers HTTP/1.1\nHost: x\n\n", v_any_safe)
    A("bare_lf_smuggle_te", "9112 2.2/5.5: LF inside a field line must not hide a TE",
      b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nX-A: b\nTransfer-Encoding: chunked\r\n\r\n" % len(CLTE_BODY) + CLTE_BODY,
      v_reject(), nfinal=2)
    A("bare_cr_value", "9112 2.2: bare CR => invalid or SP",
      req(headers=["Host: x", "X-A: a\rb"]),
      v_reject(alt_ok=lambda r: r.codes == [200] and ("x-a", "a b") in (fwd_headers(r) or [])))
    A("nul_value", "9110 5.5: NUL => reject or SP",
      req(headers=["Host: x", "X-A: a\x00b"]),
      v_reject(alt_ok=lambda r: r.codes == [200] and ("x-a", "a b") in (fwd_headers(r) or [])))
    A("bad_field_name", "9110 5.1 token: 400", req(headers=["Host: x", "X A: b"]), v_reject())
    A("empty_field_name", "9110 5.1", req(headers=["Host: x", ": b"]), v_reject())
    # --- chunked syntax (POST /echo)
    def ch(nm, body, sec="9112 7.1: invalid chunk => 400/abort + close", verdict=None, nfinal=2):
        A(nm, sec, post(["Transfer-Encoding: chunked"], body + S), verdict or v_chunk_bad, nfinal=nfinal)
    ch("chunk_0x5", b"0x5\r\nhello\r\n0\r\n\r\n")
    ch("chunk_neg", b"-5\r\nhello\r\n0\r\n\r\n")
    ch("chunk_overflow_wrap", b"10000000000000005\r\nhello\r\n0\r\n\r\n")
    ch("chunk_overflow_ff", b"ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n")
    ch("chunk_missing_crlf", b"5\r\nhelloXX0\r\n\r\n")
    ch("chunk_data_longer", b"3\r\nhello\r\n0\r\n\r\n")
    ch("chunk_ext_ctl", b"5;a=\x01\r\nhello\r\n0\r\n\r\n")
    ch("chunk_ext_lf", b"5;a\nb\r\nhello\r\n0\r\n\r\n")
    ch("chunk_bare_lf", b"5\nhello\n0\n\n")
    ch("chunk_bare_lf_size_only", b"5\nhello\r\n0\r\n\r\n")
    ch("chunk_size_trailing_sp", b"5 \r\nhello\r\n0\r\n\r\n", sec="9112 7.1: no BWS w/o ext; lenient accept questionable")
    ch("chunk_size_empty", b"\r\nhello\r\n0\r\n\r\n")
    ch("chunk_ext_ok", b"5;name=val;q=\"x y\"\r\nhello\r\n0\r\n\r\n", sec="9112 7.1.1: valid ext => accept",
       verdict=v_chunk_good, nfinal=2)
    ch("chunk_leading_zeros", b"0005\r\nhello\r\n0000\r\n\r\n", sec="9112 7.1: valid", verdict=v_chunk_good)
    A("chunk_trailers_pipelined", "9112 7.1.2: trailers valid; next request parsed correctly",
      post(["Transfer-Encoding: chunked"], chunk(b"hello") + b"0\r\nX-T: v\r\n\r\n") + req(target="/headers?second"),
      v_ok(200, b"hello", n=2), nfinal=2, methods=("POST", "GET"), post_check=lambda r: b"/headers?second" in finals(r.rs)[1]["body"] if len(r.codes) > 1 else False)
    A("chunk_bad_trailer", "9112 7.1.2: malformed trailer line => 400",
      post(["Transfer-Encoding: chunked"], chunk(b"hello") + b"0\r\nbad trailer\r\n\r\n") + S, v_chunk_bad, nfinal=2)
    A("chunk_trailer_te", "9112 7.1.2/6.5: framing fields in trailers must not be used",
      post(["Transfer-Encoding: chunked"], chunk(b"hello") + b"0\r\nContent-Length: 50\r\n\r\n") + req(target="/headers?second"),
      v_ok(200, b"hello", n=2), nfinal=2, methods=("POST", "GET"))
    # --- sizes
    A("req_line_8000", "9112 3: SHOULD support >= 8000-octet request-line",
      req(target="/headers?" + "a" * 7970), v_ok(200))
    A("req_line_100k", "9110 15.5.15: 414 (or 400/431) + close",
      req(target="/headers?" + "a" * 100000), v_reject((414, 431, 400)), timeout=3)
    A("header_section_100k", "RFC 6585 5: 431 (or 400) + close",
      req(headers=["Host: x"] + ["X-H%d: %s" % (i, "v" * 1000) for i in range(100)]), v_reject((431, 400)), timeout=3)
    A("many_small_headers", "RFC 6585 5: 431 (or 400)",
      req(headers=["Host: x"] + ["X-%d: v" % i for i in range(3000)]), v_reject((431, 400)), timeout=3)
    # --- methods / targets / versions
    A("unknown_method", "9110 9.1: forward or 501; no crash", req("FOO"), v_any_safe)
    A("lowercase_method", "9110 9.1: methods case-sensitive ('get' is a different method)", req("get"), v_any_safe)
    A("bad_method_token", "9112 3: invalid token => 400", req("G(T"), v_reject())
    A("absolute_form", "9112 3.2.2: server MUST accept absolute-form; Host from target",
      req(target="http://x/headers", headers=["Host: y"]), v_abs_form)
    A("absolute_form_health", "9112 3.2.2: routes like origin-form /health",
      req(target="http://x/health"), v_ok(200))
    A("asterisk_get", "9112 3.2.4: '*' only with OPTIONS => 400", req("GET", "*"), v_reject(close=False))
    A("options_asterisk", "9112 3.2.4: valid", req("OPTIONS", "*"), v_not400)
    A("options_max_forwards_0", "9110 7.6.2: Max-Forwards 0 => answer, MUST NOT forward",
      req("OPTIONS", headers=["Host: x", "Max-Forwards: 0"]), v_not_forwarded)
    A("options_max_forwards_decremented", "9110 7.6.2: MUST decrement when forwarding",
      req("OPTIONS", headers=["Host: x", "Max-Forwards: 3"]), v_max_forwards(b"2"))
    A("trace_not_echoed", "9110 9.3.8: TRACE echoes the forwarded head (the provider's key): refuse",
      req("TRACE", headers=["Host: x", "Cookie: secret"]), v_reject((405, 501), close=False))
    A("connect", "9110 9.3.6: reverse proxy: refuse (405/501/400), no tunnel",
      [(req("CONNECT", "127.0.0.1:9411", headers=["Host: 127.0.0.1:9411"]), 0),
       (req(target="/headers?SMUGGLED"), 0.3)],
      v_reject((400, 403, 405, 501), close=False), nfinal=2)
    A("http_1_2", "9112 2.3: higher minor => process as 1.1", req(ver="HTTP/1.2"), v_ok(200))
    A("http_2_0", "9110 15.6.6: 505 (or 400)", req(ver="HTTP/2.0"), v_reject((505, 400), close=False))
    A("http_lowercase", "9112 2.3: HTTP-name case-sensitive => 400", req(ver="http/1.1"), v_reject(close=False))
    A("http_09", "9112 3: no version => 400/close", b"GET /headers\r\n\r\n", v_reject(close=False))
    A("double_space_reqline", "9112 3: invalid request-line => 400", b"GET  /headers HTTP/1.1\r\nHost: x\r\n\r\n",
      v_reject(close=False))
    # --- connection management
    A("pipelined_3", "9112 9.3.2: responses in request order",
      req(target="/bytes?size=1") + req(target="/bytes?size=2") + req(target="/bytes?size=3"),
      v_pipelined, nfinal=3, methods=("GET", "GET", "GET"))
    A("pipelined_post_get", "9112 9.3.2",
      post(["Content-Length: 5"], b"hello") + req(target="/headers?second"),
      v_ok(200, b"hello", n=2), nfinal=2, methods=("POST", "GET"))
    A("expect_100", "9110 10.1.1: forward expectation or 100; final 200 echo",
      [(post(["Content-Length: 5", "Expect: 100-continue"], b""), 0), (b"hello", 1.0)],
      v_ok(200, b"hello"), methods=("POST",))
    A("expect_100_http10", "9110 10.1.1: MUST ignore 100-continue in HTTP/1.0; no 1xx to 1.0",
      [(b"POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n", 0), (b"hello", 0.5)],
      v_no1xx_ok, methods=("POST",))
    A("expect_unknown", "9110 10.1.1: MAY 417; else process", post(["Content-Length: 5", "Expect: foo"], b"hello"), v_any_safe)
    A("connection_close", "9112 9.6: MUST close after response",
      req(headers=["Host: x", "Connection: close"]), v_ok(200, keep=False))
    A("http10_default_close", "9112 9.3: 1.0 w/o keep-alive => close", req(ver="HTTP/1.0"), v_ok(200, keep=False))
    A("http10_keepalive", "9112 9.3 / 2068: if kept open, must say Connection: keep-alive",
      req(ver="HTTP/1.0", headers=["Host: x", "Connection: keep-alive"]) , v_http10_ka)
    A("http10_no_chunked", "9112 6.1: MUST NOT send TE to HTTP/1.0",
      req(target="/bytes?size=5&chunked=1", ver="HTTP/1.0"), v_http10_no_te)
    A("get_with_body", "9110 9.3.1 / 9112 6.3: body framed by CL, next request intact",
      req(headers=["Host: x", "Content-Length: 5"], body=b"hello") + req(target="/headers?second"),
      v_second_ok, nfinal=2, methods=("GET", "GET"))
    A("get_with_chunked_body", "9112 6.3",
      req(headers=["Host: x", "Transfer-Encoding: chunked"], body=chunk(b"hello") + b"0\r\n\r\n") + req(target="/headers?second"),
      v_second_ok, nfinal=2, methods=("GET", "GET"))
    A("cl_short_halfclose", "9112 6.3: incomplete body => error/close, no hang; upstream conn not reused",
      post(["Content-Length: 100"], b"0123456789"), v_incomplete, half_close=True, timeout=6)
    A("halfclose_after_request", "9112 9.6: request complete; a response is still expected",
      req(), v_ok(200), half_close=True)
    # --- hop-by-hop
    A("conn_option_strip", "9110 7.6.1: MUST remove fields named in Connection",
      req(headers=["Host: x", "Connection: x-secret", "X-Secret: 1", "Keep-Alive: timeout=5", "TE: trailers",
                   "Proxy-Connection: keep-alive"]), v_hop)
    A("conn_option_content_length", "9110 7.6.1 abuse: 'Connection: content-length' must not unframe body",
      post(["Content-Length: %d" % len(S), "Connection: content-length"], S), v_any_safe, nfinal=1)
    A("conn_option_te", "9110 7.6.1 abuse: 'Connection: transfer-encoding'",
      post(["Transfer-Encoding: chunked", "Connection: transfer-encoding"], chunk(S) + b"0\r\n\r\n"), v_any_safe)


def v_chunk_bad(r):
    f = finals(r.rs)
    if r.smuggled and len(f) >= 2 and f[0]["code"] == 200 and f[0]["body"] == b"hello" and SMUG_MARK in f[1]["body"]:
        return "WARN", "invalid chunk syntax accepted leniently (following request then served as a pipelined one)"
    if r.smuggled:
        return "FAIL", "smuggled request answered"
    if f and f[0]["code"] == 200 and f[0]["complete"]:
        if len(f) > 1:
            return "FAIL", "invalid chunked body accepted and followed by another response"
        return "WARN", "invalid chunked body accepted (200 complete)"
    if not f and not r.closed:
        return "FAIL", "no response, not closed"
    if f and f[0]["code"] and f[0]["code"] >= 400:
        return ("PASS", "") if r.closed else ("FAIL", "error but not closed")
    if r.closed:
        return "PASS", "response aborted/closed"
    return "FAIL", "open after incomplete response"


def v_chunk_good(r):
    # the appended request is a legitimate pipelined request here: it must be answered 2nd, in order
    f = finals(r.rs)
    if len(f) >= 2 and f[0]["code"] == 200 and f[0]["body"] == b"hello" and SMUG_MARK in f[1]["body"]:
        return "PASS", ""
    return "WARN", "valid chunked body rejected: %s" % r.codes


def v_abs_form(r):
    if not r.codes:
        return "FAIL", "no response"
    if r.codes[0] == 200:
        j = headers_json(r)
        if j:
            hosts = [v for k, v in j["headers"] if k.lower() == "host"]
            note = "forwarded target=%r Host=%r" % (j.get("target"), hosts)
            if hosts != ["x"]:
                return "WARN", note + " (Host not replaced by target authority)"
            return "PASS", note
        return "PASS", ""
    return "FAIL", "absolute-form refused with %s" % r.codes


def v_not_forwarded(r):
    if not r.codes:
        return "FAIL", "no response"
    if r.codes[0] >= 400:
        return "FAIL", "answered %d" % r.codes[0]
    if "target" in (headers_json(r) or {}):
        return "FAIL", "forwarded to the provider"
    return "PASS", ""


def v_max_forwards(want):
    def f(r):
        h = fwd_headers(r)
        if h is None:
            return "FAIL", "not forwarded: %s" % r.codes
        got = [v for k, v in h if k == "max-forwards"]
        return ("PASS", "") if got == [want.decode()] else ("FAIL", "Max-Forwards forwarded as %s" % got)
    return f


def v_not400(r):
    if not r.codes:
        return "FAIL", "no response"
    if r.codes[0] == 400:
        return "WARN", "OPTIONS * answered 400"
    return "PASS", "%s" % r.codes


def v_pipelined(r):
    f = finals(r.rs)
    if len(f) < 3:
        return "FAIL", "only %d responses" % len(f)
    lens = [len(x["body"]) for x in f[:3]]
    return ("PASS", "") if lens == [1, 2, 3] else ("FAIL", "out of order: body lengths %s" % lens)


def v_no1xx_ok(r):
    if r.info:
        return "FAIL", "1xx %s sent to HTTP/1.0 client" % r.info
    return v_ok(200, b"hello")(r)


def v_http10_ka(r):
    if not r.codes or r.codes[0] != 200:
        return "FAIL", "%s" % r.codes
    f = finals(r.rs)[0]
    ka = any("keep-alive" in v.lower() for v in f["hd"].get("connection", []))
    if r.closed:
        return "PASS", "closed (keep-alive not granted)"
    if ka:
        return "PASS", "kept alive with Connection: keep-alive"
    return "FAIL", "connection kept open but response lacks 'Connection: keep-alive' (1.0 client will wait for close)"


def v_http10_no_te(r):
    if not r.codes:
        return "FAIL", "no response"
    f = finals(r.rs)[0]
    if "transfer-encoding" in f["hd"]:
        return "FAIL", "Transfer-Encoding sent to HTTP/1.0 client"
    return "PASS", "framing=%s closed=%s" % (f["framing"], r.closed)


def v_second_ok(r):
    f = finals(r.rs)
    if len(f) < 2:
        return "FAIL", "second request not answered: %s / %r" % (r.codes, r.raw[-200:])
    if b'"target":"/headers?second"' not in f[1]["body"]:
        return "FAIL", "second response is not for /headers?second: %r" % f[1]["body"][:200]
    return "PASS", ""


def v_incomplete(r):
    f = finals(r.rs)
    if f and f[0]["code"] == 200 and f[0]["complete"]:
        return "FAIL", "incomplete request answered with a complete 200"
    if not r.closed:
        return "FAIL", "connection still open after %.1fs" % r.elapsed
    return "PASS", "codes=%s closed after %.1fs" % (r.codes, r.elapsed)


def v_hop(r):
    h = fwd_headers(r)
    if h is None:
        return "FAIL", "no /headers response"
    bad = [k for k, v in h if k in ("x-secret", "keep-alive", "te", "connection", "proxy-connection")]
    if bad:
        return "FAIL", "hop-by-hop fields forwarded upstream: %s" % bad
    return "PASS", ""


# ----------------------------------------------------------------------------- response-side cases
CASES_B = []


def B(name, sec, case, verdict, method="GET", ver="HTTP/1.1", **kw):
    CASES_B.append((name, sec, case, verdict, method, ver, kw))


def vb_502(r):
    if r.smuggled:
        return "FAIL", "smuggled response delivered"
    if not r.codes:
        return ("WARN", "closed w/o response") if r.closed else ("FAIL", "hang")
    c = r.codes[0]
    if c == 502:
        return "PASS", ""
    if 500 <= c < 600:
        return "WARN", "%d instead of 502" % c
    return "FAIL", "invalid upstream response passed through as %d" % c


def vb_502_or(pred, why):
    def f(r):
        if not r.smuggled and r.codes and r.codes[0] != 502 and pred(r):
            return "PASS", why
        return vb_502(r)
    return f


def body0(r):
    f = finals(r.rs)
    return f[0]["body"] if f else b""


def hd0(r):
    f = finals(r.rs)
    return f[0]["hd"] if f else {}


def define_b():
    B("baseline_ok", "-", "ok", lambda r: ("PASS", "") if body0(r) == b"OK:/r/ok" else ("FAIL", "%s" % r.codes))
    B("date_added", "9110 6.6.1: proxy with a clock MUST add Date when forwarding a response lacking it", "ok",
      lambda r: ("PASS", "") if "date" in hd0(r) else ("FAIL", "no Date header on forwarded response"))
    B("via_added", "9110 7.6.3: proxy MUST send Via in forwarded messages", "ok",
      lambda r: ("PASS", "") if "via" in hd0(r) else ("FAIL", "no Via"))
    B("resp_cl_te", "9112 6.3(3): use TE and drop CL, or 502; close upstream", "cl_te",
      vb_502_or(lambda r: body0(r) == b"hello" and "content-length" not in hd0(r), "decoded as chunked, CL removed"))
    B("resp_te_cl0_then_extra", "9112 6.3(3): TE wins; later bytes never a response", "te_cl_smuggle",
      vb_502_or(lambda r: r.codes[0] == 200 and "content-length" not in hd0(r), "TE used"))
    B("resp_cl_diff", "9112 6.3(5): proxy MUST close upstream, send 502", "cl_diff", vb_502, upstream_close=True)
    B("resp_cl_list_same", "9112 6.3(5): MAY treat as single 2", "cl_list_same",
      vb_502_or(lambda r: body0(r) == b"ok", "accepted as 2"))
    for n in ("cl_alpha", "cl_neg", "cl_plus", "cl_huge"):
        B("resp_" + n, "9112 6.3(5): invalid CL => 502, close upstream", n, vb_502, upstream_close=True)
    B("resp_chunk_bad", "9112 7.1 / 6.3: invalid chunked => 502 or abort downstream", "chunk_bad", vb_abort)
    B("resp_chunk_overflow", "9112 7.1: size overflow must not wrap", "chunk_overflow", vb_abort)
    B("resp_chunk_nocrlf", "9112 7.1", "chunk_nocrlf", vb_abort)
    B("resp_chunk_lf", "9112 7.1: bare LF in chunk lines", "chunk_lf", vb_abort_or_ok)
    B("resp_chunked_ok", "-", "chunked_ok", lambda r: ("PASS", "") if body0(r) == b"hello" else ("FAIL", "%s %r" % (r.codes, body0(r))))
    B("resp_chunked_trailers", "9112 7.1.2", "chunked_trailers",
      lambda r: ("PASS", "") if body0(r) == b"ok" and finals(r.rs)[0]["complete"] else ("FAIL", "%s" % r.codes))
    B("resp_te_gzip_close", "9112 6.3(4): TE w/o chunked in response => read until close", "te_gzip",
      vb_te_gzip)
    B("resp_103", "9110 15.2: proxy MUST forward 1xx", "r103", vb_1xx)
    B("resp_103_to_http10", "9110 15.2: MUST NOT send 1xx to HTTP/1.0 client", "r103", vb_no1xx, ver="HTTP/1.0")
    B("resp_100_unsolicited", "9110 15.2: forward or drop; final 200 delivered", "r100",
      lambda r: ("PASS", "1xx fwd=%s" % r.info) if r.codes == [200] and body0(r) == b"ok" else ("FAIL", "%s" % r.statuses))
    B("resp_many_1xx", "9110 15.2", "many1xx",
      lambda r: ("PASS", "%d x 1xx forwarded" % len(r.info)) if r.codes and r.codes[0] == 200 and body0(r) == b"ok"
      else ("FAIL", "%s" % r.statuses[:3]))
    B("resp_101_unrequested", "9110 7.8/15.2.2: MUST NOT switch w/o Upgrade request => 502", "r101", vb_502,
      upstream_close=True, then=req(target="/r/ok"))
    B("resp_101_h2c_smuggling", "9110 7.8: h2c is not tunnelled (Upgrade stripped) => no 101 relayed", "r101h2c",
      vb_502, upstream_close=True, then=req(target="/r/ok"),
      headers=("Host: x", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAAQAAP__", "Connection: Upgrade"))
    B("resp_close_delimited", "9112 6.3(8): close-delimited; re-frame or close downstream", "close_delim",
      lambda r: ("PASS", "framing=%s closed=%s" % (finals(r.rs)[0]["framing"], r.closed))
      if r.codes == [200] and body0(r) == b"close-delimited-body" and (finals(r.rs)[0]["framing"] != "close" or r.closed)
      else ("FAIL", "%s %r closed=%s" % (r.codes, body0(r), r.closed)))
    B("resp_close_delimited_http10", "9112 6.1: no TE to 1.0 client", "close_delim",
      lambda r: ("PASS", "") if r.codes == [200] and body0(r) == b"close-delimited-body" and "transfer-encoding" not in hd0(r)
      else ("FAIL", "%s %r" % (r.codes, r.raw[:300])), ver="HTTP/1.0")
    B("resp_chunked_to_http10", "9112 6.1: MUST NOT send TE to 1.0 client", "chunked_ok",
      lambda r: ("PASS", "") if r.codes == [200] and body0(r) == b"hello" and "transfer-encoding" not in hd0(r)
      else ("FAIL", "%s TE=%s" % (r.codes, hd0(r).get("transfer-encoding"))), ver="HTTP/1.0")
    B("resp_204_with_body", "9112 6.3(1): 204 has no body; bytes after head are junk", "r204_body", vb_bodyless(204),
      pipeline=True)
    B("resp_204_nocl_body", "9112 6.3(1)", "r204_nocl_body", vb_bodyless(204), pipeline=True)
    B("resp_304_cl", "9112 6.3(1): 304 has no body regardless of CL", "r304_cl", vb_bodyless(304), pipeline=True)
    B("resp_head_cl", "9112 6.3(1): HEAD response has no body", "head_cl", vb_bodyless(200), method="HEAD", pipeline=True)
    B("resp_head_chunked", "9112 6.3(1)", "head_chunked", vb_bodyless(200), method="HEAD", pipeline=True)
    for n in ("bad_ver_x", "bad_ver_2", "bad_ver_icy", "bad_code", "code_099"):
        B("resp_" + n, "9112 4 / 2.3: invalid status-line => 502", n, vb_502)
    B("resp_http10_upstream", "9112 2.3/9.3: 1.0 upstream response OK", "resp_http10",
      lambda r: ("PASS", "") if r.codes == [200] and body0(r) == b"ok" else ("FAIL", "%s" % r.codes))
    B("resp_obs_fold", "9112 5.2: 502 or replace obs-fold with SP", "obs_fold",
      vb_502_or(lambda r: hd0(r).get("x-a") == ["a b"] and b"\r\n b\r\n" not in r.raw, "unfolded"))
    B("resp_obs_fold_cl", "9112 5.2 + 6.3", "obs_fold_cl",
      vb_502_or(lambda r: body0(r) == b"ok" and b"\r\n Content-Length" not in r.raw, "unfolded, CL 2 used"))
    B("resp_extra_same_write", "9112 6.3: bytes past CL are not part of this response; never deliver to another client",
      "extra_same", vb_extra, pipeline=True)
    # Late extra bytes racing a request already sent on the reused connection (the pipelined
    # shape) cannot be told from that request's response by any HTTP/1.1 proxy; what must hold
    # is that bytes which arrived while the connection sat idle are never used.
    B("resp_extra_delayed_newconn", "9112 6.3/9.3: same, next request from a NEW client connection", "extra_delayed",
      lambda r: ("PASS", "") if body0(r) == b"ok" and not r.smuggled else ("FAIL", "%s" % r.codes), settle=0.4)
    B("resp_short_cl", "9112 6.3: incomplete => close client conn (no completion)", "short_cl", vb_short)
    B("resp_nul_hdr", "9110 5.5: NUL => 502 or SP", "nul_hdr",
      vb_502_or(lambda r: b"\x00" not in r.raw, "NUL replaced/removed"))
    B("resp_cr_hdr", "9112 2.2: bare CR => 502 or SP", "cr_hdr",
      vb_502_or(lambda r: b"a\rb" not in r.raw, "CR replaced/removed"))
    B("resp_bare_lf", "9112 2.2: MAY accept; must re-emit CRLF", "bare_lf",
      vb_502_or(lambda r: body0(r) == b"ok" and b"\n\nok" not in r.raw.replace(b"\r\n\r\n", b""), "accepted, CRLF re-emitted"))
    B("resp_space_colon", "9112 5.1: proxy MUST remove ws before colon or 502", "space_colon",
      vb_502_or(lambda r: b"Content-Length :" not in r.raw and body0(r) == b"ok", "normalised"))
    B("resp_conn_hop", "9110 7.6.1: MUST remove Connection-listed fields", "conn_hop",
      lambda r: ("FAIL", "forwarded hop-by-hop: %s" % [k for k in hd0(r) if k in ("x-internal", "keep-alive")])
      if any(k in hd0(r) for k in ("x-internal", "keep-alive")) else ("PASS", "") if r.codes == [200] else ("FAIL", "%s" % r.codes))
    B("stale_pool_post", "9112 9.3.1/9.6: idle pooled conn closed by upstream must not fail a later POST",
      "ok", lambda r: ("PASS", "") if r.codes == [200] else ("WARN", "POST after upstream closed idle pooled conn -> %s "
                                                           "(no retry is allowed for a body, but the FIN was "
                                                           "visible before reuse)" % r.statuses),
      method="POST", stale=True)
    B("stale_pool_get", "9112 9.3.1: idempotent request retried on fresh conn", "ok",
      lambda r: ("PASS", "") if r.codes == [200] else ("FAIL", "%s" % r.statuses), stale=True)
    B("resp_no_response", "docs: upstream close before head => 502", "no_response", vb_502)
    B("resp_huge_header", "9112 / robustness: oversized head => 502", "huge_hdr", vb_502, timeout=3)


def vb_extra(r):
    if r.smuggled:
        return "FAIL", "upstream's stray bytes delivered as the response to the next (pipelined) request"
    f = finals(r.rs)
    if body0(r) == b"ok" and len(f) > 1 and f[1]["body"] == b"OK:/r/ok?pipelined":
        return "PASS", ""
    return "FAIL", "%s" % r.statuses


def vb_te_gzip(r):
    if not r.codes or r.codes[0] != 200:
        return vb_502(r)
    f = finals(r.rs)[0]
    if b"abcdef" not in f["body"] or not (r.closed or f["framing"] != "close"):
        return "FAIL", "body/framing wrong"
    te = ",".join(f["hd"].get("transfer-encoding", [])).lower()
    if "gzip" not in te:
        return "WARN", "gzip transfer-coding label dropped (TE now %r) without decoding: client sees coded bytes as identity" % te
    return "PASS", ""


def vb_abort(r):
    if r.smuggled:
        return "FAIL", "smuggled response delivered"
    f = finals(r.rs)
    if f and f[0]["code"] == 502:
        return "PASS", "502"
    if f and f[0]["complete"] and f[0]["code"] == 200:
        return "FAIL", "invalid chunked body delivered as a complete response: %r" % f[0]["body"][:60]
    if r.closed:
        return "PASS", "downstream aborted (closed mid-body)"
    return "FAIL", "incomplete and connection left open"


def vb_abort_or_ok(r):
    f = finals(r.rs)
    if f and f[0]["complete"] and f[0]["code"] == 200 and f[0]["body"] == b"ok":
        return "PASS", "bare-LF chunk lines accepted (lenient) and re-framed"
    return vb_abort(r)


def vb_1xx(r):
    if not r.codes or r.codes[0] != 200 or body0(r) != b"ok":
        return "FAIL", "final response wrong: %s" % r.statuses
    if 103 not in r.info:
        return "FAIL", "103 not forwarded (statuses %s)" % r.statuses
    return "PASS", ""


def vb_no1xx(r):
    if r.info:
        return "FAIL", "1xx %s sent to HTTP/1.0 client" % r.info
    if r.codes and r.codes[0] == 200 and body0(r) == b"ok":
        return "PASS", ""
    return "FAIL", "%s" % r.statuses


def vb_bodyless(code):
    def f(r):
        if r.smuggled:
            return "FAIL", "junk bytes after bodyless response delivered (as a response)"
        if not r.codes or r.codes[0] != code:
            return "FAIL", "expected %d first, got %s" % (code, r.statuses)
        if len(r.codes) < 2 or finals(r.rs)[1]["body"] != b"OK:/r/ok?pipelined":
            return "FAIL", "pipelined 2nd request on same client conn broken: %s left=%r" % (r.statuses, r.left[:80])
        if r.elapsed > 1.5:
            return "WARN", "slow (%.1fs)" % r.elapsed
        return "PASS", ""
    return f


def vb_short(r):
    f = finals(r.rs)
    if f and f[0]["complete"] and f[0]["code"] == 200:
        return "FAIL", "truncated body delivered as complete"
    if not r.closed:
        return "FAIL", "client connection left open"
    return "PASS", "codes=%s closed" % r.codes


# ----------------------------------------------------------------------------- runner
def show(b, n=600):
    s = repr(b[:n])
    return s + ("...(%d bytes)" % len(b) if len(b) > n else "")


def followup_a(gw):
    r = exchange(gw, req(target="/headers?followup"), linger=0)
    ok = bool(r.codes) and r.codes[0] == 200 and b'"target":"/headers?followup"' in body0(r)
    return ok, r


FU = [0]


def followup_b(gw, n=3):
    bad = []
    for _ in range(n):
        FU[0] += 1
        t = "/r/ok?fu=%d" % FU[0]
        r = exchange(gw, req(target=t), linger=0)
        if body0(r) != ("OK:" + t).encode() or r.smuggled:
            bad.append("GET %s -> %s %r" % (t, r.statuses, body0(r)[:40]))
    return not bad, bad


def main(argv):
    global VERBOSE, TLS
    args = [a for a in argv if not a.startswith("-")]
    VERBOSE = "-v" in argv
    only = None
    if "-k" in argv:
        only = argv[argv.index("-k") + 1]
        args.remove(only)
    tls_ca = None
    if "--tls-ca" in argv:
        tls_ca = argv[argv.index("--tls-ca") + 1]
        args.remove(tls_ca)
    if "--fake-only" in argv:
        define_fake()
        Fake(args[0] if args else "127.0.0.1:9413")
        print("fake upstream running")
        for _ in range(36000):
            time.sleep(0.1)
        return 0
    if not args:
        print(__doc__)
        return 2
    gw_a = args[0]
    if tls_ca:
        TLS = (gw_a, ssl.create_default_context(cafile=tls_ca))
    gw_b = args[1] if len(args) > 1 else None
    fake_addr = args[2] if len(args) > 2 else "127.0.0.1:9413"
    define_a()
    results = []

    for name, sec, data, verdict, kw in CASES_A:
        if only and only not in name:
            continue
        r = exchange(gw_a, data, methods=kw.get("methods", ("POST" if data.startswith(b"POST") else "GET",) if
                     isinstance(data, bytes) else ("POST",)), nfinal=kw.get("nfinal", 1), timeout=kw.get("timeout", T),
                     half_close=kw.get("half_close", False))
        v, note = verdict(r)
        if kw.get("post_check") and v == "PASS" and not kw["post_check"](r):
            v, note = "FAIL", "second response not for the second request"
        fok, fr_ = followup_a(gw_a)
        if not fok:
            v, note = "FAIL", (note + "; " if note else "") + "FOLLOW-UP on new conn broken: %s %r" % (fr_.statuses, fr_.raw[:200])
        results.append(("A", name, sec, v, note, data, r))

    if gw_b:
        define_fake()
        define_b()
        fake = Fake(fake_addr)
        time.sleep(0.1)
        for name, sec, case, verdict, method, ver, kw in CASES_B:
            if only and only not in name:
                continue
            fake.close_idle()
            # flush: make sure no pooled upstream conn still holds stray bytes from an earlier case
            for k in range(8):
                t = "/r/ok?flush=%d" % k
                if body0(exchange(gw_b, req(target=t), linger=0, timeout=1)) == ("OK:" + t).encode():
                    break
            fake.close_idle()
            if kw.get("stale"):
                exchange(gw_b, req(target="/r/ok?warm"), linger=0)
                time.sleep(0.1)
                fake.close_idle()
                time.sleep(0.3)
            first_req = req(method, "/r/" + case, ver=ver, headers=kw.get("headers", ("Host: x",)))
            if method == "POST":
                first_req = req(method, "/r/" + case, ver=ver, headers=["Host: x", "Content-Length: 5"], body=b"hello")
            parts = first_req
            methods = (method,)
            nfinal = 1
            if kw.get("pipeline"):
                parts = first_req + req(target="/r/ok?pipelined")
                methods = (method, "GET")
                nfinal = 2
            r = exchange(gw_b, parts, methods=methods, nfinal=nfinal, timeout=kw.get("timeout", T))
            v, note = verdict(r)
            if kw.get("settle"):
                time.sleep(kw["settle"])
            time.sleep(0.15)
            if kw.get("upstream_close") and not fake.peer_closed(case) and v != "FAIL":
                v = "WARN" if v == "PASS" else v
                note = (note + "; " if note else "") + "gateway did not close the upstream connection (9112 6.3(5))"
            ok, bad = followup_b(gw_b)
            if not ok:
                v, note = "FAIL", (note + "; " if note else "") + "FOLLOW-UP requests got: %s" % bad
            results.append(("B", name, sec, v, note, parts, r))
        fake.stop = True

    counts = {}
    for side, name, sec, v, note, data, r in results:
        counts[v] = counts.get(v, 0) + 1
        line = "%-4s %s %-30s closed=%-5s statuses=%s smuggled=%s %.1fs  [%s] %s" % (
            v, side, name, r.closed, r.statuses[:4], r.smuggled, r.elapsed, sec, note)
        print(line)
        if VERBOSE or v != "PASS":
            print("       sent: " + show(data if isinstance(data, bytes) else b"".join(d for d, _ in data), 300))
            print("       got : " + show(r.raw, 500))
    print("SUMMARY", counts)
    return 1 if counts.get("FAIL") else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
