//! `coregate load` against real processes: the mock provider and the gateway, on loopback.
//! Runs are short (1–2 s windows); what is checked is counting and classification, never
//! speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::load::*;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[test]
fn counts_match_the_gateways_own_stats() {
    let gw = gateway("load-counts", "1", "");
    let before = gw.stats()["total"]["requests"].as_u64().unwrap_or(0);
    let dir = tmpdir("load-counts-out");
    let url = format!("http://127.0.0.1:{}/v1/mock/api/small", gw.port);
    let (out, summary) = load(
        &dir,
        &[&url, "--vus", "20", "--duration", "2s", "--cores", "0"],
        None,
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let all = summary["all_responses"].as_u64().expect("all_responses");
    assert!(all > 100, "{summary}");
    // Every request the generator completed is one the gateway counted, and no more.
    let s = gw.stats_until(|s| s["total"]["requests"].as_u64() == Some(before + all));
    assert_eq!(s["total"]["requests"].as_u64(), Some(before + all), "{s}");
    let stage = &summary["stages"][0];
    assert_eq!(stage["failed_requests"], 0, "{stage}");
    assert!(stage["total_requests"].as_u64().unwrap_or(0) <= all);
    assert_eq!(stage["vus"], 20);
    assert_eq!(stage["open_connections"], 20);
}

#[test]
fn websocket_targets_exchange_messages_through_the_gateways_tunnels() {
    let gw = gateway("load-ws", "1", "");
    let dir = tmpdir("load-ws-out");
    let url = format!("ws://127.0.0.1:{}/v1/mock/ws", gw.port);
    let (out, summary) = load(
        &dir,
        &[&url, "--vus", "8", "--duration", "1s", "--cores", "0"],
        None,
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let stage = &summary["stages"][0];
    assert_eq!(stage["failed_requests"], 0, "{stage}");
    // Many messages, each answered by the mock's echo through one tunnel per VU.
    let all = summary["all_responses"].as_u64().expect("all_responses");
    assert!(all > 100, "{summary}");
    let s = gw.stats_until(|s| s["total"]["tunnels"]["total"] == 8);
    assert_eq!(s["total"]["tunnels"]["total"], 8, "{s}");

    // A handshake answered 404 is an HTTP error; one answered 200 is no WebSocket.
    for (path, class) in [
        ("/nope", "http_4xx"),
        ("/v1/mock/api/small", "malformed_response"),
    ] {
        let dir = tmpdir(&format!("load-ws-{class}"));
        let url = format!("ws://127.0.0.1:{}{path}", gw.port);
        let (out, summary) = load(
            &dir,
            &[&url, "--vus", "2", "--duration", "1s", "--cores", "0"],
            None,
        );
        assert!(out.status.success(), "{}", stdout(&out));
        let stage = &summary["stages"][0];
        let failed = stage["failed_requests"].as_u64().unwrap_or(0);
        assert!(failed > 0, "{stage}");
        assert_eq!(errors(stage, class), failed, "{path}: {stage}");
    }
}

#[test]
fn several_urls_share_the_vus_round_robin() {
    let gw = gateway("load-urls", "1", "");
    let dir = tmpdir("load-urls-out");
    let health = format!("http://127.0.0.1:{}/health", gw.port);
    let proxied = format!("http://127.0.0.1:{}/v1/mock/api/small", gw.port);
    let (_, summary) = load(
        &dir,
        &[
            &health,
            &proxied,
            "--vus",
            "4",
            "--duration",
            "1s",
            "--cores",
            "0",
        ],
        None,
    );
    let all = summary["all_responses"].as_u64().expect("all_responses");
    let s = gw.stats_until(|s| s["total"]["requests"].as_u64() >= Some(all));
    // Half of the VUs proxy to the embedded mock provider, the other half ask for /health.
    let proxied_count = s["total"]["providers"]["mock"]["requests"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        proxied_count > 0 && proxied_count < all,
        "{proxied_count} of {all}: {s}"
    );
    assert_eq!(summary["targets"].as_array().map(Vec::len), Some(2));
}

#[test]
fn refused_connections_are_classified() {
    let port = free_port();
    let dir = tmpdir("load-refused");
    let url = format!("http://127.0.0.1:{port}/");
    let (out, summary) = load(
        &dir,
        &[&url, "--vus", "4", "--duration", "1s", "--cores", "0"],
        None,
    );
    assert!(out.status.success());
    let stage = &summary["stages"][0];
    assert!(errors(stage, "connect_refused") > 0, "{stage}");
    assert_eq!(
        stage["connection_refused"],
        stage["errors"]["connect_refused"]
    );
    assert_eq!(stage["successful_requests"], 0);
    // Refusals are failures, not requests served: nothing completed, so RPS is 0.
    assert_eq!(stage["rps"], 0.0, "{stage}");
    assert_eq!(summary["max_rps"], 0.0, "{summary}");
    assert_eq!(summary["failure_mode"], "connect_refused");
    assert!(summary["client_limits"]["hit"]
        .as_array()
        .expect("hit")
        .is_empty());
}

#[test]
fn connect_and_request_timeouts_are_classified() {
    use std::os::fd::AsRawFd;
    // A listener whose accept queue is full drops new SYNs: the connect times out.
    let full = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: listen(2) on a valid listening socket; only its backlog changes.
    unsafe { libc::listen(full.as_raw_fd(), 0) };
    let port = full.local_addr().expect("addr").port();
    let _fill: Vec<_> = (0..3)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(
                &full.local_addr().expect("addr"),
                Duration::from_millis(300),
            )
            .ok()
        })
        .collect();
    // A server that accepts and reads but never answers: the request times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    for (name, port, flag, class) in [
        (
            "connect-timeout",
            port,
            "--connect-timeout",
            "connect_timeout",
        ),
        ("request-timeout", silent_port, "--timeout", "timeout"),
    ] {
        let dir = tmpdir(&format!("load-{name}"));
        let url = format!("http://127.0.0.1:{port}/");
        let args = [
            &url,
            "--vus",
            "2",
            "--duration",
            "2s",
            "--cores",
            "0",
            flag,
            "300ms",
        ];
        let (_, summary) = load(&dir, &args, None);
        let stage = &summary["stages"][0];
        assert!(errors(stage, class) > 0, "{name}: {stage}");
        assert_eq!(stage["successful_requests"], 0, "{name}");
        let classes = stage["errors"].as_object().map(|m| m.len());
        assert_eq!(classes, Some(1), "{name}: {stage}");
    }
}

