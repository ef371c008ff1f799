//! What an operator sees: log lines (format, level, JSON), failures logged with their
//! provider and address, a second gateway on a served address refused, admin errors in the
//! data plane's JSON shape, the renamed failure metric, the mock's 400 for a bad knob, and
//! doctor's listen-port warning.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` at the start of a text log line.
fn starts_with_rfc3339(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit))
}

fn wait_for_log(p: &Proc, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let log = p.log_text();
        if log.contains(needle) || Instant::now() > end {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn log_lines_are_rfc3339_and_upstream_failures_are_logged_rate_limited() {
    let dead = free_port();
    let gw = gateway(
        "operator-logs",
        "0",
        &format!(
            "[[providers]]\nname = \"dead\"\nendpoints = [\"127.0.0.1:{dead}\"]\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"dead\"\n"
        ),
    );
    for _ in 0..20 {
        let r = request(
            gw.port,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(r.status, 502);
    }
    let needle = format!("provider \"dead\" at 127.0.0.1:{dead}: 502 connect_refused");
    let log = wait_for_log(&gw.proc, &needle);
    assert!(log.contains(&needle), "{log}");
    // Twenty failures within the rate limit's window: one line.
    assert_eq!(log.matches("502 connect_refused").count(), 1, "{log}");
    // The one endpoint is ejected once; requests sent to it while it is out (it is the only
    // one) do not eject it again and again.
    assert_eq!(log.matches("ejected for").count(), 1, "{log}");
    for line in log.lines() {
        assert!(starts_with_rfc3339(line), "{line:?}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains(" INFO coregate: serving on")),
        "{log}"
    );
}

#[test]
fn json_logs_and_the_level_from_the_environment() {
    let dir = tmpdir("operator-json");
    let (port, admin) = (free_port(), free_port());
    let args = [
        "serve",
        "--cores",
        "0",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        &format!("127.0.0.1:{admin}"),
    ];
    let json = spawn(&[&args[..], &["--log-json"]].concat(), dir.join("json.log"));
    wait_port(port, Duration::from_secs(10));
    let log = wait_for_log(&json, "serving on");
    let line = log.lines().find(|l| l.contains("serving on")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    assert_eq!(v["level"], "info");
    assert!(starts_with_rfc3339(v["ts"].as_str().unwrap()), "{line}");
    drop(json);
    wait_port_closed(port, Duration::from_secs(10));

    let quiet = spawn_command(
        Command::new(BIN).args(args).env("COREGATE_LOG", "error"),
        dir.join("quiet.log"),
    );
    wait_port(port, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!quiet.log_text().contains("INFO"), "{}", quiet.log_text());

    let out = Command::new(BIN)
        .args(["--log-level", "loud", "check", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a log level"));
}

#[test]
fn a_second_gateway_on_a_served_address_is_refused() {
    let gw = gateway("operator-bind-a", "0", "");
    let dir = tmpdir("operator-bind-b");
    let second = |extra: &str| {
        let cfg = dir.join("b.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{}\"\ncores = \"0\"\n{extra}\n[admin]\nlisten = \
                 \"\"\n[mock]\nembedded = \"off\"\n",
                gw.port
            ),
        )
        .unwrap();
        cfg
    };
    let out = Command::new(BIN)
        .args(["serve", "--config", second("").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("another coregate already serves"), "{err}");
    assert!(err.contains("serve --takeover"), "{err}");

    // Asked for (a hand-made takeover), it starts beside the first.
    let mut b = spawn(
        &[
            "serve",
            "--config",
            second("allow_shared_listen = true").to_str().unwrap(),
        ],
        dir.join("b.log"),
    );
    let log = wait_for_log(&b, "serving on");
    assert!(log.contains("serving on"), "{log}");
    assert!(b.alive());
}

#[test]
fn admin_errors_use_the_json_error_shape_and_the_failure_metric_reads_naturally() {
    let gw = gateway("operator-admin", "0", "");
    let body = admin_get(gw.admin, "/nope");
    let v: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(v["error"]["code"], "not_found");
    let m = admin_get(gw.admin, "/metrics");
    assert!(
        m.contains("# TYPE coregate_upstream_failures_total counter"),
        "{m}"
    );
    assert!(
        m.contains("DEPRECATED: renamed coregate_upstream_failures_total"),
        "{m}"
    );
}

#[test]
fn the_mock_answers_a_bad_knob_with_400() {
    let port = free_port();
    let _mock = mock_provider("operator-knob", port);
    for q in ["status=99", "latency_ms=abc", "error_rate=2"] {
        let r = request(
            port,
            &format!("GET /bytes?{q} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(r.json()["error"]["code"], "bad_knob", "{q}");
    }
    let r = request(
        port,
        "GET /bytes?size=3&model=nova HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"xxx");
}

#[test]
fn doctor_warns_about_listen_ports_in_the_ephemeral_range() {
    let Some((lo, _)) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
                .map(|lo| (lo, ()))
        })
    else {
        return;
    };
    let dir = tmpdir("operator-doctor");
    let cfg = dir.join("d.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:{}\"\n", lo + 1),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["doctor", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("listen_ports")).unwrap();
    assert!(
        line.contains("warn") && line.contains("server.listen"),
        "{text}"
    );
    assert!(!text.contains("cores [] "), "{text}");
}

#[test]
fn the_embedded_mock_runs_on_the_gateways_first_core() {
    let gw = gateway("operator-mock-core", "0", "");
    let pid = gw.proc.pid();
    let end = Instant::now() + Duration::from_secs(5);
    let allowed = loop {
        let found = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "coregate-mock")
            })
            .and_then(|t| std::fs::read_to_string(t.path().join("status")).ok());
        if let Some(status) = found {
            break status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim()
                .to_string();
        }
        assert!(Instant::now() < end, "no coregate-mock thread");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(allowed, "0");
}

#[test]
fn small_defaults_follow_what_was_set_and_fit_a_low_fd_limit() {
    let dir = tmpdir("operator-defaults");
    // pool_max_total alone: the idle cap follows it instead of failing check.
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\"]\npool_max_total = 8\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Under a 1,024-descriptor limit the default pool is lowered, and the gateway starts.
    let (port, up) = (free_port(), free_port());
    let gw = spawn_command(
        Command::new("sh").args([
            "-c",
            &format!(
                "ulimit -n 1024 && exec {BIN} serve --cores 0 --listen 127.0.0.1:{port} \
                 --admin '' --upstream 127.0.0.1:{up}"
            ),
        ]),
        dir.join("gw.log"),
    );
    wait_port(port, Duration::from_secs(10));
    let log = gw.log_text();
    assert!(
        log.contains("pool_max_total lowered from its default 1024"),
        "{log}"
    );
}

#[test]
fn past_the_cap_clients_get_503_at_once_and_silent_ones_are_closed() {
    let gw = gateway_with_server(
        "operator-shed",
        "0",
        "max_connections_per_shard = 2",
        "[http]\nfirst_byte_timeout_ms = 700\n",
    );
    // Two connections that never send a byte hold both slots (each counted before the next
    // opens: wait_port's probes may still hold a slot for a moment).
    let mut silent = Vec::new();
    for n in 1..=2u64 {
        gw.stats_until(|s| s["total"]["connections_active"] == n - 1);
        silent.push(Reader::new(gw.connect()));
        gw.stats_until(|s| s["total"]["connections_active"] == n);
    }
    let started = Instant::now();
    let r = request(gw.port, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    // The first-byte timeout closes the silent ones, and the slots serve again.
    for mut s in silent {
        assert!(s.closed_within(Duration::from_secs(3)));
    }
    let r = request(gw.port, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 200);
    let s = gw.stats_until(|s| s["total"]["accept_paused"].as_u64() >= Some(1));
    assert!(
        s["total"]["accept_paused"].as_u64() >= Some(1),
        "{}",
        s["total"]
    );
}

#[test]
fn memory_goes_back_to_the_os_after_many_connections_close() {
    use std::io::{Read, Write};
    let gw = gateway("operator-memory", "0", "");
    let pid = gw.proc.pid();
    let start = rss_kib(pid);
    // 4,000 connections where the fd limit allows (less on a host that caps it lower; the
    // release starts once 256 closed).
    let n = 4000
        .min(raise_nofile().saturating_sub(512) as usize)
        .max(300);
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = gw.connect();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let _ = c.read(&mut buf).unwrap();
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let peak = rss_kib(pid);
    drop(conns);
    // Within seconds of the connections closing, most of what they took is returned.
    let end = Instant::now() + Duration::from_secs(10);
    let released = loop {
        let now = rss_kib(pid);
        if now <= start + (peak - start) / 2 || Instant::now() > end {
            break now;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        released <= start + (peak - start) / 2,
        "RSS {start} KiB at start, {peak} with {n} connections, {released} 10 s after they closed"
    );
}
