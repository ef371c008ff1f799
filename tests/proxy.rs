//! The proxy path against real processes: the gateway, the mock provider (embedded or as
//! its own process), raw TCP upstreams made in the test, and curl / Python / ab as clients
//! (a test whose client is not installed skips: see common::tool_available).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn provider_toml(name: &str, endpoint: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nendpoints = [\"{endpoint}\"]\n{extra}\n\
         [[routes]]\nprefix = \"{prefix}\"\nprovider = \"{name}\"\nrewrite = \"/\"\n"
    )
}

/// A mock provider process (on a free port) and a gateway on core 0 routing `/p/` to it as
/// provider "m"; returns both processes and the mock's port.
fn gateway_to_mock(name: &str, extra: &str) -> (Proc, Gateway, u16) {
    let mp = free_port();
    let mock = mock_provider(name, mp);
    let gw = gateway(
        name,
        "0",
        &provider_toml("m", &format!("127.0.0.1:{mp}"), "/p/", extra),
    );
    (mock, gw, mp)
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: client.example\r\n\r\n")
}

fn provider<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &s["total"]["providers"][name]
}

/// Provider "m"'s pool retries and new connections once it has seen `requests` requests.
fn retries_and_new_connections(gw: &Gateway, requests: u64) -> (u64, u64) {
    let s = gw.stats_until(|s| provider(s, "m")["requests"] == requests);
    let pool = &provider(&s, "m")["pool"];
    let n = |k: &str| pool[k].as_u64().unwrap_or(u64::MAX);
    (n("retries"), n("new_connections"))
}

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
fn provider_killed_mid_response_truncates_and_closes() {
    let (mut mock, gw, _) = gateway_to_mock("killed", "");
    let mut s = gw.connect();
    s.write_all(get("/p/tts?frames=100&frame_interval_ms=50").as_bytes())
        .expect("send");
    let mut first = [0u8; 512];
    let n = s.read(&mut first).expect("head arrives");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let _ = mock.child.kill();
    let start = Instant::now();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.read_to_end(&mut rest);
    assert!(start.elapsed() < Duration::from_secs(5), "client hung");
    let all = [&first[..n], &rest[..]].concat();
    assert!(
        !all.ends_with(b"0\r\n\r\n"),
        "a truncated response must not look complete"
    );
    // The reset knob does the same without killing the process.
    drop(mock);
    let (_mock2, gw2, _) = gateway_to_mock("killed2", "");
    let mut r = Reader::new(gw2.connect());
    r.send(get("/p/bytes?size=100000&reset=after_head").as_bytes());
    assert!(r.response(false).is_none_or(|x| x.body.len() < 100000));
    assert!(r.closed_within(Duration::from_secs(5)));
    let r2 = request(gw2.port, &get("/p/bytes?size=10&reset=before_head"));
    assert_eq!(r2.status, 502);
    assert_eq!(r2.json()["error"]["provider"], "m");
}

#[test]
fn idle_pooled_connection_closed_by_the_provider_is_not_reused() {
    let (mock, gw, mp) = gateway_to_mock("stale", "");
    let mut r = Reader::new(gw.connect());
    r.send(get("/p/bytes?size=10").as_bytes());
    assert_eq!(r.response(false).expect("first").status, 200);
    drop(mock); // the provider goes away: the pooled connection gets its FIN
    wait_port_closed(mp, Duration::from_secs(5));
    let _mock = mock_provider("stale-again", mp);
    // A request with a body cannot be replayed, so this only works if the dead connection
    // is noticed before it is used.
    r.send(b"POST /p/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    let resp = r.response(false).expect("second");
    assert_eq!((resp.status, resp.text()), (200, "hello".to_string()));
    assert_eq!(retries_and_new_connections(&gw, 2), (0, 2));
}

/// A provider on a raw socket. `conns[i]` scripts the i-th accepted connection: for each
/// request read on it, the bytes to answer with (`|` marks a 150 ms pause between writes),
/// or `None` to close instead.
fn scripted_upstream(conns: Vec<Vec<Option<&'static [u8]>>>) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        for answers in conns {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            for answer in answers {
                let mut buf = [0u8; 4096];
                if matches!(s.read(&mut buf), Ok(0) | Err(_)) {
                    break;
                }
                match answer {
                    Some(bytes) => {
                        // Several writes (the head, then late extra bytes) are split by a pause.
                        for (i, part) in bytes.split(|&b| b == b'|').enumerate() {
                            if i > 0 {
                                std::thread::sleep(Duration::from_millis(150));
                            }
                            let _ = s.write_all(part);
                        }
                    }
                    None => break,
                }
            }
        }
    });
    (port, h)
}

