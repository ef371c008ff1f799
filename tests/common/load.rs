//! Running `coregate load` from the tests (tests/load.rs, tests/load_profiles.rs) and
//! reading what it wrote.

use super::BIN;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

/// Runs `coregate load ARGS --out DIR` (optionally under `prlimit`) and returns its output
/// and summary.json.
pub fn load(dir: &Path, args: &[&str], nofile: Option<u32>) -> (Output, Value) {
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

pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl line parses"))
        .collect()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn errors(stage: &Value, class: &str) -> u64 {
    stage["errors"][class].as_u64().unwrap_or(0)
}