/// A raw TCP server that answers every request with `reply` (then closes if `close`).
fn raw_server(reply: &'static [u8], close: bool) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    if s.write_all(reply).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn malformed_and_truncated_responses_are_classified() {
    for (name, reply, close, class) in [
        (
            "garbage",
            &b"HELLO WORLD\r\n\r\n"[..],
            false,
            "malformed_response",
        ),
        (
            "truncated",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"[..],
            true,
            "closed_early",
        ),
        ("silent-close", &b""[..], true, "closed_early"),
    ] {
        let port = raw_server(reply, close);
        let dir = tmpdir(&format!("load-{name}"));
        let url = format!("http://127.0.0.1:{port}/");
        let args = [&url, "--vus", "2", "--duration", "1s", "--cores", "0"];
        let (_, summary) = load(&dir, &args, None);
        let stage = &summary["stages"][0];
        let total = stage["total_requests"].as_u64().unwrap_or(0);
        assert!(total > 0, "{name}: {stage}");
        assert_eq!(errors(stage, class), total, "{name}: {stage}");
    }
}

#[test]
fn resets_and_5xx_from_the_provider_are_classified() {
    let mp = free_port();
    let _mock = mock_provider("load-classes", mp);
    let cases = [
        ("reset", "/api/small?reset=before_head", "reset"),
        ("status", "/api/small?status=503", "http_5xx"),
        ("status4", "/api/small?status=404", "http_4xx"),
    ];
    for (name, path, class) in cases {
        let dir = tmpdir(&format!("load-class-{name}"));
        let url = format!("http://127.0.0.1:{mp}{path}");
        let (_, summary) = load(
            &dir,
            &[&url, "--vus", "4", "--duration", "1s", "--cores", "0"],
            None,
        );
        let stage = &summary["stages"][0];
        let total = stage["total_requests"].as_u64().unwrap_or(0);
        assert!(total > 0, "{name}: {stage}");
        assert_eq!(errors(stage, class), total, "{name}: {stage}");
        assert_eq!(summary["failure_mode"], class, "{name}");
    }
}

