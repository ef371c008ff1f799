//! A dead endpoint costs no client request: a connect that fails before any byte was sent
//! goes on to another endpoint, failures in a row eject the endpoint from the shard's
//! rotation, and once its ejection is over one probe request puts it back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::time::{Duration, Instant};

fn get(port: u16) -> Response {
    request(
        port,
        "GET /bytes?size=3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
}

#[test]
fn a_dead_endpoint_is_failed_over_ejected_and_probed_back() {
    let (live, dead) = (free_port(), free_port());
    let _live = mock_provider("failover-live", live);
    // No idle pool: every request connects, so the dead endpoint keeps being tried.
    let gw = gateway(
        "failover",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{live}\", \"127.0.0.1:{dead}\"]\n\
             eject_after_failures = 2\neject_base_ms = 400\neject_max_ms = 2000\n\
             pool_max_idle = 0\n[[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
        ),
    );
    for i in 0..20 {
        let r = get(gw.port);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["endpoints"]["ejections"] == 1);
    let p = &s["total"]["providers"]["p"];
    assert_eq!(p["endpoints"]["ejections"], 1, "{p}");
    assert_eq!(p["endpoints"]["ejected"], 1, "{p}");
    assert_eq!(p["endpoints"]["failovers"], 2, "{p}");
    // Each move is counted with its reason.
    assert_eq!(p["endpoints"]["retry_reasons"]["connect_refused"], 2, "{p}");
    assert_eq!(p["responses"]["5xx"], 0, "{p}");
    let log = gw.proc.log_text();
    assert!(
        log.contains(&format!("endpoint 127.0.0.1:{dead} ejected for 400ms")),
        "{log}"
    );

    // The endpoint comes back: after its ejection a probe succeeds and it is in service.
    let _back = mock_provider("failover-back", dead);
    std::thread::sleep(Duration::from_millis(500));
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(get(gw.port).status, 200);
        let s = gw.stats();
        if s["total"]["providers"]["p"]["endpoints"]["ejected"] == 0 {
            break;
        }
        assert!(Instant::now() < end, "{}", s["total"]["providers"]["p"]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = admin_get(gw.admin, "/metrics");
    assert!(
        m.contains("coregate_upstream_retries_by_reason_total{shard=\"0\",core=\"0\",provider=\"p\",reason=\"connect_refused\"} 2"),
        "{m}"
    );
    assert!(m.contains("coregate_upstream_failovers_total{"), "{m}");
}

#[test]
fn with_every_endpoint_dead_the_client_gets_the_error() {
    let (a, b) = (free_port(), free_port());
    let gw = gateway(
        "failover-all-dead",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
        ),
    );
    let r = get(gw.port);
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["code"], "connect_refused");
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["endpoints"]["failovers"] == 1);
    // One failover (to the second endpoint), then the answer: each endpoint tried once.
    assert_eq!(s["total"]["providers"]["p"]["endpoints"]["failovers"], 1);
}

