//! `coregate load` against real processes: the mock provider and the gateway, on loopback.
//! Runs are short (1–2 s windows); what is checked is counting and classification, never
//! speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `coregate load ARGS --out DIR` (optionally under `prlimit`) and returns its output
/// and summary.json.
fn load(dir: &Path, args: &[&str], nofile: Option<u32>) -> (Output, Value) {
    let out = dir.to_str().expect("utf-8 path");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    cmd.arg("load")
        .args(args)
        .args(["--out", out, "--no-progress"]);
    let output = cmd.output().expect("run coregate load");
    let summary = std::fs::read_to_string(dir.join("summary.json")).unwrap_or_else(|_| {
        panic!(
            "no summary.json; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (
        output,
        serde_json::from_str(&summary).expect("summary.json parses"),
    )
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl line parses"))
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn errors(stage: &Value, class: &str) -> u64 {
    stage["errors"][class].as_u64().unwrap_or(0)
}

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

#[test]
fn breaking_point_search_finds_the_threshold_or_says_none_found() {
    let mp = free_port();
    let _mock = mock_provider("load-bp", mp);
    let common = [
        "--cores",
        "0",
        "--profile",
        "breaking-point",
        "--start",
        "2",
        "--step",
        "2",
        "--max-vus",
        "6",
        "--iteration",
        "1s",
        "--cooldown",
        "300ms",
    ];
    let dir = tmpdir("load-bp-breaks");
    let url = format!("http://127.0.0.1:{mp}/api/small?error_rate=0.5");
    let (_, summary) = load(&dir, &[&[url.as_str()][..], &common[..]].concat(), None);
    assert_eq!(summary["breaking_point_vus"], 2, "{summary}");
    assert_eq!(summary["failure_mode"], "http_5xx");
    assert!(summary["max_stable_vus"].is_null());
    let iterations = jsonl(&dir.join("iterations.jsonl"));
    assert_eq!(iterations.len(), 1);
    assert_eq!(iterations[0]["verdict"], "breaking");

    let dir = tmpdir("load-bp-none");
    let url = format!("http://127.0.0.1:{mp}/api/small");
    let (_, summary) = load(&dir, &[&[url.as_str()][..], &common[..]].concat(), None);
    assert!(summary["breaking_point_vus"].is_null(), "{summary}");
    assert_eq!(summary["breaking_point"], "none found up to 6 VUs");
    assert_eq!(summary["max_stable_vus"], 6);
    let vus: Vec<u64> = jsonl(&dir.join("iterations.jsonl"))
        .iter()
        .map(|i| i["vus"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(vus, vec![2, 4, 6]);
}

#[test]
fn open_loop_latency_counts_the_wait_for_a_slow_target() {
    let mp = free_port();
    let _mock = mock_provider("load-co", mp);
    let url = format!("http://127.0.0.1:{mp}/api/small?latency_ms=50");
    let base = [
        url.as_str(),
        "--vus",
        "2",
        "--duration",
        "2s",
        "--cores",
        "0",
    ];
    let dir = tmpdir("load-co-closed");
    let (_, closed) = load(&dir, &base, None);
    let closed_p50 = closed["stages"][0]["p50_ms"].as_f64().unwrap_or(0.0);
    assert!((45.0..150.0).contains(&closed_p50), "{closed}");

    // Two VUs can do ~40 req/s against 50 ms; asking for 100 req/s, each request waits for
    // its VU, and that wait is latency the closed loop would hide.
    let dir = tmpdir("load-co-open");
    let (_, open) = load(&dir, &[&base[..], &["--rate", "100"]].concat(), None);
    let stage = &open["stages"][0];
    let open_p50 = stage["p50_ms"].as_f64().unwrap_or(0.0);
    assert!(
        open_p50 > closed_p50 * 4.0,
        "open {open_p50} vs closed {closed_p50}: {stage}"
    );
    assert_eq!(stage["rate_kept_up"], false, "{stage}");
    assert_eq!(stage["target_rate"], 100.0);
    assert!(stage["late_sends"].as_u64().unwrap_or(0) > 0, "{stage}");
    let notes = stage["notes"].to_string();
    assert!(notes.contains("could not keep up"), "{notes}");
    assert_eq!(open["mode"]["kind"], "open");
}

#[test]
fn scale_profile_writes_every_artifact_with_its_fields() {
    let gw = gateway("load-artifacts", "1", "");
    let dir = tmpdir("load-artifacts-out");
    let url = format!("http://127.0.0.1:{}/health", gw.port);
    let pid = gw.proc.pid().to_string();
    let (out, summary) = load(
        &dir,
        &[
            &url,
            "--cores",
            "0",
            "--profile",
            "scale",
            "--stages",
            "3,6",
            "--stage-duration",
            "1500ms",
            "--log-requests",
            "10%",
            "--pid",
            &pid,
        ],
        None,
    );
    assert!(out.status.success());
    let stages = jsonl(&dir.join("stages.jsonl"));
    assert_eq!(stages.len(), 2);
    for (st, vus) in stages.iter().zip([3, 6]) {
        assert_eq!(st["vus"], vus);
        for key in [
            "stage",
            "duration_secs",
            "total_requests",
            "successful_requests",
            "failed_requests",
            "timeout_requests",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "min_ms",
            "max_ms",
            "mean_ms",
            "rps",
            "error_rate",
            "timestamp",
            "client_cpu_percent",
            "target_cpu_us_per_request",
        ] {
            assert!(!st[key].is_null(), "stages.jsonl lacks {key}: {st}");
        }
        let (p50, p99, max) = (
            st["p50_ms"].as_f64().unwrap_or(-1.0),
            st["p99_ms"].as_f64().unwrap_or(-1.0),
            st["max_ms"].as_f64().unwrap_or(-1.0),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{st}");
        // RPS is over the measured window only.
        let rps = st["rps"].as_f64().unwrap_or(0.0);
        let secs = st["duration_secs"].as_f64().unwrap_or(0.0);
        let total = st["total_requests"].as_f64().unwrap_or(0.0);
        assert!((rps * secs - total).abs() <= total * 0.02 + 1.0, "{st}");
    }
    let requests = jsonl(&dir.join("requests.jsonl"));
    assert!(!requests.is_empty());
    for key in [
        "timestamp_us",
        "latency_us",
        "success",
        "stage",
        "concurrent",
        "request_id",
        "error",
    ] {
        assert!(requests[0].get(key).is_some(), "requests.jsonl lacks {key}");
    }
    let total: u64 = stages
        .iter()
        .map(|s| s["total_requests"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        requests.len() as u64 <= total / 10 + 2,
        "sampled, not every request"
    );
    let resources = jsonl(&dir.join("resources.jsonl"));
    assert!(resources.len() >= 2, "{resources:?}");
    let last = resources.last().expect("a sample");
    for key in [
        "timestamp_ms",
        "cpu_percent",
        "memory_mb",
        "open_fds",
        "threads",
        "active_connections",
        "client_cpu_percent",
    ] {
        assert!(!last[key].is_null(), "resources.jsonl lacks {key}: {last}");
    }
    for key in [
        "breaking_point",
        "max_stable_vus",
        "max_rps",
        "failure_mode",
        "client_limits",
        "hardware_info",
        "sysctls",
        "rlimits",
        "stages",
    ] {
        assert!(!summary[key].is_null(), "summary.json lacks {key}");
    }
    assert_eq!(summary["profile"], "scale");
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(report.contains("| stage | VUs | RPS"), "{report}");
    for chart in ["rps_vs_vus.svg", "latency_vs_vus.svg"] {
        let svg = std::fs::read_to_string(dir.join(chart)).expect("chart");
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{chart}"
        );
    }
}

#[test]
fn source_addresses_spread_the_connections() {
    if !require_tool("ss") {
        return;
    }
    let mp = free_port();
    let _mock = mock_provider("load-source", mp);
    let dir = tmpdir("load-source-out");
    let url = format!("http://127.0.0.1:{mp}/api/small?latency_ms=5");
    let mut child = Command::new(BIN)
        .args([
            "load",
            &url,
            "--vus",
            "6",
            "--duration",
            "3s",
            "--cores",
            "0",
            "--source",
            "127.0.0.2-127.0.0.4",
            "--no-progress",
            "--out",
            dir.to_str().expect("path"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn load");
    std::thread::sleep(Duration::from_millis(1500));
    let ss = Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            "dst",
            &format!("127.0.0.1:{mp}"),
        ])
        .output()
        .expect("ss");
    let _ = child.wait();
    let text = String::from_utf8_lossy(&ss.stdout);
    for src in ["127.0.0.2:", "127.0.0.3:", "127.0.0.4:"] {
        assert_eq!(text.matches(src).count(), 2, "{src} in:\n{text}");
    }
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("json");
    assert_eq!(summary["sources"].as_array().map(Vec::len), Some(3));
    assert_eq!(summary["stages"][0]["failed_requests"], 0);
}

#[test]
fn bad_flags_are_errors_that_name_the_flag() {
    for (args, flag) in [
        (
            &["http://127.0.0.1:1/", "--duration", "soon"][..],
            "--duration",
        ),
        (&["https://127.0.0.1:1/"][..], "https"),
        (
            &["http://127.0.0.1:1/", "--profile", "fast"][..],
            "--profile",
        ),
        (
            &["http://127.0.0.1:1/", "--source", "1.2.3"][..],
            "--source",
        ),
        (&["http://127.0.0.1:1/", "-H", "nocolon"][..], "--header"),
        // A URL needs its scheme: a stray PID or host:port is not a target.
        (&["http://127.0.0.1:1/", "4242"][..], "not a URL"),
        (&["127.0.0.1:8080/health"][..], "not a URL"),
        // Flags of another profile, and --think with --rate, are refused, not ignored.
        (
            &["http://127.0.0.1:1/", "--stages", "10,20"][..],
            "--stages do not apply to --profile single",
        ),
        (
            &["http://127.0.0.1:1/", "--profile", "scale", "--vus", "5"][..],
            "--vus do not apply to --profile scale",
        ),
        (
            &[
                "http://127.0.0.1:1/",
                "--profile",
                "breaking-point",
                "--duration",
                "5s",
            ][..],
            "--duration do not apply",
        ),
        (
            &["http://127.0.0.1:1/", "--rate", "100", "--think", "10ms"][..],
            "--think",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("load")
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn ctrl_c_ends_a_window_or_a_cooldown_at_once_and_still_writes_artifacts() {
    let mp = free_port();
    let _mock = mock_provider("load-sigint", mp);
    let url = format!("http://127.0.0.1:{mp}/api/small");
    let cases: [(&str, &[&str], u64); 2] = [
        (
            "window",
            &[
                "--profile",
                "scale",
                "--stages",
                "2,4",
                "--stage-duration",
                "20s",
            ],
            1500,
        ),
        (
            "cooldown",
            &[
                "--profile",
                "breaking-point",
                "--start",
                "2",
                "--step",
                "2",
                "--max-vus",
                "4",
                "--iteration",
                "1s",
                "--cooldown",
                "30s",
            ],
            2500,
        ),
    ];
    for (name, args, after_ms) in cases {
        let dir = tmpdir(&format!("load-sigint-{name}"));
        let mut child = Command::new(BIN)
            .args(["load", &url, "--cores", "0", "--no-progress", "--out"])
            .arg(&dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn load");
        std::thread::sleep(Duration::from_millis(after_ms));
        let sent = std::time::Instant::now();
        signal(child.id() as i32, libc::SIGINT);
        let mut exited = None;
        while sent.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(exited.is_some_and(|s| s.success()), "{name}: no clean exit");
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "{name}: took {:?}",
            sent.elapsed()
        );
        let summary: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("summary.json")).expect("summary"),
        )
        .expect("json");
        assert_eq!(summary["interrupted"], true, "{name}");
        let stages = summary["stages"].as_array().expect("stages");
        let last = stages.last().expect("a stage");
        assert_eq!(last["interrupted"], true, "{name}: {last}");
        assert!(
            last["verdict"].is_null(),
            "{name}: an interrupted stage is not judged"
        );
    }
}
