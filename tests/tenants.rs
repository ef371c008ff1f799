//! Tenants: gateway keys in every carrier (removed before forwarding), 401/403, the
//! request rate, concurrency and session limits (429), shares that follow a skewed load
//! across shards, and the admin token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::tenants::*;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn keys_in_every_carrier_reach_no_provider() {
    let (gw, _mock) = tenants_gateway("tenants-carriers", "0", "");
    let seen = |path: &str, headers: &str| {
        let r = get(gw.port, path, headers);
        assert_eq!(r.status, 200, "{path} {headers}: {}", r.text());
        r.text()
    };
    let body = seen("/v1/mock/headers", "Authorization: Bearer sk-acme-1\r\n");
    assert!(
        !body.contains("sk-acme-1") && !body.contains("Authorization"),
        "{body}"
    );
    let body = seen("/v1/mock/headers", "x-api-key: sk-acme-1\r\n");
    assert!(!body.contains("sk-acme-1"), "{body}");
    let body = seen(
        "/v1/mock/headers",
        "Sec-WebSocket-Protocol: realtime, coregate-key.sk-acme-1\r\n",
    );
    assert!(!body.contains("sk-acme-1"), "{body}");
    assert!(
        body.contains("[\"Sec-WebSocket-Protocol\",\"realtime\"]"),
        "{body}"
    );
    let body = seen("/v1/mock/headers?a=1&access_token=sk-acme-1&b=2", "");
    assert!(!body.contains("sk-acme-1"), "{body}");
    assert!(body.contains("\"target\":\"/headers?a=1&b=2\""), "{body}");
    // Nor does the access log get the key: the query's is redacted there.
    let log = wait_lines(&gw.dir.join("access.jsonl"), 4);
    assert_eq!(log.lines().count(), 4, "{log}");
    assert!(!log.contains("sk-acme-1"), "{log}");
    assert!(log.contains("access_token=[redacted]"), "{log}");
    assert!(log.contains("\"tenant\":\"acme\""), "{log}");
}

#[test]
fn missing_unknown_and_forbidden_are_401_401_403_and_counted() {
    let (gw, _mock) = tenants_gateway("tenants-refusals", "0", "");
    let r = get(gw.port, "/v1/mock/headers", "");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "missing_key");
    // Every 401 names its scheme (RFC 9110 §11.6.1); a bad key is RFC 6750's invalid_token.
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"coregate\"")
    );
    let r = get(
        gw.port,
        "/v1/mock/headers",
        "Authorization: Bearer sk-nobody\r\n",
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "unknown_key");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"coregate\", error=\"invalid_token\"")
    );
    let r = get(gw.port, "/other/headers", "x-api-key: sk-lim-1\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "forbidden_route");
    assert_eq!(r.header("www-authenticate"), None);
    // acme may use every route; /health needs no key.
    assert_eq!(
        get(gw.port, "/other/headers", "x-api-key: sk-acme-1\r\n").status,
        200
    );
    assert_eq!(get(gw.port, "/health", "").status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let s = stats(&gw);
    let refused = &s["total"]["refused"];
    assert_eq!(refused["unauthorized"], 2, "{refused}");
    assert_eq!(refused["forbidden"], 1, "{refused}");
}

#[test]
fn the_admin_api_needs_its_token_except_health() {
    let (gw, _mock) = tenants_gateway("tenants-admin", "0", "");
    let body = admin_get(gw.admin, "/stats");
    assert!(body.contains("\"unauthorized\""), "{body}");
    assert!(admin_get(gw.admin, "/health").contains("\"ok\""));
    use std::io::{Read, Write};
    // The 401s carry their challenge: bare without a token, invalid_token with a wrong one.
    let raw = |auth: &str| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.admin)).unwrap();
        write!(s, "GET /stats HTTP/1.1\r\nHost: a\r\n{auth}\r\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let out = raw("");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.contains("\r\nWWW-Authenticate: Bearer realm=\"coregate\"\r\n"),
        "{out}"
    );
    let out = raw("Authorization: Bearer wrong\r\n");
    assert!(
        out.contains(
            "\r\nWWW-Authenticate: Bearer realm=\"coregate\", error=\"invalid_token\"\r\n"
        ),
        "{out}"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.admin)).unwrap();
    write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer admin-secret\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"tenants\""), "{out}");
}