#[test]
fn a_provider_with_no_reachable_endpoint_falls_back_to_the_next() {
    let (dead, live) = (free_port(), free_port());
    let _live = mock_provider("fallback-live", live);
    let dir = tmpdir("fallback-key");
    let key = dir.join("backup.key");
    std::fs::write(&key, "backup-secret\n").unwrap();
    let gw = gateway(
        "fallback",
        "0",
        &format!(
            "[[providers]]\nname = \"primary\"\nendpoints = [\"127.0.0.1:{dead}\"]\n\
             fallback = \"backup\"\n\
             [[providers]]\nname = \"backup\"\nendpoints = [\"127.0.0.1:{live}\"]\n\
             api_key = \"file:{}\"\nauth_header = \"Authorization\"\nauth_value = \"Bearer {{key}}\"\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"primary\"\n",
            key.display()
        ),
    );
    let r = request(
        gw.port,
        "GET /headers HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The request went out as the backup's: with the backup's credential.
    assert!(r.text().contains("Bearer backup-secret"), "{}", r.text());
    let s = gw.stats_until(|s| s["total"]["providers"]["backup"]["requests"] == 1);
    let primary = &s["total"]["providers"]["primary"];
    assert_eq!(primary["endpoints"]["fallbacks"], 1, "{primary}");
    assert_eq!(primary["errors"]["connect_refused"], 1, "{primary}");
    assert_eq!(s["total"]["providers"]["backup"]["responses"]["2xx"], 1);

    // A WebSocket handshake falls back the same way.
    let mut ws = Reader::new(gw.connect());
    ws.send(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(ws.response(false).expect("101").status, 101);
}

#[test]
fn answers_5xx_in_a_row_eject_too_unless_turned_off() {
    let mp = free_port();
    let _mock = mock_provider("failover-5xx", mp);
    let provider = |name: &str, extra: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nendpoints = [\"127.0.0.1:{mp}\"]\n\
             eject_after_failures = 3\n{extra}\n[[routes]]\nprefix = \"/{name}/\"\n\
             provider = \"{name}\"\nstrip_prefix = true\n"
        )
    };
    let gw = gateway(
        "failover-5xx-gw",
        "0",
        &(provider("on", "") + &provider("off", "eject_on_5xx = false")),
    );
    for name in ["on", "off"] {
        for _ in 0..3 {
            let r = request(
                gw.port,
                &format!(
                    "GET /{name}/bytes?status=503 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                ),
            );
            // The provider's 503 is relayed as it is.
            assert_eq!(r.status, 503);
        }
    }
    let s = gw.stats_until(|s| s["total"]["providers"]["on"]["endpoints"]["ejections"] == 1);
    assert_eq!(s["total"]["providers"]["on"]["endpoints"]["ejections"], 1);
    assert_eq!(s["total"]["providers"]["off"]["endpoints"]["ejections"], 0);
    assert!(gw.proc.log_text().contains("(last failure: status 503)"));
}

/// A provider endpoint whose answer the test switches: it answers every request head with
/// `status` (200 "ok" or a 500) over keep-alive connections, and counts the heads it saw.
struct Switchable {
    port: u16,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    seen: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Switchable {
    fn start() -> Switchable {
        use std::sync::atomic::{AtomicU16, AtomicU64};
        use std::sync::Arc;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (status, seen) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicU64::new(0)));
        let (st, sn) = (status.clone(), seen.clone());
        // The threads end with the test process; they hold no file or child process.
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let (st, sn) = (st.clone(), sn.clone());
                std::thread::spawn(move || Switchable::serve(conn, &st, &sn));
            }
        });
        Switchable { port, status, seen }
    }

    fn serve(
        mut conn: std::net::TcpStream,
        status: &std::sync::atomic::AtomicU16,
        seen: &std::sync::atomic::AtomicU64,
    ) {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering::SeqCst;
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                pending.drain(..end + 4);
                seen.fetch_add(1, SeqCst);
                let answer: &[u8] = match status.load(SeqCst) {
                    200 => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    _ => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nfail",
                };
                if conn.write_all(answer).is_err() {
                    return;
                }
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn set(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    fn seen(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn statuses(port: u16, n: usize) -> Vec<u16> {
    (0..n).map(|_| get(port).status).collect()
}

#[test]
fn an_endpoint_that_starts_failing_is_ejected_within_its_threshold_and_comes_back() {
    let live = free_port();
    let _live = mock_provider("midrun-live", live);
    let flaky = Switchable::start();
    let gw = gateway(
        "midrun",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{live}\", \"127.0.0.1:{}\"]\n\
             weights = [2, 1]\n\
             eject_after_failures = 3\neject_base_ms = 3000\neject_max_ms = 3000\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"p\"\n",
            flaky.port
        ),
    );
    // Unequal weights decide the split exactly (equal ones would let the endpoints'
    // latencies break ties, and this test be about the machine's noise): a third here.
    assert!(statuses(gw.port, 21).iter().all(|&s| s == 200));
    assert_eq!(flaky.seen(), 7, "the flaky endpoint's weight is a third");
    // It starts failing mid-run: the client sees exactly the failures that eject it (the
    // 500s were answers, relayed as they are), then none.
    flaky.set(500);
    let during = statuses(gw.port, 40);
    let failed = during.iter().filter(|&&s| s == 500).count();
    assert_eq!(failed, 3, "{during:?}");
    assert!(
        during[during.len() - 20..].iter().all(|&s| s == 200),
        "{during:?}"
    );
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["endpoints"]["ejections"] == 1);
    assert_eq!(s["total"]["providers"]["p"]["endpoints"]["ejected"], 1);

    // It recovers: once its ejection is over a probe puts it back, and traffic returns.
    flaky.set(200);
    std::thread::sleep(Duration::from_millis(3100));
    let before = flaky.seen();
    assert!(statuses(gw.port, 20).iter().all(|&s| s == 200));
    let share = flaky.seen() - before;
    assert!(share >= 1, "no request probed the recovered endpoint");
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["endpoints"]["ejected"] == 0);
    assert_eq!(s["total"]["providers"]["p"]["responses"]["5xx"], 3);
}

#[test]
fn a_provider_whose_endpoints_all_answer_5xx_hands_requests_to_its_fallback() {
    let backup = free_port();
    let _backup = mock_provider("fallback-5xx-backup", backup);
    let broken = Switchable::start();
    broken.set(500);
    let gw = gateway(
        "fallback-5xx",
        "0",
        &format!(
            "[[providers]]\nname = \"primary\"\nendpoints = [\"127.0.0.1:{}\"]\n\
             eject_after_failures = 2\neject_base_ms = 30000\nfallback = \"backup\"\n\
             [[providers]]\nname = \"backup\"\nendpoints = [\"127.0.0.1:{backup}\"]\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"primary\"\n",
            broken.port
        ),
    );
    // Its endpoint accepts connections and answers 500: two answers eject it, and from
    // then on the fallback answers instead of a likely failure.
    assert_eq!(statuses(gw.port, 2), vec![500, 500]);
    assert!(statuses(gw.port, 10).iter().all(|&s| s == 200));
    assert_eq!(broken.seen(), 2);
    let s = gw.stats_until(|s| s["total"]["providers"]["backup"]["responses"]["2xx"] == 10);
    let primary = &s["total"]["providers"]["primary"]["endpoints"];
    assert_eq!(primary["fallbacks"], 10, "{primary}");
    assert_eq!(
        primary["retry_reasons"]["no_healthy_endpoint"], 10,
        "{primary}"
    );
}

#[test]
fn a_provider_connection_answered_before_the_body_was_sent_is_not_reused() {
    // The endpoint answers each request head at once, without reading its body.
    let early = Switchable::start();
    let gw = gateway(
        "early-answer",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{}\"]\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"p\"\n",
            early.port
        ),
    );
    let mut r = Reader::new(gw.connect());
    r.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
    r.send(&[b'x'; 1000]);
    let resp = r.response(false).expect("the provider's early answer");
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    // The rest of the body may or may not be taken; the connection it was going to must
    // not carry another request (its next bytes would be this body's).
    let _ = std::io::Write::write_all(&mut r.stream, &[b'x'; 99_000]);
    assert_eq!(get(gw.port).status, 200);
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["responses"]["2xx"] == 2);
    let pool = &s["total"]["providers"]["p"]["pool"];
    assert_eq!(pool["new_connections"], 2, "{pool}");
    assert_eq!(pool["hits"], 0, "{pool}");
}
