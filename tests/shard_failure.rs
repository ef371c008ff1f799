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

#[test]
fn a_stuck_shard_is_flagged_and_health_turns_503() {
    let dir = tmpdir("shard-stall");
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
    let gw = spawn_command(
        Command::new(BIN)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("COREGATE_FAULT_SHARD_STALL", "0"),
        dir.join("gateway.log"),
    );
    wait_port(admin, Duration::from_secs(10));
    let end = std::time::Instant::now() + Duration::from_secs(15);
    let body = loop {
        let body = admin_get(admin, "/health");
        if body.contains("degraded") || std::time::Instant::now() > end {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(v["status"], "degraded", "{body}");
    assert_eq!(v["stale_shards"], serde_json::json!([0]));
    let log = gw.log_text();
    assert!(log.contains("shard 0: no stats snapshot"), "{log}");
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
