//! A shard that panics takes the whole process down with a non-zero exit, so that a
//! supervisor restarts it (docs/architecture.md, "Failure of a shard"). The panic is injected
//! with `COREGATE_FAULT_SHARD_PANIC=<shard id>`, which makes that shard panic on its first tick.
//! Also what balancers see of a stuck shard and of a drain: admin `/health` turns 503, and
//! with `server.drain_delay_ms` the listeners keep serving for that long before they close.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn serve_with_panicking_shard(cores: &str, shard: usize) -> (Proc, u16) {
    let dir = tmpdir(&format!("shard-panic-{cores}"));
    let port = free_port();
    let (admin, mock) = (free_port(), free_port());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"{cores}\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n[mock]\nlisten = \"127.0.0.1:{mock}\"\n"
    );
    let path = dir.join("coregate.toml");
    std::fs::write(&path, cfg).expect("write config");
    let log = dir.join("gateway.log");
    let out = std::fs::File::create(&log).expect("log file");
    let child = Command::new(BIN)
        .args(["serve", "--config", path.to_str().expect("path")])
        .env("COREGATE_FAULT_SHARD_PANIC", shard.to_string())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn coregate");
    (Proc { child, log }, port)
}

#[test]
fn a_panicking_shard_ends_the_process_non_zero() {
    // Two shards when the machine has two cores: the other shard is still serving when
    // shard 1 panics, and the process must not stay up with one shard fewer.
    let cores = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        "0-1"
    } else {
        "0"
    };
    let shard = if cores == "0" { 0 } else { 1 };
    let (mut gw, _port) = serve_with_panicking_shard(cores, shard);
    let code = gw.wait_exit(Duration::from_secs(20));
    let log = gw.log_text();
    assert!(
        matches!(code, Some(c) if c != 0),
        "exit code {code:?}, log:\n{log}"
    );
    assert!(
        log.contains("panic injected"),
        "panic message logged:\n{log}"
    );
    assert!(
        log.contains(&format!("shard {shard} panicked")),
        "the exit names the shard:\n{log}"
    );
}

#[test]
fn without_the_fault_the_gateway_keeps_serving() {
    // The control: the same start without the injected panic stays up and answers.
    let gw = gateway("shard-no-panic", "0", "");
    let r = request(gw.port, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(500));
    let mut proc = gw.proc;
    assert!(proc.alive(), "gateway still running");
}

/// A one-shard gateway whose shard 0 stalls: at once, or after `after_ms` of serving (and
/// reporting stats every 100 ms).
fn serve_with_stalling_shard(name: &str, after_ms: Option<u64>) -> (Proc, u16) {
    let dir = tmpdir(name);
    let (port, admin, mock) = (free_port(), free_port(), free_port());
    let path = dir.join("coregate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n[admin]\nlisten = \
             \"127.0.0.1:{admin}\"\n[mock]\nlisten = \"127.0.0.1:{mock}\"\n[stats]\n\
             interval_ms = 100\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config", path.to_str().unwrap()])
        .env("COREGATE_FAULT_SHARD_STALL", "0");
    if let Some(ms) = after_ms {
        cmd.env("COREGATE_FAULT_SHARD_STALL_AFTER_MS", ms.to_string());
    }
    let gw = spawn_command(&mut cmd, dir.join("gateway.log"));
    wait_port(admin, Duration::from_secs(10));
    (gw, admin)
}

