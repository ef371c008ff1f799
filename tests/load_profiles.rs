//! `coregate load`'s profiles and its command line against real processes: the
//! breaking-point search, open-loop latency, the scale profile's artifacts, source
//! addresses, bad flags and Ctrl-C. Runs are short; what is checked is never speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::load::*;
use common::*;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

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
