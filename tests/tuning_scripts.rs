//! Runs the tuning/ script tests (apply/revert/show/experiment) inside a new network
//! namespace. They need root and `unshare`; elsewhere this test says why it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::process::Command;

#[test]
fn tuning_scripts_in_a_network_namespace() {
    if !private_netns_allowed() || !require_tool("python3") {
        return;
    }
    // run.sh skips its own checks that need these (printing "skip - ..."); the probes say so
    // here too, and fail the test under COREGATE_REQUIRE_TOOLS=1.
    require_tool("shellcheck");
    require_tool("setpriv");
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/tests/run.sh"))
        .output()
        .expect("run tuning tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");
}
