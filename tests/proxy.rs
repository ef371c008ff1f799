//! The proxy path against real processes: the gateway, the mock provider (embedded or as
//! its own process) and curl / Python / ab as clients (a test whose client is not installed
//! skips: see common::tool_available). A provider that fails: tests/provider_failures.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::upstream::*;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn sequential_requests_reuse_one_provider_connection() {
    let (_mock, gw, _) = gateway_to_mock("reuse", "");
    for i in 0..20 {
        // Half on one client connection, half on fresh ones: the pool is per shard.
        let resp = request(gw.port, &get(&format!("/p/bytes?size={}", 100 + i)));
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), 100 + i);
    }
    // Responses are counted after the client has its bytes: wait for the last one.
    let s = gw.stats_until(|s| provider(s, "m")["responses"]["2xx"] == 20);
    let p = provider(&s, "m");
    assert_eq!(p["pool"]["new_connections"], 1, "{p}");
    assert_eq!(p["pool"]["hits"], 19);
    assert_eq!(p["responses"]["2xx"], 20);
    assert_eq!(p["pool"]["idle"], 1);
    assert!(p["ttfb_us"]["count"] == 20 && p["total_us"]["count"] == 20);
}

#[test]
fn concurrent_requests_on_one_shard() {
    let gw = gateway("concurrent", "0", "");
    let port = gw.port;
    let threads: Vec<_> = (0..40)
        .map(|t| {
            std::thread::spawn(move || {
                let mut r = Reader::new(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
                r.stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                for i in 0..10 {
                    r.send(
                        get(&format!(
                            "/v1/mock/bytes?size={}&latency_ms={}",
                            t * 10 + i,
                            i % 3
                        ))
                        .as_bytes(),
                    );
                    let resp = r.response(false).expect("response");
                    assert_eq!(resp.status, 200);
                    assert_eq!(resp.body.len(), t * 10 + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let s = gw.stats_until(|s| provider(s, "mock")["responses"]["2xx"] == 400);
    let p = provider(&s, "mock");
    assert_eq!(p["responses"]["2xx"], 400, "{p}");
    assert!(
        p["pool"]["new_connections"].as_u64().unwrap_or(0) <= 40,
        "{p}"
    );
}

#[test]
fn ten_mib_chunked_upload_and_download_with_bounded_memory() {
    let gw = gateway("bigbody", "0", "");
    let pid = gw.proc.pid();
    // Warm up, then measure RSS growth across the transfers.
    assert_eq!(request(gw.port, &get("/v1/mock/bytes?size=10")).status, 200);
    let before = rss_kib(pid);
    const SIZE: usize = 10 << 20;

    // Upload chunked to /echo and read the streamed echo at the same time.
    let s = gw.connect();
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        w.write_all(
            b"POST /v1/mock/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .expect("head");
        let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < SIZE {
            write!(w, "{:x}\r\n", block.len()).expect("size");
            w.write_all(&block).expect("data");
            w.write_all(b"\r\n").expect("crlf");
            sent += block.len();
        }
        w.write_all(b"0\r\n\r\n").expect("last");
    });
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut r = Reader::new(s);
    let resp = r.response(false).expect("echo response");
    writer.join().expect("writer");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), SIZE);
    assert!(resp
        .body
        .iter()
        .enumerate()
        .take(70000)
        .all(|(i, &b)| b == ((i % 65536) % 251) as u8));

    // The echo answered while the upload was still arriving, so that connection was
    // announced as closing. Download 10 MiB chunked from the provider on a new one.
    assert_eq!(resp.header("connection"), Some("close"));
    let mut r = Reader::new(gw.connect());
    r.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    r.send(get(&format!("/v1/mock/bytes?size={SIZE}&chunked=1")).as_bytes());
    let resp = r.response(false).expect("download");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), SIZE);
    let after = rss_kib(pid);
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn head_204_304_and_close_delimited_framing() {
    let gw = gateway("framing", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(b"HEAD /v1/mock/bytes?size=100 HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = r.response(true).expect("head");
    assert_eq!(
        (resp.status, resp.header("content-length")),
        (200, Some("100"))
    );
    for status in [204, 304] {
        r.send(get(&format!("/v1/mock/bytes?size=50&status={status}")).as_bytes());
        let resp = r.response(false).expect("no-body status");
        assert_eq!(resp.status, status);
        assert!(resp.header("transfer-encoding").is_none());
    }
    // A close-delimited provider response becomes chunked for an HTTP/1.1 client...
    r.send(get("/v1/mock/bytes?size=5000&until_close=1").as_bytes());
    let resp = r.response(false).expect("until close");
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), 5000);
    // ...and the client connection stays in sync after all of the above.
    r.send(get("/health").as_bytes());
    assert_eq!(r.response(false).expect("health").status, 200);
    // An HTTP/1.0 client gets it close-delimited.
    let mut r = Reader::new(gw.connect());
    r.send(b"GET /v1/mock/bytes?size=3000&until_close=1 HTTP/1.0\r\n\r\n");
    let resp = r.response(false).expect("1.0");
    assert!(resp.header("transfer-encoding").is_none());
    assert_eq!(resp.body.len(), 3000);
}

#[test]
fn streamed_responses_reach_the_client_as_they_are_produced() {
    let gw = gateway("streaming", "0", "");
    // TTS: four frames 250 ms apart must arrive spread out, not together at the end.
    let mut s = gw.connect();
    s.write_all(
        b"POST /v1/mock/tts?frames=4&frame_interval_ms=250 HTTP/1.1\r\nHost: t\r\n\
          Content-Length: 5\r\n\r\nhello",
    )
    .expect("send");
    let started = Instant::now();
    let (mut first, mut raw) = (None, Vec::new());
    let mut buf = [0u8; 65536];
    while !raw.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        raw.extend_from_slice(&buf[..n]);
        if first.is_none() && raw.windows(4).any(|w| w == b"\r\n\r\n") {
            first = Some(started.elapsed());
        }
    }
    let (first, last) = (first.expect("head"), started.elapsed());
    assert!(
        last >= first + Duration::from_millis(500),
        "first bytes at {first:?}, end at {last:?}: the frames were held back"
    );
    // Echo, full duplex: the first chunk comes back before the client sends the rest.
    let mut r = Reader::new(gw.connect());
    r.send(b"POST /v1/mock/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = r.stream.read(&mut buf).expect("echo before the body ended");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    r.send(b"0\r\n\r\n");
}

#[test]
fn interim_1xx_responses_are_relayed_to_http11_clients_only() {
    let gw = gateway("early-hints", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(get("/v1/mock/bytes?size=10&early_hints=1").as_bytes());
    let hints = r.response(false).expect("103");
    assert_eq!(hints.status, 103);
    assert_eq!(hints.header("link"), Some("</voices/en.json>; rel=preload"));
    assert!(hints.header("via").is_some_and(|v| v.contains("coregate")));
    let last = r.response(false).expect("final");
    assert_eq!((last.status, last.body.len()), (200, 10));
    // The connection stays in sync after the interim response.
    r.send(get("/health").as_bytes());
    assert_eq!(r.response(false).expect("health").status, 200);
    // An HTTP/1.0 client never sees a 1xx (RFC 9110 §15.2).
    let mut r = Reader::new(gw.connect());
    r.send(b"GET /v1/mock/bytes?size=10&early_hints=1 HTTP/1.0\r\n\r\n");
    let resp = r.response(false).expect("1.0 final");
    assert_eq!((resp.status, resp.body.len()), (200, 10));
}

#[test]
fn expect_100_continue_gets_exactly_one_100_before_the_body() {
    // The mock provider, as an origin, answers the expectation before it reads the body
    // (RFC 9110 §10.1.1).
    let port = free_port();
    let _mock = mock_provider("expect", port);
    wait_port(port, Duration::from_secs(10));
    let expect =
        "POST /stt HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
    let mut r = Reader::new(TcpStream::connect(("127.0.0.1", port)).expect("connect mock"));
    r.send(expect.as_bytes());
    assert_eq!(r.response(false).expect("100 from the mock").status, 100);
    r.send(b"hello");
    assert_eq!(r.response(false).expect("final").json()["bytes"], 5);
    // Through the gateway the client sees exactly one 100 (the gateway's own, sent once a
    // provider connection is ready; the expectation is not forwarded), then the answer.
    let gw = gateway("expect", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(expect.replace("/stt", "/v1/mock/stt").as_bytes());
    assert_eq!(r.response(false).expect("100").status, 100);
    r.send(b"hello");
    let last = r.response(false).expect("final");
    assert_eq!((last.status, last.json()["bytes"].as_u64()), (200, Some(5)));
    r.send(get("/health").as_bytes());
    assert_eq!(r.response(false).expect("health").status, 200);
}

#[test]
fn the_mock_answers_http10_clients_close_delimited() {
    let port = free_port();
    let _mock = mock_provider("http10", port);
    wait_port(port, Duration::from_secs(10));
    // An HTTP/1.0 client gets no chunked coding (a TTS stream is close-delimited) and a
    // closed connection.
    let mut r = Reader::new(TcpStream::connect(("127.0.0.1", port)).expect("connect mock"));
    r.send(b"POST /tts?frames=3&frame_bytes=10 HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
    let mut raw = Vec::new();
    r.stream.read_to_end(&mut raw).expect("read to close");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
    assert!(text.contains("Connection: close"), "{text}");
    let body_at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end")
        + 4;
    assert_eq!(
        raw.len() - body_at,
        30,
        "three 10-byte frames until close: {text}"
    );
}

#[test]
fn forwarded_headers_and_hop_by_hop_removal() {
    let gw = gateway("headers", "0", "[[providers]]\nname = \"m\"\nendpoints = [\"MOCK\"]\nhost = \"provider.example\"\n\
         [[routes]]\nprefix = \"/h/\"\nprovider = \"m\"\nrewrite = \"/\"\nadd_headers = { \"X-Api-Key\" = \"secret\" }\nremove_headers = [\"Cookie\"]\n"
        .replace("MOCK", &format!("127.0.0.1:{}", 1)).as_str());
    drop(gw);
    let mp = free_port();
    let _mock = mock_provider("headers", mp);
    let toml = format!(
        "[[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{mp}\"]\nhost = \"provider.example\"\n\
         [[routes]]\nprefix = \"/h/\"\nprovider = \"m\"\nrewrite = \"/\"\n\
         add_headers = {{ \"X-Api-Key\" = \"secret\" }}\nremove_headers = [\"Cookie\"]\n"
    );
    let gw = gateway("headers2", "0", &toml);
    let raw = "GET /h/headers?q=1 HTTP/1.1\r\nHost: client.example\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\
               Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: x\r\nCookie: a=b\r\n\
               X-Forwarded-For: 10.1.2.3\r\nX-Api-Key: client-supplied\r\nX-Keep: yes\r\n\r\n";
    let resp = request(gw.port, raw);
    assert_eq!(resp.status, 200);
    assert!(resp.header("via").is_some_and(|v| v.contains("coregate")));
    let seen = resp.json();
    assert_eq!(seen["target"], "/headers?q=1");
    let fields: Vec<(String, String)> =
        serde_json::from_value(seen["headers"].clone()).expect("fields");
    let get = |n: &str| {
        fields
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("host"), vec!["provider.example"]);
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "cookie",
    ] {
        assert!(get(hop).is_empty(), "{hop} was forwarded: {fields:?}");
    }
    assert_eq!(get("x-forwarded-for"), vec!["10.1.2.3, 127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), vec!["http"]);
    assert_eq!(get("x-api-key"), vec!["secret"]);
    assert_eq!(get("x-keep"), vec!["yes"]);
    assert!(get("via")[0].contains("1.1 coregate"));
}

#[test]
fn apache_bench_keeps_http10_connections_alive() {
    // ab speaks HTTP/1.0 and keeps a connection only when a response says keep-alive.
    if !require_tool("ab") {
        return;
    }
    let gw = gateway("ab", "0", "");
    for path in ["/health", "/v1/mock/api/small"] {
        let out = std::process::Command::new("ab")
            .args(["-k", "-n", "2000", "-c", "20", "-s", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", gw.port))
            .output()
            .expect("ab (apache2-utils)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in [
            "Complete requests:      2000",
            "Failed requests:        0",
            "Keep-Alive requests:    2000",
        ] {
            assert!(text.contains(line), "{path}: no '{line}' in\n{text}");
        }
    }
    // 20 connections per run (plus the harness's port probe), not one per request.
    let s = gw.stats_until(|s| s["total"]["requests"] == 4000);
    let conns = s["total"]["connections_total"].as_u64().unwrap_or(u64::MAX);
    assert!(
        conns <= 41,
        "{conns} connections for 4,000 keep-alive requests"
    );
}

#[test]
fn curl_clients_through_the_gateway() {
    if !require_tool("curl") {
        return;
    }
    let gw = gateway("curl", "0", "");
    let base = format!("http://127.0.0.1:{}", gw.port);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--fail",
            "-X",
            "POST",
            "--data-binary",
            "hello from curl",
            &format!("{base}/v1/mock/tts?frames=5&frame_bytes=320&frame_interval_ms=5"),
        ])
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 5 * 320);
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            "@Cargo.toml",
            &format!("{base}/v1/mock/stt"),
        ])
        .output()
        .expect("curl");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["transcript"]
        .as_str()
        .is_some_and(|t| t.starts_with("mock transcript")));
}

#[test]
fn a_python_client_through_the_gateway() {
    if !require_tool("python3") {
        return;
    }
    let gw = gateway("python", "0", "");
    let py = format!(
        "import http.client\nc = http.client.HTTPConnection('127.0.0.1', {})\n\
         for i in range(3):\n    c.request('POST', '/v1/mock/echo', body=b'x' * (1000 * (i + 1)), headers={{'Content-Type': 'application/octet-stream'}})\n\
         \x20   r = c.getresponse(); b = r.read(); assert r.status == 200 and len(b) == 1000 * (i + 1), (r.status, len(b))\n\
         c.request('GET', '/v1/mock/bytes?size=70000&chunked=1'); r = c.getresponse(); assert len(r.read()) == 70000\n\
         print('ok')\n",
        gw.port
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &py])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
