//! Minimal logging to stderr: one line per event, with a UTC timestamp and a level.
//! Never called per request on the hot path (only for rare events and rate-limited warnings).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn line(level: &str, msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}.{:03} {level} coregate: {msg}",
        now.as_secs(),
        now.subsec_millis()
    );
}

pub fn info(msg: &str) {
    line("INFO", msg);
}

pub fn warn(msg: &str) {
    line("WARN", msg);
}

pub fn error(msg: &str) {
    line("ERROR", msg);
}
