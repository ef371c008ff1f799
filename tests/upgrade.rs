//! Binary upgrade without a failed request: `serve --takeover` starts beside the running
//! gateway, which drains; `coregate load` runs through the change and no request fails.
//! A WebSocket tunnel open on the old process keeps relaying through its drain and, at the
//! drain timeout, gets a Close frame with 1001 (going away) instead of a cut connection.
//!
//! It runs in a private network namespace (the test thread's own: `unshare(CLONE_NEWNET)`
//! moves only the calling thread, and the processes it starts), where it can set
//! `net.ipv4.tcp_migrate_req = 1` without touching the host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

/// Moves this thread into a new network namespace with loopback up and queued-connection
/// migration on; false (the test skips) where namespaces are not allowed.
fn private_network() -> bool {
    if !private_netns_allowed() || !require_tool("ip") {
        return false;
    }
    // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET affects only the
    // calling thread (this test's) and the processes it starts from now on.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
    let up = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(up.success());
    // A child of this thread lives in its namespace, and /proc/sys/net shows that one's.
    let migrate = Command::new("sh")
        .args(["-c", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req"])
        .status()
        .unwrap();
    assert!(migrate.success());
    true
}

#[test]
fn takeover_fails_no_request_and_ends_tunnels_with_1001() {
    let done = std::thread::spawn(|| {
        if private_network() {
            upgrade_under_load();
        }
    });
    done.join().unwrap();
}

fn upgrade_under_load() {
    let mp = free_port();
    let _mock = mock_provider("upgrade", mp);
    wait_port(mp, Duration::from_secs(10));
    let provider = format!(
        "[[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{mp}\"]\n\
         [[routes]]\nprefix = \"/m/\"\nprovider = \"m\"\nrewrite = \"/\"\n"
    );
    // drain_timeout_ms = 5000 (the helper's): the tunnel is closed then.
    let mut old = gateway("upgrade", "0-1", &provider);
    let config = old.dir.join("coregate.toml");
    let mut tunnel = Reader::new(old.connect());
    tunnel.send(ws_handshake("/m/ws", "").as_bytes());
    assert_eq!(tunnel.response(false).expect("101").status, 101);
    ws_echo(&mut tunnel);

    let out = tmpdir("upgrade-load");
    let url = format!("http://127.0.0.1:{}/m/bytes?size=100", old.port);
    let mut load = spawn(
        &[
            "load",
            &url,
            "--vus",
            "32",
            "--duration",
            "6s",
            "--cores",
            "0",
            "--no-progress",
            "--out",
            out.to_str().unwrap(),
        ],
        out.join("load.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let new = spawn(
        &["serve", "--config", config.to_str().unwrap(), "--takeover"],
        old.dir.join("new.log"),
    );
    let took_over = Instant::now();
    let end = took_over + Duration::from_secs(10);
    while !new.log_text().contains("takeover:") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(new.log_text().contains("drains now"), "{}", new.log_text());

    // The old process drains: its tunnel still relays...
    ws_echo(&mut tunnel);
    // ...until the drain timeout, when it is sent a Close frame, 1001, then the end.
    let mut rest = Vec::new();
    tunnel
        .stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = tunnel.stream.read_to_end(&mut rest);
    assert!(
        rest.len() >= 4 && rest[0] == 0x88,
        "no Close frame: {rest:?}"
    );
    assert_eq!(u16::from_be_bytes([rest[2], rest[3]]), 1001, "{rest:?}");
    assert!(
        took_over.elapsed() >= Duration::from_secs(4),
        "closed before the drain timeout"
    );
    assert_eq!(
        old.proc.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        old.proc.log_text()
    );

    assert_eq!(
        load.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        load.log_text()
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let total = summary["total_requests"].as_u64().unwrap();
    assert!(total > 1000, "{summary}");
    assert_eq!(summary["failed_requests"], 0, "{}", summary["errors"]);

    // The new process serves the address and its admin listener.
    let s: serde_json::Value = serde_json::from_str(&admin_get(old.admin, "/stats")).unwrap();
    assert!(s["total"]["requests"].as_u64().unwrap() > 0, "{s}");
    let health = admin_get(old.admin, "/health");
    assert!(health.contains("\"ok\""), "{health}");
    let mut again = Reader::new(old.connect());
    again.send(ws_handshake("/m/ws", "").as_bytes());
    assert_eq!(again.response(false).expect("101").status, 101);
    ws_echo(&mut again);
    drop(new);
}