#[test]
fn the_rate_limit_answers_429_with_retry_after() {
    let (gw, _mock) = tenants_gateway("tenants-rate", "0", "rate_per_s = 2\nburst = 3\n");
    let codes: Vec<u16> = (0..6)
        .map(|_| get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-lim-1\r\n").status)
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 3, "{codes:?}");
    let r = get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-lim-1\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Another tenant is not affected.
    assert_eq!(
        get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-acme-1\r\n").status,
        200
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-lim-1\r\n").status,
        200
    );
}

#[test]
fn concurrency_and_session_caps_answer_429() {
    let (gw, _mock) = tenants_gateway(
        "tenants-caps",
        "0",
        "max_concurrent = 2\nmax_sessions = 1\n",
    );
    let port = gw.port;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                get(
                    port,
                    "/v1/mock/bytes?size=1&latency_ms=800",
                    "x-api-key: sk-lim-1\r\n",
                )
                .status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = get(port, "/v1/mock/bytes?size=1", "x-api-key: sk-lim-1\r\n");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "too_many_concurrent_requests");
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    let ws = ws_handshake("/v1/mock/ws", "x-api-key: sk-lim-1\r\n");
    let mut first = Reader::new(gw.connect());
    first.send(ws.as_bytes());
    assert_eq!(first.response(false).unwrap().status, 101);
    let mut second = Reader::new(gw.connect());
    second.send(ws.as_bytes());
    let r = second.response(false).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "too_many_sessions");
}

/// Each shard's open client connections, from `/stats`.
fn open_per_shard(gw: &Gateway) -> Vec<u64> {
    let s = stats(gw);
    let shards = s["shards"].as_array().cloned().unwrap_or_default();
    shards
        .iter()
        .map(|s| s["connections_active"].as_u64().unwrap_or(0))
        .collect()
}

