//! `coregate doctor` against limits set in a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::BIN;
use std::process::Command;

#[test]
fn low_nofile_warns_with_the_fix() {
    let out = Command::new("sh")
        .args(["-c", &format!("ulimit -n 2000 && exec {BIN} doctor")])
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warn  nofile"), "{text}");
    assert!(text.contains("fix: raise the hard limit"), "{text}");
    assert!(
        matches!(out.status.code(), Some(1) | Some(2)),
        "{:?}\n{text}",
        out.status
    );
}

#[test]
fn each_check_prints_one_line() {
    let out = Command::new(BIN)
        .arg("doctor")
        .output()
        .expect("run doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "kernel",
        "io_uring",
        "nofile",
        "memlock",
        "somaxconn",
        "port_range",
        "cores",
    ] {
        assert!(
            text.lines().any(|l| l.contains(name)),
            "{name} missing:\n{text}"
        );
    }
}