/// Polls admin /health until it says `degraded` (15 s at most); returns its body.
fn degraded_health(admin: u16) -> String {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = admin_get(admin, "/health");
        if body.contains("degraded") || std::time::Instant::now() > end {
            return body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that /health, /stats and /metrics all show shard 0 stale.
fn assert_shard_0_stale(gw: &Proc, admin: u16, reported: bool) {
    let body = degraded_health(admin);
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(v["status"], "degraded", "{body}");
    assert_eq!(v["stale_shards"], serde_json::json!([0]));
    let stats: serde_json::Value = serde_json::from_str(&admin_get(admin, "/stats")).unwrap();
    let shard = &stats["shards"][0];
    assert_eq!(shard["shard"], 0, "{stats}");
    assert_eq!(shard["stale"], true, "{stats}");
    assert_eq!(shard["reported"], reported, "{stats}");
    let metrics = admin_get(admin, "/metrics");
    assert!(
        metrics.contains("coregate_shard_stale{shard=\"0\"} 1"),
        "{metrics}"
    );
    // The aggregator logs stale shards on its 1 s tick.
    let end = std::time::Instant::now() + Duration::from_secs(3);
    while !gw.log_text().contains("shard 0: no stats snapshot") && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = gw.log_text();
    assert!(log.contains("shard 0: no stats snapshot"), "{log}");
}

#[test]
fn a_shard_stuck_from_the_start_is_flagged_and_health_turns_503() {
    let (gw, admin) = serve_with_stalling_shard("shard-stall", None);
    assert_shard_0_stale(&gw, admin, false);
}

#[test]
fn a_shard_that_stops_reporting_while_serving_is_flagged_and_health_turns_503() {
    let (gw, admin) = serve_with_stalling_shard("shard-stall-later", Some(1500));
    // Before the stall (snapshots every 100 ms): reported, not stale, health ok.
    let end = std::time::Instant::now() + Duration::from_secs(1);
    let stats = loop {
        let stats: serde_json::Value = serde_json::from_str(&admin_get(admin, "/stats")).unwrap();
        if stats["shards"][0]["reported"] == true || std::time::Instant::now() > end {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(stats["shards"][0]["stale"], false, "{stats}");
    assert_eq!(stats["shards"][0]["reported"], true, "{stats}");
    assert!(admin_get(admin, "/health").contains("\"ok\""));
    let metrics = admin_get(admin, "/metrics");
    assert!(
        metrics.contains("coregate_shard_stale{shard=\"0\"} 0"),
        "{metrics}"
    );
    assert_shard_0_stale(&gw, admin, true);
}

#[test]
fn health_is_503_while_draining() {
    let gw = gateway("shard-drain-health", "0", "");
    assert!(admin_get(gw.admin, "/health").contains("\"ok\""));
    // A slow streamed answer (40 frames, 100 ms apart) keeps the drain going for ~4 s.
    let mut slow = Reader::new(gw.connect());
    slow.send(
        b"POST /v1/mock/tts?frames=40&frame_interval_ms=100 HTTP/1.1\r\nHost: a\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    std::thread::sleep(Duration::from_millis(300));
    gw.proc.signal(libc::SIGTERM);
    let end = std::time::Instant::now() + Duration::from_secs(3);
    let body = loop {
        let body = admin_get(gw.admin, "/health");
        if body.contains("draining") || std::time::Instant::now() > end {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    // The request in flight still completes.
    assert_eq!(
        slow.response(false).expect("the streamed answer").status,
        200
    );
}

#[test]
fn during_the_drain_delay_health_is_503_and_new_connections_are_served() {
    let delay = Duration::from_millis(4000);
    let gw = gateway_with_server("drain-delay", "0", "drain_delay_ms = 4000", "");
    // A streamed answer (60 frames, 100 ms apart) keeps the process draining after the
    // listeners closed, so that a refused connection is the listener's doing, not an exit.
    let mut slow = Reader::new(gw.connect());
    slow.send(
        b"POST /v1/mock/tts?frames=60&frame_interval_ms=100 HTTP/1.1\r\nHost: a\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    std::thread::sleep(Duration::from_millis(300));
    let signalled = std::time::Instant::now();
    gw.proc.signal(libc::SIGTERM);
    let end = signalled + Duration::from_secs(3);
    let body = loop {
        let body = admin_get(gw.admin, "/health");
        if body.contains("draining") || std::time::Instant::now() > end {
            break body;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    // Still within the delay: a new connection is accepted and its request proxied.
    let r = request(
        gw.port,
        "GET /v1/mock/bytes?size=7 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert!(
        signalled.elapsed() < delay,
        "the machine is too slow for this test: {:?} passed before the request",
        signalled.elapsed()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 7);
    // After the delay the listeners close: new connections are refused while the
    // streamed answer still runs.
    let end = signalled + delay + Duration::from_secs(4);
    let refused_at = loop {
        if std::net::TcpStream::connect(("127.0.0.1", gw.port)).is_err() {
            break signalled.elapsed();
        }
        assert!(std::time::Instant::now() < end, "the listener never closed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refused_at >= delay, "refused {refused_at:?} after SIGTERM");
    let mut proc = gw.proc;
    assert!(proc.alive(), "still draining the streamed answer");
    assert_eq!(
        slow.response(false).expect("the streamed answer").status,
        200
    );
    assert_eq!(proc.wait_exit(Duration::from_secs(10)), Some(0));
    let log = proc.log_text();
    assert!(log.contains("the listeners close in 4000 ms"), "{log}");
}