/// Two keep-alive connections to a two-shard gateway that SO_REUSEPORT put on different
/// shards: the second is opened again until `/stats` shows one open on each.
fn one_connection_per_shard(gw: &Gateway) -> (Reader, Reader) {
    let first = Reader::new(gw.connect());
    for _ in 0..40 {
        let second = Reader::new(gw.connect());
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            let open = open_per_shard(gw);
            if open == [1, 1] {
                return (first, second);
            }
            if open.iter().sum::<u64>() == 2 || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(second);
        let end = Instant::now() + Duration::from_secs(2);
        while open_per_shard(gw).iter().sum::<u64>() != 1 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!(
        "never had one connection on each shard: {:?}",
        open_per_shard(gw)
    );
}

/// Asks at `per_s` on `r` for `secs` (paced by the clock, not by the answers):
/// (asked, admitted).
fn offer(mut r: Reader, per_s: f64, secs: f64) -> (u64, u64) {
    let start = Instant::now();
    let (mut asked, mut ok) = (0u64, 0u64);
    while start.elapsed().as_secs_f64() < secs {
        let due = start + Duration::from_secs_f64(asked as f64 / per_s);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        r.send(b"GET /v1/mock/bytes?size=1 HTTP/1.1\r\nHost: t\r\nx-api-key: sk-lim-1\r\n\r\n");
        ok += u64::from(r.response(false).unwrap().status == 200);
        asked += 1;
    }
    (asked, ok)
}

#[test]
fn shares_follow_a_skewed_load_and_the_limit_holds_within_ten_percent() {
    let (rate, burst, secs) = (100.0, 10.0, 4.0);
    let (gw, _mock) = tenants_gateway(
        "tenants-skew",
        "0-1",
        &format!("rate_per_s = {rate}\nburst = {burst}\n"),
    );
    let (heavy, light) = one_connection_per_shard(&gw);
    // 90/10 across the two shards, both over their time window: 180/s and 20/s against 100/s.
    let heavy = std::thread::spawn(move || offer(heavy, 180.0, secs));
    let light = std::thread::spawn(move || offer(light, 20.0, secs));
    let ((_, heavy_ok), (light_asked, light_ok)) = (heavy.join().unwrap(), light.join().unwrap());
    let admitted = heavy_ok + light_ok;
    let expected = rate * secs + burst;
    eprintln!("admitted {heavy_ok} + {light_ok} of {light_asked}, expected {expected}");
    let error = (admitted as f64 - expected).abs() / expected;
    assert!(
        error <= 0.10,
        "admitted {admitted} ({heavy_ok} + {light_ok}), expected {expected} (off by {error:.3})"
    );
    // The light shard keeps what it asks: the heavy one does not take its share.
    assert!(
        light_ok as f64 >= 0.9 * light_asked as f64,
        "the light shard got {light_ok} of {light_asked}"
    );
}

#[test]
fn usage_is_metered_per_tenant_provider_and_route_and_resets() {
    let (gw, _mock) = tenants_gateway("tenants-usage", "0-1", "");
    for _ in 0..3 {
        let r = get(
            gw.port,
            "/v1/mock/bytes?size=100",
            "x-api-key: sk-acme-1\r\n",
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        get(gw.port, "/v1/mock/bytes?size=10", "x-api-key: sk-lim-1\r\n").status,
        200
    );
    // A WebSocket session: two masked text messages "hi", each echoed.
    let mut ws = Reader::new(gw.connect());
    ws.send(
        ws_handshake(
            "/v1/mock/ws",
            "Sec-WebSocket-Protocol: coregate-key.sk-acme-1\r\n",
        )
        .as_bytes(),
    );
    assert_eq!(ws.response(false).unwrap().status, 101);
    for _ in 0..2 {
        ws_echo(&mut ws);
    }
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)));

    let end = Instant::now() + Duration::from_secs(5);
    let usage = loop {
        let u = admin_json(&gw, "/usage");
        let all_in = u["tenants"]["acme"]["requests"] == 4 && u["tenants"]["lim"]["requests"] == 1;
        if all_in || Instant::now() > end {
            break u;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let acme = &usage["tenants"]["acme"];
    assert_eq!(acme["requests"], 4, "{usage}");
    let route = &acme["by_provider"]["mock"]["by_route"]["/v1/mock/"];
    assert_eq!(route["responses"]["2xx"], 3, "{route}");
    assert_eq!(route["responses"]["1xx"], 1, "{route}");
    assert!(route["bytes_down"].as_u64().unwrap() > 300, "{route}");
    let ws = &route["websocket"];
    assert_eq!(ws["sessions"], 1, "{ws}");
    assert_eq!(ws["messages_up"], 2, "{ws}");
    assert_eq!(ws["messages_down"], 2, "{ws}");
    assert_eq!(ws["payload_bytes_up"], 4, "{ws}");
    assert_eq!(usage["tenants"]["lim"]["requests"], 1, "{usage}");

    // A new window: what was counted is gone from /usage, and /metrics keeps the totals.
    admin_json(&gw, "/usage?reset=1");
    let after = admin_json(&gw, "/usage");
    assert_eq!(after["tenants"]["acme"]["requests"], 0, "{after}");
    assert_eq!(
        get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-acme-1\r\n").status,
        200
    );
    let end = Instant::now() + Duration::from_secs(5);
    while admin_json(&gw, "/usage")["tenants"]["acme"]["requests"] != 1 {
        assert!(
            Instant::now() < end,
            "the new window never counted the request"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn post(port: u16, path: &str, ct: &str, body: &[u8]) -> Response {
    let mut r = Reader::new(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    r.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nx-api-key: sk-acme-1\r\nContent-Type: {ct}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.send(body);
    r.response(false).unwrap()
}

#[test]
fn voice_units_come_from_wav_headers_json_text_and_audio_streams() {
    let (gw, _mock) = tenants_gateway("tenants-voice", "0", "");
    // 1.5 s of 8 kHz audio to the STT endpoint, 5 characters to the TTS one.
    assert_eq!(
        post(gw.port, "/v1/mock/stt", "audio/wav", &wav(8000, 24_000)).status,
        200
    );
    let tts = r#"{"model":"m","input":"héllo","voice":"v"}"#;
    assert_eq!(
        post(gw.port, "/v1/mock/tts", "application/json", tts.as_bytes()).status,
        200
    );
    // A Deepgram-style stream: 1,600 payload bytes of linear16 at 8 kHz is 0.1 s, and a
    // 20-byte text KeepAlive that is not audio.
    let mut ws = Reader::new(gw.connect());
    let path = "/v1/mock/ws?encoding=linear16&sample_rate=8000";
    ws.send(ws_handshake(path, "x-api-key: sk-acme-1\r\n").as_bytes());
    assert_eq!(ws.response(false).unwrap().status, 101);
    let mut frame = vec![0x82, 0xFE, 0x06, 0x40, 0, 0, 0, 0];
    frame.extend(std::iter::repeat_n(0u8, 1600));
    ws.send(&frame);
    let mut echo = vec![0u8; 4 + 1600];
    std::io::Read::read_exact(&mut ws.stream, &mut echo).unwrap();
    // A text KeepAlive between audio messages is control, not audio.
    let keep_alive = br#"{"type":"KeepAlive"}"#;
    let mut frame = vec![0x81, 0x80 | keep_alive.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(keep_alive);
    ws.send(&frame);
    let mut echo = vec![0u8; 2 + keep_alive.len()];
    std::io::Read::read_exact(&mut ws.stream, &mut echo).unwrap();
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)));

    let end = Instant::now() + Duration::from_secs(5);
    let route = loop {
        let u = admin_json(&gw, "/usage");
        let route = u["tenants"]["acme"]["by_provider"]["mock"]["by_route"]["/v1/mock/"].clone();
        if route["requests"] == 3 || Instant::now() > end {
            break route;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(route["audio_seconds"], 1.6, "{route}");
    assert_eq!(route["tts_characters"], 5, "{route}");
    assert_eq!(route["unmetered_bytes"], 0, "{route}");
    assert_eq!(route["websocket"]["payload_bytes_up"], 1620, "{route}");
    assert_eq!(route["websocket"]["messages_up"], 2, "{route}");

    // The export has one line per request or session, with the same figures.
    let export = wait_lines(&gw.dir.join("usage.jsonl"), 3);
    let lines: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{export}");
    assert_eq!(lines[0]["audio_seconds"], 1.5, "{export}");
    assert_eq!(lines[0]["tenant"], "acme");
    assert_eq!(lines[0]["provider"], "mock");
    assert_eq!(lines[0]["route"], "/v1/mock/");
    assert_eq!(lines[1]["tts_characters"], 5, "{export}");
    assert_eq!(lines[2]["status"], 101, "{export}");
    assert_eq!(lines[2]["audio_seconds"], 0.1, "{export}");
    assert_eq!(lines[2]["ws_payload_bytes_up"], 1620, "{export}");
    assert_eq!(lines[2]["request_id"].as_str().unwrap().len(), 32);
}

#[test]
fn realtime_usage_is_read_from_response_done_events() {
    let (gw, _mock) = tenants_gateway("tenants-realtime", "0", "");
    let mut ws = Reader::new(gw.connect());
    ws.send(ws_handshake("/v1/mock/ws", "x-api-key: sk-acme-1\r\n").as_bytes());
    assert_eq!(ws.response(false).unwrap().status, 101);
    // A masked `response.create`; the mock answers with an audio delta and response.done.
    let event = br#"{"type":"response.create","response":{"modalities":["audio"]}}"#;
    let key = [7u8, 1, 9, 4];
    let mut frame = vec![0x81, 0x80 | event.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(event.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    ws.send(&frame);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"response.done\"") {
        let mut buf = [0u8; 4096];
        let n = std::io::Read::read(&mut ws.stream, &mut buf).unwrap();
        assert!(n > 0, "closed before response.done");
        seen.extend_from_slice(&buf[..n]);
    }
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)));

    let end = Instant::now() + Duration::from_secs(5);
    let realtime = loop {
        let u = admin_json(&gw, "/usage");
        let r = u["tenants"]["acme"]["by_provider"]["mock"]["by_route"]["/v1/mock/"]["websocket"]
            ["realtime"]
            .clone();
        if r["responses"] == 1 || Instant::now() > end {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(realtime["responses"], 1, "{realtime}");
    assert_eq!(realtime["input_tokens"], 100, "{realtime}");
    assert_eq!(realtime["output_tokens"], 50, "{realtime}");
    assert_eq!(realtime["input_audio_tokens"], 60, "{realtime}");
    assert_eq!(realtime["output_audio_tokens"], 40, "{realtime}");
}
