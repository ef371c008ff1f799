//! A provider that fails, against a real gateway: killed mid-response, closing pooled
//! connections, failing a reused connection, sending bytes after its response, refusing,
//! stalling (each timeout kind) and a full pool (raw TCP upstreams made in the test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::upstream::*;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