#[test]
fn a_low_client_fd_limit_is_reported_as_a_client_limit() {
    if !require_tool("prlimit") {
        return;
    }
    let mp = free_port();
    let _mock = mock_provider("load-fds", mp);
    let dir = tmpdir("load-fds-out");
    // Slow answers keep the VUs that did connect from outnumbering the failures.
    let url = format!("http://127.0.0.1:{mp}/api/small?latency_ms=20");
    let (out, summary) = load(
        &dir,
        &[
            &url,
            "--cores",
            "0",
            "--profile",
            "breaking-point",
            "--start",
            "300",
            "--step",
            "100",
            "--max-vus",
            "500",
            "--iteration",
            "1s",
            "--cooldown",
            "0s",
        ],
        Some(200),
    );
    let text = stdout(&out);
    assert!(text.contains("RLIMIT_NOFILE 200"), "{text}");
    assert!(
        text.contains("warning: this run asks for up to 500 VUs"),
        "{text}"
    );
    let it = &summary["iterations"][0];
    assert!(
        errors(&summary["stages"][0], "client_fd_limit") > 0,
        "{summary}"
    );
    assert_eq!(it["verdict"], "client_limit", "{it}");
    // The search stops, and the client's limit is not called the server's breaking point.
    assert_eq!(summary["iterations"].as_array().map(Vec::len), Some(1));
    assert!(summary["breaking_point_vus"].is_null(), "{summary}");
    let bp = summary["breaking_point"].as_str().unwrap_or("");
    assert!(
        bp.starts_with("none found") && bp.contains("client"),
        "{bp}"
    );
    let hit = summary["client_limits"]["hit"].as_array().expect("hit");
    assert!(hit.iter().any(|h| h == "client_fd_limit"), "{hit:?}");
}

#[test]
fn exhausted_client_ports_are_reported_as_a_client_limit() {
    // Needs its own network namespace (ip_local_port_range is per namespace): root + unshare,
    // and `ip` to bring its loopback up.
    if !private_netns_allowed() || !require_tool("ip") {
        return;
    }
    let dir = tmpdir("load-ports");
    let out = dir.to_str().expect("utf-8 path");
    // Ten ephemeral ports for 30 VUs to one destination.
    let script = format!(
        "set -e; ip link set lo up; echo '40000 40009' > /proc/sys/net/ipv4/ip_local_port_range; \
         {BIN} mock-provider --listen 127.0.0.1:9902 --cores 0 & mock=$!; \
         for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/9902) 2>/dev/null && break; sleep 0.05; done; \
         {BIN} load http://127.0.0.1:9902/api/small?latency_ms=20 --vus 30 --duration 1s \
           --cores 0 --no-progress --out {out}; kill $mock"
    );
    let run = Command::new("unshare")
        .args(["-n", "bash", "-c", &script])
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("ports 40000-40009 x 1 (source, destination) pair(s) allow 10"),
        "{text}"
    );
    assert!(
        text.contains("warning: this run asks for up to 30 VUs"),
        "{text}"
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("json");
    let stage = &summary["stages"][0];
    assert!(errors(stage, "client_ports_exhausted") > 0, "{stage}");
    assert!(
        stage["successful_requests"].as_u64().unwrap_or(0) > 0,
        "{stage}"
    );
    let hit = summary["client_limits"]["hit"].as_array().expect("hit");
    assert!(hit.iter().any(|h| h == "client_ports_exhausted"), "{hit:?}");
    assert_eq!(
        summary["client_limits"]["caps"]["binding"],
        "ephemeral ports"
    );
}
