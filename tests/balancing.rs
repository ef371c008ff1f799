//! Endpoint weights, active health checks, and the per-endpoint figures in /stats and
//! /metrics that show both.
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

fn by_endpoint(s: &serde_json::Value, port: u16) -> serde_json::Value {
    s["total"]["providers"]["p"]["by_endpoint"][format!("127.0.0.1:{port}")].clone()
}

#[test]
fn sequential_requests_follow_the_weights() {
    let (a, b) = (free_port(), free_port());
    let (_a, _b) = (mock_provider("weights-a", a), mock_provider("weights-b", b));
    wait_port(a, Duration::from_secs(10));
    wait_port(b, Duration::from_secs(10));
    let gw = gateway(
        "weights",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n\
             weights = [3, 1]\n[[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
        ),
    );
    for i in 0..40 {
        assert_eq!(get(gw.port).status, 200, "request {i}");
    }
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["requests"] == 40);
    assert_eq!(by_endpoint(&s, a)["requests"], 30, "{s}");
    assert_eq!(by_endpoint(&s, b)["requests"], 10, "{s}");
    let m = admin_get(gw.admin, "/metrics");
    let series = format!(
        "coregate_upstream_endpoint_requests_total{{provider=\"p\",endpoint=\"127.0.0.1:{a}\"}} 30"
    );
    assert!(m.contains(&series), "{m}");
}

#[test]
fn weights_that_do_not_fit_the_endpoints_are_refused() {
    let dir = tmpdir("weights-check");
    for (weights, why) in [
        ("[1]", "2 endpoints"),
        ("[0, 0]", "all 0"),
        ("[1, 5000]", "out of range"),
    ] {
        let cfg = dir.join("w.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\n\
                 weights = {weights}\n[[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let text = output_text(&out);
        assert!(!out.status.success(), "{weights}: {text}");
        assert!(
            text.contains("providers[0].weights") && text.contains(why),
            "{text}"
        );
    }
}

/// Waits until `pred` holds for the gateway's stats, or fails with them.
fn until(gw: &Gateway, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = gw.stats();
        if pred(&s) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{what}: {}",
            s["total"]["providers"]["p"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_active_check_takes_a_dead_endpoint_out_before_a_request_meets_it() {
    let (a, b) = (free_port(), free_port());
    let _a = mock_provider("active-a", a);
    let mut b_proc = mock_provider("active-b", b);
    wait_port(a, Duration::from_secs(10));
    wait_port(b, Duration::from_secs(10));
    // Passive ejection off (it would hide whether the active check works).
    let gw = gateway(
        "active",
        "0-1",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]\n\
             eject_after_failures = 0\npool_max_idle = 0\n\
             [providers.health_check]\npath = \"/headers\"\ninterval_ms = 100\ntimeout_ms = 100\n\
             healthy_threshold = 2\nunhealthy_threshold = 2\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
        ),
    );
    for _ in 0..10 {
        assert_eq!(get(gw.port).status, 200);
    }
    drop(b_proc.child.kill());
    let _ = b_proc.child.wait();
    until(&gw, "b down", |s| by_endpoint(s, b)["down"] == true);
    let log = gw.proc.log_text();
    assert!(
        log.contains(&format!(
            "endpoint 127.0.0.1:{b} is down (health check: connect"
        )),
        "{log}"
    );
    let before = by_endpoint(&gw.stats(), b)["requests"].as_u64().unwrap();
    // Every request goes to the live endpoint: none meets the dead one, none fails over.
    for i in 0..20 {
        assert_eq!(get(gw.port).status, 200, "request {i}");
    }
    until(&gw, "20 more", |s| {
        s["total"]["providers"]["p"]["requests"] == 30
    });
    let s = gw.stats();
    assert_eq!(by_endpoint(&s, b)["requests"], before, "{s}");
    assert_eq!(
        s["total"]["providers"]["p"]["endpoints"]["failovers"], 0,
        "{s}"
    );
    let m = admin_get(gw.admin, "/metrics");
    let down =
        format!("coregate_upstream_endpoint_up{{provider=\"p\",endpoint=\"127.0.0.1:{b}\"}} 0");
    assert!(m.contains(&down), "{m}");

    // Back: two good probes and it takes requests again.
    let _b_again = mock_provider("active-b-again", b);
    until(&gw, "b up", |s| by_endpoint(s, b)["down"] == false);
    for _ in 0..10 {
        assert_eq!(get(gw.port).status, 200);
    }
    until(&gw, "b used", |s| {
        by_endpoint(s, b)["requests"].as_u64().unwrap() > before
    });
}
