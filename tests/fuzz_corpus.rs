//! Replays the fuzz corpus (fuzz/corpus/<target>/) and any crash artifacts a local fuzz run
//! left (fuzz/artifacts/<target>/, not committed) through the very code the fuzz targets
//! run: coregate_http1::fuzzing::*, the config loader and coregate_gateway::meter::fuzzing. So every input the fuzzer ever
//! kept stays a regression test without libFuzzer or a nightly toolchain. A panicking input
//! fails the test with its file name; so does one that runs too long (a hang).
//! docs/fuzzing.md describes the targets and how to grow the corpus.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use coregate_gateway::config::Config;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The longest one input may run: the slowest corpus input takes milliseconds (in a debug
/// build); anything near this is a hang the fuzzer's -timeout=5 would also report.
const PER_INPUT: Duration = Duration::from_secs(10);

/// A fuzz target: its name (its directories' name) and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 6] = [
    ("request_head", coregate_http1::fuzzing::request_head),
    ("chunked", coregate_http1::fuzzing::chunked),
    ("response_head", coregate_http1::fuzzing::response_head),
    (
        "websocket_frames",
        coregate_http1::fuzzing::websocket_frames,
    ),
    ("config", config),
    ("meter", coregate_gateway::meter::fuzzing::body),
];

/// The config target's body, as in fuzz/fuzz_targets/config.rs.
fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Inputs naming device files are skipped there too: Config::parse reads the files a
    // config names, and /dev/zero never ends.
    if ["dev/", "proc/", "sys/"].iter().any(|d| text.contains(d)) {
        return;
    }
    if let Ok(cfg) = Config::parse(text, "fuzz") {
        let _ = cfg.validate("fuzz");
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly inside `dir` (none if it does not exist), sorted.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

enum Progress {
    Start(PathBuf),
    Done { path: PathBuf, panicked: bool },
}

/// Runs `body` on every file in `dirs` on a worker thread; returns how many ran and which
/// panicked. Panics, naming the file, if one runs past `PER_INPUT`.
fn replay(dirs: &[PathBuf], body: fn(&[u8])) -> (usize, Vec<PathBuf>) {
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| files_in(d)).collect();
    let (tx, rx) = mpsc::channel();
    // Not joined on a hang: the test fails, and the process ends with it.
    std::thread::spawn(move || {
        for path in files {
            let data = std::fs::read(&path).expect("read input");
            if tx.send(Progress::Start(path.clone())).is_err() {
                return;
            }
            let panicked = std::panic::catch_unwind(|| body(&data)).is_err();
            if tx.send(Progress::Done { path, panicked }).is_err() {
                return;
            }
        }
    });
    let (mut ran, mut failed, mut current) = (0, Vec::new(), None);
    loop {
        match rx.recv_timeout(PER_INPUT) {
            Ok(Progress::Start(path)) => current = Some(path),
            Ok(Progress::Done { path, panicked }) => {
                ran += 1;
                if panicked {
                    failed.push(path);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return (ran, failed),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{current:?} ran longer than {PER_INPUT:?}: a hang")
            }
        }
    }
}

/// Replays the corpus and the local artifacts of `target`; fails naming each panicking file.
fn replay_target(target: &str, body: fn(&[u8])) {
    let dirs = [
        fuzz_dir().join("corpus").join(target),
        fuzz_dir().join("artifacts").join(target),
    ];
    let (ran, failed) = replay(&dirs, body);
    assert!(ran > 0, "no input replayed for {target}");
    assert!(
        failed.is_empty(),
        "{target}: {} of {ran} inputs panicked (messages above): {failed:#?}",
        failed.len()
    );
}

#[test]
fn request_head_corpus() {
    replay_target("request_head", coregate_http1::fuzzing::request_head);
}

#[test]
fn chunked_corpus() {
    replay_target("chunked", coregate_http1::fuzzing::chunked);
}

#[test]
fn response_head_corpus() {
    replay_target("response_head", coregate_http1::fuzzing::response_head);
}

#[test]
fn websocket_frames_corpus() {
    replay_target(
        "websocket_frames",
        coregate_http1::fuzzing::websocket_frames,
    );
}

#[test]
fn config_corpus() {
    replay_target("config", config);
}

/// Each target's corpus is committed and holds its hand-written seeds (`seed-*`: valid
/// messages, smuggling shapes, frame streams, the example configs), so the replay above
/// can never pass by testing nothing.
#[test]
fn every_corpus_holds_its_seeds() {
    for (target, _) in TARGETS {
        let files = files_in(&fuzz_dir().join("corpus").join(target));
        let seeds = files
            .iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            })
            .count();
        assert!(
            seeds >= 12,
            "{target}: {seeds} seeds in {} files",
            files.len()
        );
    }
}

/// Reproducers of bugs found by fuzzing that are not fixed yet (fuzz/known-bugs/README.md
/// says which and where; none may be open). Run with `--ignored` after a fix; then move the
/// file into fuzz/corpus/<target>/.
#[test]
#[ignore = "reproduces known, unfixed bugs (fuzz/known-bugs/README.md)"]
fn known_bugs_are_fixed() {
    let known = fuzz_dir().join("known-bugs");
    for (target, body) in TARGETS {
        let (_, failed) = replay(&[known.join(target)], body);
        assert!(failed.is_empty(), "{target}: {failed:#?}");
    }
}
