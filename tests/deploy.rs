//! The deployment files are checked, not only written: the systemd unit passes
//! `systemd-analyze verify`, the Kubernetes manifest passes kubernetes-validate (strict, the
//! schemas bundled with it), the config they ship passes `coregate check` and is the same in
//! both, the seccomp profile leaves io_uring allowed, a drain fits the stop timeouts, the unit
//! can write its logs and the pod asks for no capability it could not use.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::certs::TestCa;
use common::*;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

#[test]
fn the_systemd_unit_reloads_with_sighup_after_a_check() {
    let unit = read("deploy/systemd/coregate.service");
    let reloads: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecReload="))
        .collect();
    assert_eq!(
        reloads,
        [
            "ExecReload=/usr/local/bin/coregate check /etc/coregate/coregate.toml",
            "ExecReload=/bin/kill -HUP $MAINPID"
        ]
    );
}

#[test]
fn the_systemd_unit_verifies() {
    if !require_tool("systemd-analyze") {
        return;
    }
    let dir = tmpdir("deploy-systemd");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = read("deploy/systemd/coregate.service").replace("/usr/local/bin/coregate", BIN);
    let path = dir.join("coregate.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("coregate.service:"), "{text}");
}

#[test]
fn the_kubernetes_manifest_validates_and_ships_the_same_config() {
    let manifest = read("deploy/k8s/coregate.yaml");
    // The ConfigMap's coregate.toml is deploy/coregate.toml, indented.
    let embedded: String = manifest
        .split("coregate.toml: |\n")
        .nth(1)
        .unwrap()
        .split("---\n")
        .next()
        .unwrap()
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert_eq!(embedded.trim(), read("deploy/coregate.toml").trim());
    if !require_tool("kubernetes-validate") {
        return;
    }
    let out = Command::new("kubernetes-validate")
        .args(["--strict", &format!("{ROOT}/deploy/k8s/coregate.yaml")])
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("daemonset/coregate"), "{text}");
}

#[test]
fn the_shipped_config_passes_check() {
    let dir = tmpdir("deploy-config");
    let ca = TestCa::new(&dir, "deploy");
    let leaf = ca.leaf(&dir, "edge", &["edge.example.com"], false);
    let text = read("deploy/coregate.toml")
        .replace("/etc/coregate/tls/tls.crt", leaf.cert.to_str().unwrap())
        .replace("/etc/coregate/tls/tls.key", leaf.key.to_str().unwrap());
    let path = dir.join("coregate.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg(&path)
        .env("OPENAI_API_KEY", "sk-deploy-test")
        .env("DEEPGRAM_API_KEY", "dg-deploy-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(!shown.contains("deploy-test"), "{shown}");
}

#[test]
fn the_seccomp_profile_leaves_io_uring_allowed() {
    let profile: serde_json::Value =
        serde_json::from_str(&read("deploy/k8s/seccomp/coregate.json")).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ALLOW");
    let denied: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(denied.contains(&"ptrace") && denied.contains(&"bpf"));
    assert!(
        !denied.iter().any(|n| n.starts_with("io_uring")),
        "{denied:?}"
    );
}

/// A number written as `key = N` or `key: N` in `text`.
fn number(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|rest| rest.trim_start_matches([' ', '=', ':']).trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not found"))
}

#[test]
fn a_drain_fails_health_first_and_fits_the_stop_timeouts() {
    let config = read("deploy/coregate.toml");
    let delay = number(&config, "drain_delay_ms");
    let drain = number(&config, "drain_timeout_ms");
    // A balancer checking /health every 2 s must see the 503 before the listeners close.
    assert!(delay > 2000, "drain_delay_ms = {delay}");
    let manifest = read("deploy/k8s/coregate.yaml");
    let grace = number(&manifest, "terminationGracePeriodSeconds");
    assert!((delay + drain) / 1000 < grace, "grace {grace} s");
    let unit = read("deploy/systemd/coregate.service");
    let stop = number(&unit, "TimeoutStopSec");
    assert!((delay + drain) / 1000 < stop, "TimeoutStopSec {stop}");
    // preStop starts the drain itself (coregate is the container's PID 1) and waits for it.
    assert!(
        manifest.contains("kill -TERM 1; while kill -0 1 2>/dev/null; do sleep 1; done"),
        "{manifest}"
    );
}

#[test]
fn the_unit_can_write_logs_and_the_pod_asks_for_no_capability() {
    let unit = read("deploy/systemd/coregate.service");
    // ProtectSystem=strict: the log directory is the one writable place.
    assert!(unit.contains("\nProtectSystem=strict\n"));
    assert!(unit.contains("\nLogsDirectory=coregate\n"), "{unit}");
    // CPUAffinity is the host's: the commented line says how to set it.
    assert!(unit.contains("systemctl edit coregate") && unit.contains("#CPUAffinity="));
    let manifest = read("deploy/k8s/coregate.yaml");
    // A capability added for a non-root user never reaches the process.
    assert!(manifest.contains("drop: [\"ALL\"]"), "{manifest}");
    assert!(
        !manifest
            .lines()
            .any(|l| !l.trim_start().starts_with('#') && l.contains("add:")),
        "{manifest}"
    );
}