#[test]
fn a_reused_connection_that_fails_before_any_byte_is_retried_once() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // The first connection answers once, then closes on the second request without a
    // byte (as a provider does when its keep-alive timer fires just then).
    const DATED: &[u8] =
        b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 2\r\n\r\nok";
    let (up, h) = scripted_upstream(vec![vec![Some(OK), None], vec![Some(DATED)]]);
    let gw = gateway(
        "retry",
        "0",
        &provider_toml("m", &format!("127.0.0.1:{up}"), "/p/", ""),
    );
    let mut r = Reader::new(gw.connect());
    let mut dates = Vec::new();
    for _ in 0..2 {
        r.send(get("/p/x").as_bytes());
        let resp = r.response(false).expect("response");
        assert_eq!((resp.status, resp.text()), (200, "ok".to_string()));
        let d: Vec<_> = resp
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("date"))
            .collect();
        assert_eq!(d.len(), 1, "one Date: {:?}", resp.headers);
        dates.push(d[0].1.clone());
    }
    // The gateway adds a Date the provider left out (RFC 9110 §6.6.1) and keeps its own.
    assert!(dates[0].ends_with(" GMT") && dates[0] != dates[1]);
    assert_eq!(dates[1], "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(retries_and_new_connections(&gw, 2), (1, 2));
    let _ = h.join();
}

#[test]
fn transfer_codings_other_than_chunked_are_kept() {
    const GZIP: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    // Close-delimited with chunked inside: relayed as it is (chunked may not be applied
    // twice), so the client reads it until close.
    const RAW: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nxyz";
    let (up, h) = scripted_upstream(vec![vec![Some(GZIP)], vec![Some(RAW)], vec![Some(GZIP)]]);
    let gw = gateway(
        "codings",
        "0",
        &provider_toml("m", &format!("127.0.0.1:{up}"), "/p/", ""),
    );
    // The raw bytes of one `Connection: close` exchange, as the client sees them.
    let raw_get = |path: &str| {
        let mut s = gw.connect();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw).into_owned()
    };
    let text = raw_get("/p/x");
    assert!(
        text.contains("\r\nTransfer-Encoding: gzip, chunked\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), "{text}");
    let text = raw_get("/p/y");
    assert!(
        text.contains("\r\nTransfer-Encoding: chunked, gzip\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nxyz"), "{text}");
    // An HTTP/1.0 client cannot be told about gzip: 502 rather than an unlabelled body.
    let resp = request(gw.port, "GET /p/z HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 502, "{}", resp.text());
    let _ = h.join();
}

#[test]
fn bytes_a_provider_sends_after_its_response_never_reach_another_request() {
    // After a complete response the provider sends a second, unasked-for response on the
    // same connection. Reusing that connection would give it to the next client.
    const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok|HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";
    const FRESH: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh";
    let (up, h) = scripted_upstream(vec![vec![Some(POISON)], vec![Some(FRESH)]]);
    let gw = gateway(
        "poison",
        "0",
        &provider_toml("m", &format!("127.0.0.1:{up}"), "/p/", ""),
    );
    let first = request(gw.port, &get("/p/a"));
    assert_eq!(first.text(), "ok");
    std::thread::sleep(Duration::from_millis(400));
    let second = request(gw.port, &get("/p/b"));
    assert_eq!((second.status, second.text()), (200, "fresh".to_string()));
    let _ = h.join();
}

#[test]
fn refused_is_502_and_the_client_connection_survives() {
    let dead = free_port();
    let gw = gateway(
        "refused",
        "0",
        &provider_toml("gone", &format!("127.0.0.1:{dead}"), "/p/", ""),
    );
    let mut r = Reader::new(gw.connect());
    r.send(b"POST /p/stt HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd");
    let resp = r.response(false).expect("502");
    assert_eq!(resp.status, 502);
    let e = resp.json();
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["provider"].as_str()),
        (Some("connect_refused"), Some("gone"))
    );
    r.send(get("/health").as_bytes());
    assert_eq!(r.response(false).expect("still open").status, 200);
    let s = gw.stats_until(|s| provider(s, "gone")["errors"]["connect_refused"] == 1);
    assert_eq!(provider(&s, "gone")["errors"]["connect_refused"], 1);
}

