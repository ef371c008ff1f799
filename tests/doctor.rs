//! `coregate doctor` against limits set in a child process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::BIN;
use std::process::Command;

/// What `coregate doctor` prints, run as `cmd` (the binary, with its environment).
fn doctor_stdout(cmd: &mut Command) -> String {
    let out = cmd.arg("doctor").output().expect("run doctor");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
    let text = doctor_stdout(&mut Command::new(BIN));
    for name in [
        "kernel",
        "io_uring",
        "socket_reads",
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

#[test]
fn socket_reads_names_the_path_and_the_switch() {
    let on = doctor_stdout(&mut Command::new(BIN));
    let line = on.lines().find(|l| l.contains("socket_reads")).expect(&on);
    // Either path is right for some kernel; the line says which, and why when it is the slow one.
    assert!(
        line.contains("multishot io_uring receives")
            || line.contains("no incremental provided-buffer rings"),
        "{on}"
    );
    let off = doctor_stdout(Command::new(BIN).env("COREGATE_NO_MULTISHOT_RECV", "1"));
    assert!(
        off.lines().any(|l| l.contains("warn")
            && l.contains("socket_reads")
            && l.contains("COREGATE_NO_MULTISHOT_RECV is set")),
        "{off}"
    );
}
