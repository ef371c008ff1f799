//! RFC 9110/9112 conformance and request-smuggling probes: tests/conformance/probe.py sends
//! ~145 raw-socket cases (framing conflicts, bad chunking, odd request lines, interim
//! responses, malformed or unasked-for provider bytes...) through two real gateways: one in
//! front of the mock provider (request side), one in front of the probe's own scripted
//! provider (response side).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

/// `coregate serve --upstream` on free ports, on core 0.
fn serve_upstream(name: &str, upstream: &str) -> (Proc, u16) {
    let (port, admin) = (free_port(), free_port());
    let p = spawn(
        &[
            "serve",
            "--cores",
            "0",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "--upstream",
            upstream,
        ],
        tmpdir(name).join("gateway.log"),
    );
    wait_port(port, Duration::from_secs(10));
    (p, port)
}

/// Runs probe.py with `args`; fails with the failing cases' lines.
fn probe(args: &[String]) {
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/probe.py"
        ))
        .args(args)
        .output()
        .expect("run python3 probe.py");
    let report = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("FAIL") || l.starts_with("       "))
        .collect();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        failures.join("\n"),
        report.lines().last().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("SUMMARY"), "{report}");
}

#[test]
fn rfc9112_conformance_and_smuggling_probe() {
    if !require_tool("python3") {
        return;
    }
    let mp = free_port();
    let _mock = mock_provider("conformance", mp);
    let (mut gw_a, a) = serve_upstream("conformance-a", &format!("127.0.0.1:{mp}"));
    let fake = free_port();
    let (mut gw_b, b) = serve_upstream("conformance-b", &format!("127.0.0.1:{fake}"));
    probe(&[
        format!("127.0.0.1:{a}"),
        format!("127.0.0.1:{b}"),
        format!("127.0.0.1:{fake}"),
    ]);
    for gw in [&mut gw_a, &mut gw_b] {
        assert!(gw.alive(), "a gateway died: {}", gw.log_text());
        assert!(!gw.log_text().contains("panicked"), "{}", gw.log_text());
    }
}

/// The request-side cases once more, through the TLS listener: framing and smuggling
/// rules must not change when the bytes arrive decrypted by rustls.
#[test]
fn rfc9112_conformance_probe_through_the_tls_listener() {
    if !require_tool("python3") {
        return;
    }
    let dir = tmpdir("conformance-tls");
    let ca = common::certs::TestCa::new(&dir, "probe");
    let leaf = ca.leaf(&dir, "gw", &["localhost"], false);
    let mp = free_port();
    let _mock = mock_provider("conformance-tls", mp);
    let tls_port = free_port();
    let server = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    let providers = format!(
        "[[providers]]\nname = \"mock\"\nendpoints = [\"127.0.0.1:{mp}\"]\n\
         [[routes]]\nprefix = \"/\"\nprovider = \"mock\"\n"
    );
    let mut gw = gateway_with_server("conformance-tls-gw", "0", &server, &providers);
    wait_port(tls_port, Duration::from_secs(10));
    probe(&[
        format!("127.0.0.1:{tls_port}"),
        "--tls-ca".into(),
        ca.pem.display().to_string(),
    ]);
    let s = gw.stats();
    assert!(
        s["total"]["tls"]["handshakes"].as_u64().unwrap() > 100,
        "{}",
        s["total"]["tls"]
    );
    assert!(gw.proc.alive(), "the gateway died: {}", gw.proc.log_text());
}