fn stalling_upstream(partial: &'static [u8]) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(partial);
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    (port, h)
}

#[test]
fn each_timeout_kind_is_504() {
    let mp = free_port();
    let _mock = mock_provider("timeouts", mp);
    // connect timeout: a listener whose accept queue is full drops our SYN.
    let full =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    full.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .expect("addr")
            .into(),
    )
    .expect("bind");
    full.listen(0).expect("listen");
    let full_addr = full.local_addr().expect("addr").as_socket().expect("inet");
    let _fillers: Vec<TcpStream> = (0..3)
        .filter_map(|_| TcpStream::connect_timeout(&full_addr, Duration::from_millis(300)).ok())
        .collect();
    let (stall_port, stall) = stalling_upstream(b"HTTP/1.1 200 OK\r\nContent-Le");
    let toml = [
        provider_toml(
            "head",
            &format!("127.0.0.1:{mp}"),
            "/head/",
            "response_head_timeout_ms = 300",
        ),
        provider_toml(
            "total",
            &format!("127.0.0.1:{mp}"),
            "/total/",
            "total_timeout_ms = 300",
        ),
        provider_toml(
            "conn",
            &full_addr.to_string(),
            "/conn/",
            "connect_timeout_ms = 300",
        ),
        provider_toml(
            "idle",
            &format!("127.0.0.1:{stall_port}"),
            "/idle/",
            "idle_read_timeout_ms = 300",
        ),
    ]
    .concat();
    let gw = gateway("timeouts", "0", &toml);
    for (path, code) in [
        ("/head/bytes?latency_ms=2000", "response_head_timeout"),
        ("/total/bytes?latency_ms=2000", "total_timeout"),
        ("/conn/bytes", "connect_timeout"),
        ("/idle/bytes", "idle_read_timeout"),
    ] {
        let start = Instant::now();
        let resp = request(gw.port, &get(path));
        assert_eq!(resp.status, 504, "{path}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], code, "{path}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            start.elapsed()
        );
    }
    let _ = stall.join();
}

#[test]
fn queue_at_the_pool_cap_then_503() {
    let extra = "pool_max_total = 1\npool_max_idle = 1\nqueue_max = 1\nqueue_timeout_ms = 300";
    let (_mock, gw, _) = gateway_to_mock("queue", extra);
    let port = gw.port;
    let clients: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50 * i));
                request(port, &get("/p/bytes?size=1&latency_ms=600"))
            })
        })
        .collect();
    let mut answers: Vec<(u16, String)> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .map(|r| {
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            (
                r.status,
                json["error"]["code"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    answers.sort_unstable();
    let codes = |v: &[(u16, String)]| {
        v.iter()
            .map(|(s, c)| format!("{s} {c}"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        codes(&answers),
        ["200 ", "503 queue_full", "503 queue_timeout"],
        "one holds the connection, one finds the queue full, one times out queued"
    );
    let resp = request(gw.port, &get("/p/bytes?size=1"));
    assert_eq!(resp.status, 200);
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
