//! The HTTP/1.1 server side of the gateway, over real loopback sockets against the real
//! binary: keep-alive, pipelining, bodies, limits, framing ambiguity, timeouts, shards,
//! stats, metrics, drain, config errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const GET: &str = "GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn keep_alive_reuses_one_connection() {
    let gw = gateway("keepalive", "0", "");
    let mut r = Reader::new(gw.connect());
    for _ in 0..5 {
        r.send(GET.as_bytes());
        let resp = r.response(false).expect("response");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["status"], "ok");
        assert!(resp.header("date").is_some());
        assert!(resp.header("connection").is_none());
    }
    let s = gw.stats_until(|s| s["total"]["requests"] == 5);
    // One connection for the requests, one from the harness probing the port.
    assert_eq!(s["total"]["connections_total"], 2, "{s}");
    assert_eq!(s["total"]["requests"], 5);
}

#[test]
fn http10_closes_unless_keep_alive() {
    let gw = gateway("http10", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let resp = r.response(false).expect("response");
    assert_eq!(resp.status, 200);
    // A 1.0 client keeps the connection only when the response says so (RFC 9112 C.2.2),
    // for the gateway's own answers as for proxied ones.
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    r.send(b"GET /missing HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let resp = r.response(false).expect("404");
    assert_eq!(
        (resp.status, resp.header("connection")),
        (404, Some("keep-alive"))
    );
    r.send(b"GET /v1/mock/bytes?size=3 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let resp = r.response(false).expect("proxied");
    assert_eq!(
        (resp.status, resp.header("connection")),
        (200, Some("keep-alive"))
    );
    r.send(b"GET /health HTTP/1.0\r\n\r\n");
    let resp = r.response(false).expect("response");
    assert_eq!(
        (resp.status, resp.header("connection")),
        (200, Some("close"))
    );
    assert!(r.closed_within(Duration::from_secs(3)));
    // An HTTP/1.1 client is told nothing: its connections persist by default.
    let mut r = Reader::new(gw.connect());
    r.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.response(false).expect("1.1").header("connection"), None);
}

#[test]
fn dot_segments_never_reach_a_provider() {
    // `/v1/mock/../x` would leave the route's prefix at a provider that resolves it.
    let gw = gateway("dots", "0", "");
    for target in [
        "/v1/mock/../headers",
        "/v1/mock/%2e%2e/headers",
        "/v1/mock/./headers",
    ] {
        let resp = request(
            gw.port,
            &format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(resp.status, 400, "{target}");
        assert!(
            resp.text().contains("dot-segment"),
            "{target}: {}",
            resp.text()
        );
    }
    let ok = request(
        gw.port,
        "GET /v1/mock/headers?p=../.. HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(ok.status, 200);
    // A prefix rewrite that would join one (prefix `/stt`, rewrite `/v1/`: `/stt../x`
    // becomes `/v1/../x`) is refused too.
    let port = free_port();
    let _mock = mock_provider("dots-rewrite", port);
    wait_port(port, Duration::from_secs(10));
    let gw = gateway(
        "dots-rewrite",
        "0",
        &format!(
            "[[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{port}\"]\n\
             [[routes]]\nprefix = \"/stt\"\nprovider = \"m\"\nrewrite = \"/v1/\"\n"
        ),
    );
    let resp = request(
        gw.port,
        "GET /stt../headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    let resp = request(
        gw.port,
        "GET /sttx HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    // Reaches the provider (the mock's own 404 for `/v1/x`), not the gateway's no-route 404.
    assert_eq!(resp.status, 404);
    assert!(
        resp.text().contains("no such mock endpoint"),
        "{}",
        resp.text()
    );
}

#[test]
fn pipelined_requests_answered_in_order() {
    let gw = gateway("pipeline", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET /missing HTTP/1.1\r\nHost: t\r\n\r\nHEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let a = r.response(false).expect("1");
    let b = r.response(false).expect("2");
    let c = r.response(true).expect("3");
    assert_eq!((a.status, b.status, c.status), (200, 404, 200));
    assert_eq!(b.json()["error"]["code"], "not_found");
    assert_eq!(c.header("content-length"), Some("15"));
    r.send(GET.as_bytes());
    assert_eq!(r.response(false).expect("4").status, 200);
}

#[test]
fn content_length_and_chunked_bodies_keep_framing() {
    let gw = gateway("bodies", "0", "");
    let mut r = Reader::new(gw.connect());
    // A Content-Length body to a local endpoint is read and discarded.
    r.send(b"POST /nothing HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(r.response(false).expect("cl").status, 404);
    // A chunked body split over several writes, with an extension and a trailer.
    r.send(b"POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhel");
    std::thread::sleep(Duration::from_millis(50));
    r.send(b"lo\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n");
    let resp = r.response(false).expect("chunked");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
    // The connection is still in sync.
    r.send(GET.as_bytes());
    assert_eq!(r.response(false).expect("after").status, 200);
}

#[test]
fn expect_continue_on_local_answer_closes() {
    let gw = gateway("expect", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(
        b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let resp = r.response(false).expect("final");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(r.closed_within(Duration::from_secs(3)));
}

#[test]
fn oversized_head_gets_431_and_close() {
    let gw = gateway(
        "oversize",
        "0",
        "[http]\nmax_head_bytes = 2048\nmax_headers = 8\n",
    );
    let mut r = Reader::new(gw.connect());
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4000)
    );
    r.send(big.as_bytes());
    let resp = r.response(false).expect("431");
    assert_eq!(resp.status, 431);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(r.closed_within(Duration::from_secs(3)));

    let many = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-A: 1\r\n".repeat(9)
    );
    let resp = request(gw.port, &many);
    assert_eq!(resp.status, 431);

    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "u".repeat(3000));
    assert_eq!(request(gw.port, &long_uri).status, 414);
}

#[test]
fn ambiguous_framing_gets_400_and_close() {
    let gw = gateway("ambiguous", "0", "");
    let cases = [
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 4\r\n\r\nabcd",
        "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : t\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: t\r\n folded\r\n\r\n",
    ];
    for raw in cases {
        let mut r = Reader::new(gw.connect());
        r.send(raw.as_bytes());
        let resp = r
            .response(false)
            .unwrap_or_else(|| panic!("no response to {raw:?}"));
        assert_eq!(resp.status, 400, "{raw:?}");
        assert_eq!(resp.header("connection"), Some("close"), "{raw:?}");
        assert_eq!(resp.json()["error"]["status"], 400);
        // A smuggled second request after the ambiguous one must never be answered.
        r.send(GET.as_bytes());
        assert!(r.closed_within(Duration::from_secs(3)), "{raw:?}");
        assert!(
            r.response(false).is_none(),
            "{raw:?} was followed by a response"
        );
    }
    let s = gw.stats_until(|s| s["total"]["parse_errors"] == cases.len());
    assert_eq!(s["total"]["parse_errors"], cases.len());
    assert_eq!(s["total"]["responses"]["4xx"], cases.len());
}

#[test]
fn unsupported_coding_and_version() {
    let gw = gateway("codings", "0", "");
    let gz = "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    assert_eq!(request(gw.port, gz).status, 501);
    assert_eq!(
        request(gw.port, "GET / HTTP/2.0\r\nHost: t\r\n\r\n").status,
        505
    );
    assert_eq!(
        request(gw.port, "GET / HTTP/1.1\r\nHost: t\r\nExpect: x\r\n\r\n").status,
        417
    );
    // `OPTIONS *` is about the server, answered by the gateway itself.
    let resp = request(gw.port, "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(resp.header("allow").is_some_and(|a| a.contains("OPTIONS")));
}

#[test]
fn slow_head_is_closed_after_the_timeout() {
    let gw = gateway("slowhead", "0", "[http]\nhead_timeout_ms = 500\n");
    let mut r = Reader::new(gw.connect());
    let start = Instant::now();
    r.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    // Keep dribbling bytes: the head timeout counts from the first byte, not per read.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        let _ = r.stream.write_all(b"X-Slow: 1\r\n");
    }
    let resp = r.response(false).expect("408");
    assert_eq!(resp.status, 408);
    assert!(r.closed_within(Duration::from_secs(3)));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let s = gw.stats_until(|s| s["total"]["timeouts"]["head"] == 1);
    assert_eq!(s["total"]["timeouts"]["head"], 1);
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let gw = gateway("idle", "0", "[http]\nidle_timeout_ms = 300\n");
    let mut r = Reader::new(gw.connect());
    r.send(GET.as_bytes());
    assert_eq!(r.response(false).expect("ok").status, 200);
    assert!(r.closed_within(Duration::from_secs(3)));
}

#[test]
fn two_shards_share_the_load_and_stats_add_up() {
    let gw = gateway("shards", "0-1", "");
    let mut sent = 0u64;
    for _ in 0..64 {
        let mut r = Reader::new(gw.connect());
        for _ in 0..3 {
            r.send(GET.as_bytes());
            assert_eq!(r.response(false).expect("ok").status, 200);
            sent += 1;
        }
    }
    let s = gw.stats_until(|s| s["total"]["requests"] == sent);
    assert_eq!(s["total"]["requests"], sent, "{s}");
    assert_eq!(s["total"]["responses"]["2xx"], sent);
    assert_eq!(
        s["total"]["connections_total"],
        64 + 1,
        "64 + the harness's port probe"
    );
    let shards = s["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    let per: Vec<u64> = shards
        .iter()
        .map(|x| x["requests"].as_u64().unwrap_or(0))
        .collect();
    assert!(per.iter().all(|&n| n > 0), "SO_REUSEPORT spread: {per:?}");
    assert_eq!(per.iter().sum::<u64>(), sent);
    assert!(s["total"]["latency_us"]["count"].as_u64().unwrap_or(0) == sent);
    // Each shard's thread is pinned to its core.
    for sh in shards {
        let tid = sh["tid"].as_i64().expect("tid");
        let core = sh["core"].as_u64().expect("core");
        let status = std::fs::read_to_string(format!("/proc/{}/task/{tid}/status", gw.proc.pid()))
            .expect("task status");
        let allowed = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .expect("cpus");
        assert_eq!(
            allowed.split_whitespace().nth(1),
            Some(core.to_string().as_str()),
            "{allowed}"
        );
    }
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let gw = gateway("metrics", "0", "");
    for _ in 0..3 {
        assert_eq!(request(gw.port, GET).status, 200);
    }
    gw.stats_until(|s| s["total"]["requests"] == 3);
    let text = admin_get(gw.admin, "/metrics");
    let mut families = std::collections::HashMap::new();
    let mut samples = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (name, kind) = (it.next().expect("name"), it.next().expect("kind"));
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            families.contains_key(name) || families.contains_key(base),
            "sample without TYPE: {line}"
        );
        samples += 1;
    }
    assert!(samples > 20);
    assert!(
        text.contains("coregate_requests_total{shard=\"0\",core=\"0\"} 3"),
        "{text}"
    );
    assert!(text.contains("coregate_request_duration_seconds_count{shard=\"0\",core=\"0\"} 3"));
}

#[test]
fn garbage_never_kills_the_gateway() {
    let gw = gateway("garbage", "0-1", "");
    let mut seed: u64 = 0x1234_5678;
    for i in 0..200 {
        let mut s = TcpStream::connect(("127.0.0.1", gw.port)).expect("connect");
        let len = 1 + (i * 37) % 3000;
        let mut junk = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            junk.push(seed as u8);
        }
        if i % 3 == 0 {
            junk.splice(
                0..0,
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .iter()
                    .copied(),
            );
        }
        let _ = s.write_all(&junk);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(request(gw.port, GET).status, 200);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let mut gw = gateway("drain", "0", "");
    // A request whose body is still arriving when the signal comes.
    let mut r = Reader::new(gw.connect());
    r.send(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello");
    std::thread::sleep(Duration::from_millis(200));
    // A proxied request in flight (the embedded mock answers after 800 ms).
    let mut slow = Reader::new(gw.connect());
    slow.send(b"GET /v1/mock/bytes?size=10&latency_ms=800 HTTP/1.1\r\nHost: t\r\n\r\n");
    std::thread::sleep(Duration::from_millis(100));
    gw.proc.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    // New connections are refused once the listener is closed.
    assert!(TcpStream::connect(("127.0.0.1", gw.port)).is_err());
    r.send(b"world");
    let resp = r
        .response(false)
        .expect("in-flight local request completes");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("connection"), Some("close"));
    let resp = slow
        .response(false)
        .expect("in-flight proxied request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), 10);
    assert_eq!(
        gw.proc.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        gw.proc.log_text()
    );
}

#[test]
fn config_errors_name_file_and_key() {
    let dir = tmpdir("badconfig");
    for (toml, key) in [
        ("[server]\nbacklog = \"lots\"\n", "server.backlog"),
        ("[server]\nlisten = \"not an address\"\n", "server.listen"),
        ("[http]\nmax_headers = 0\n", "http.max_headers"),
        ("[server]\ncores = \"999\"\n", "server.cores"),
        (
            "[[providers]]\nname = \"p\"\nendpoints = []\n",
            "providers[0].endpoints",
        ),
        (
            "[[routes]]\nprefix = \"/x\"\nprovider = \"nope\"\n",
            "routes[0].provider",
        ),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, toml).expect("write");
        for cmd in ["check", "serve"] {
            let args: Vec<&str> = if cmd == "check" {
                vec!["check", path.to_str().expect("p")]
            } else {
                vec!["serve", "--config", path.to_str().expect("p")]
            };
            let out = std::process::Command::new(BIN)
                .args(&args)
                .output()
                .expect("run");
            assert!(!out.status.success(), "{cmd} accepted {toml:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("bad.toml") && err.contains(key),
                "{cmd} {toml:?}: {err}"
            );
        }
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, "[server]\nbacklog = 100\n").expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", good.to_str().expect("p")])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("backlog = 100") && text.contains("max_head_bytes = 16384"),
        "{text}"
    );
}
