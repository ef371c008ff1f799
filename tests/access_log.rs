//! The access log and the request id: one line per request (JSON or combined), the id
//! taken from the client when well formed and otherwise made, sent to the provider and
//! returned; `traceparent` passed through; sampling; SIGUSR1 reopens the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// The log's lines once it has at least `n` (shards hand them over every 100 ms).
fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_lines(path, n).lines().map(str::to_string).collect()
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn json_lines_carry_the_request_id_the_provider_and_the_client_saw() {
    let dir = tmpdir("access-json-files");
    let log = dir.join("access.jsonl");
    let gw = gateway(
        "access-json",
        "0",
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    );
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = request(
        gw.port,
        &format!(
            "GET /v1/mock/headers HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\n\
             traceparent: {trace}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let seen = r.text();
    assert!(seen.contains("[\"X-Request-Id\",\"abc-123\"]"), "{seen}");
    assert!(
        seen.contains(&format!("[\"traceparent\",\"{trace}\"]")),
        "{seen}"
    );

    // An id that could split a header or a line is replaced by a made one.
    let r = request(
        gw.port,
        "GET /v1/mock/headers HTTP/1.1\r\nHost: t\r\nX-Request-Id: a\"b\r\nConnection: close\r\n\r\n",
    );
    let made = r.header("x-request-id").unwrap().to_string();
    assert_eq!(made.len(), 32, "{made}");
    assert!(r.text().contains(&format!("[\"X-Request-Id\",\"{made}\"]")));

    let r = request(
        gw.port,
        "GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    assert!(r.header("x-request-id").is_some());

    let lines = lines(&log, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first = json(&lines[0]);
    assert_eq!(first["request_id"], "abc-123");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/v1/mock/headers");
    assert_eq!(first["route"], "/v1/mock/");
    assert_eq!(first["provider"], "mock");
    assert_eq!(first["status"], 200);
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["upstream"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(first["ttfb_ms"].as_f64().unwrap() > 0.0, "{first}");
    assert!(first["bytes_out"].as_u64().unwrap() > 100, "{first}");
    assert!(first["bytes_in"].as_u64().unwrap() > 50, "{first}");
    assert_eq!(first["error"], serde_json::Value::Null);
    assert_eq!(json(&lines[1])["request_id"], made.as_str());
    let missing = json(&lines[2]);
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["error"], "not_found");
    assert_eq!(missing["provider"], serde_json::Value::Null);
}

#[test]
fn gateway_errors_and_refused_requests_are_logged_with_their_code() {
    let dir = tmpdir("access-errors-files");
    let log = dir.join("access.jsonl");
    let dead = free_port();
    let gw = gateway(
        "access-errors",
        "0",
        &format!(
            "[access_log]\npath = \"{}\"\n[[providers]]\nname = \"dead\"\n\
             endpoints = [\"127.0.0.1:{dead}\"]\n[[routes]]\nprefix = \"/dead/\"\nprovider = \"dead\"\n",
            log.display()
        ),
    );
    let r = request(
        gw.port,
        "GET /dead/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 502);
    let r = request(
        gw.port,
        "GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    let lines = lines(&log, 2);
    let (failed, refused) = (json(&lines[0]), json(&lines[1]));
    assert_eq!(failed["status"], 502, "{failed}");
    assert_eq!(failed["error"], "connect_refused", "{failed}");
    assert_eq!(failed["provider"], "dead", "{failed}");
    assert_eq!(refused["status"], 400, "{refused}");
    assert_eq!(refused["method"], "-", "{refused}");
    assert!(refused["error"].is_string(), "{refused}");
}

#[test]
fn combined_format_sampling_and_reopen_on_sigusr1() {
    let dir = tmpdir("access-combined-files");
    let log = dir.join("access.log");
    let gw = gateway(
        "access-combined",
        "0",
        &format!(
            "[access_log]\npath = \"{}\"\nformat = \"combined\"\nsample_ok = 0.0\n",
            log.display()
        ),
    );
    // Successes are not sampled; errors are.
    for _ in 0..5 {
        let r = request(
            gw.port,
            "GET /v1/mock/bytes?size=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 200);
    }
    let r = request(
        gw.port,
        "GET /nope HTTP/1.1\r\nHost: t\r\nUser-Agent: probe/1.0\r\nReferer: http://r/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    let got = lines(&log, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = &got[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("\"GET /nope HTTP/1.1\" 404 "), "{line}");
    assert!(line.contains("\"http://r/\" \"probe/1.0\" rid="), "{line}");
    assert!(line.contains(" error=not_found"), "{line}");

    // logrotate: move the file, SIGUSR1, and the next lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.proc.signal(libc::SIGUSR1);
    let end = Instant::now() + Duration::from_secs(5);
    while !log.exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = request(
        gw.port,
        "GET /again HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    let fresh = lines(&log, 1);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("/again"));
    assert_eq!(
        std::fs::read_to_string(&rotated).unwrap().lines().count(),
        1
    );
}

#[test]
fn combined_lines_carry_the_request_version_and_escape_as_nginx_does() {
    let dir = tmpdir("access-combined-escape-files");
    let log = dir.join("access.log");
    let gw = gateway(
        "access-combined-escape",
        "0",
        &format!(
            "[access_log]\npath = \"{}\"\nformat = \"combined\"\n",
            log.display()
        ),
    );
    // HTTP/1.0, a path with a quote and a backslash, a User-Agent with a quote.
    let r = request(
        gw.port,
        "GET /v1/mock/bytes?size=5&q=a\"b\\c HTTP/1.0\r\nHost: t\r\nUser-Agent: x\"y\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = lines(&log, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = &got[0];
    assert!(
        line.contains("\"GET /v1/mock/bytes?size=5&q=a\\x22b\\x5Cc HTTP/1.0\" 200 "),
        "{line}"
    );
    assert!(line.contains("\"-\" \"x\\x22y\" rid="), "{line}");
    // The standard part has exactly the quotes it opens: two, two, two.
    assert_eq!(line.matches('"').count(), 6, "{line}");
    // The time as nginx's $time_local, then the appended fields.
    let time = line.split_once('[').unwrap().1.split_once(']').unwrap().0;
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    let bytes_in: u64 = line
        .split_once(" bytes_in=")
        .unwrap()
        .1
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes_in > 60, "{line}");
    assert!(line.contains(" route=/v1/mock/ provider="), "{line}");
}

#[test]
fn a_websocket_tunnel_has_one_line_when_it_ends() {
    let dir = tmpdir("access-ws-files");
    let log = dir.join("access.jsonl");
    let gw = gateway(
        "access-ws",
        "0",
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    );
    let mut ws = Reader::new(gw.connect());
    ws.send(ws_handshake("/v1/mock/ws", "X-Request-Id: tunnel-1\r\n").as_bytes());
    assert_eq!(ws.response(false).unwrap().status, 101);
    for _ in 0..2 {
        ws_echo(&mut ws);
    }
    // Nothing is logged while the tunnel is open.
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)));
    let got = lines(&log, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = json(&got[0]);
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["request_id"], "tunnel-1", "{line}");
    assert_eq!(line["path"], "/v1/mock/ws", "{line}");
    assert_eq!(line["route"], "/v1/mock/", "{line}");
    assert!(line["upstream"].is_string(), "{line}");
    // The handshake and both masked frames up (8 bytes each), its answer and both echoes.
    let handshake = ws_handshake("/v1/mock/ws", "X-Request-Id: tunnel-1\r\n").len() as u64;
    assert_eq!(line["bytes_in"], handshake + 16, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() > 2 * 4, "{line}");
    assert!(line["duration_ms"].as_f64().unwrap() >= 300.0, "{line}");
}

#[test]
fn stdout_gets_the_lines_when_it_is_the_path() {
    let gw = gateway("access-stdout", "0", "[access_log]\npath = \"stdout\"\n");
    let r = request(
        gw.port,
        "GET /v1/mock/bytes?size=1 HTTP/1.1\r\nHost: t\r\nX-Request-Id: to-stdout\r\n\
         Connection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // The gateway's stdout is its log file here.
    let end = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = gw.proc.log_text();
        let found = text
            .lines()
            .find(|l| l.contains("\"to-stdout\""))
            .map(str::to_string);
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < end,
            "no access log line on stdout:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let line = json(&line);
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["path"], "/v1/mock/bytes?size=1", "{line}");
}

#[test]
fn half_the_successes_are_logged_at_sample_ok_half() {
    let dir = tmpdir("access-sampling-files");
    let log = dir.join("access.jsonl");
    let gw = gateway(
        "access-sampling",
        "0",
        &format!(
            "[access_log]\npath = \"{}\"\nsample_ok = 0.5\n",
            log.display()
        ),
    );
    let mut r = Reader::new(gw.connect());
    for _ in 0..400 {
        r.send(b"GET /v1/mock/bytes?size=1 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.response(false).unwrap().status, 200);
    }
    // An error (every one is logged) marks the end: lines are written in order.
    r.send(b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(r.response(false).unwrap().status, 404);
    let end = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("\"/nope\"") {
            break text;
        }
        assert!(Instant::now() < end, "the error line never came");
        std::thread::sleep(Duration::from_millis(50));
    };
    let ok = text.lines().filter(|l| json(l)["status"] == 200).count();
    // 400 draws at 0.5: mean 200, standard deviation 10; six of them either way.
    assert!((140..=260).contains(&ok), "{ok} of 400 logged");
}
