//! Logging to stderr: one line per event, an RFC 3339 UTC timestamp with milliseconds, a
//! level, and the message; or the same as one JSON object per line.
//!
//! The level and format are set once at start (`--log-level`, `--log-json`, or the
//! `COREGATE_LOG` and `COREGATE_LOG_FORMAT` environment variables) and read with one relaxed
//! atomic load per event. Never called per request on the hot path: only for rare events and
//! rate-limited warnings.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much is logged, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

impl Level {
    pub fn parse(s: &str) -> Result<Level, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" => Ok(Level::Debug),
            other => Err(format!(
                "{other:?} is not a log level (error, warn, info, debug)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets the level and format: the arguments when given, else `COREGATE_LOG` (a level) and
/// `COREGATE_LOG_FORMAT` (`json` or `text`), else info and text.
pub fn init(level: Option<&str>, json: bool) -> Result<(), String> {
    let from_env = std::env::var("COREGATE_LOG").ok();
    let level = match level.or(from_env.as_deref()) {
        Some(l) => Level::parse(l)?,
        None => Level::Info,
    };
    LEVEL.store(level as u8, Ordering::Relaxed);
    let json =
        json || std::env::var("COREGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    JSON.store(json, Ordering::Relaxed);
    Ok(())
}

/// Whether events of `level` are logged.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
pub fn rfc3339(since_epoch: std::time::Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = coregate_http1::reply::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

fn line(level: Level, msg: &str) {
    if !enabled(level) {
        return;
    }
    let ts = rfc3339(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    );
    let mut err = std::io::stderr().lock();
    let _ = if JSON.load(Ordering::Relaxed) {
        let msg = serde_json::Value::from(msg);
        writeln!(
            err,
            "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"msg\":{msg}}}",
            level.name().to_ascii_lowercase()
        )
    } else {
        writeln!(err, "{ts} {} coregate: {msg}", level.name())
    };
}

pub fn error(msg: &str) {
    line(Level::Error, msg);
}

pub fn warn(msg: &str) {
    line(Level::Warn, msg);
}

pub fn info(msg: &str) {
    line(Level::Info, msg);
}

pub fn debug(msg: &str) {
    line(Level::Debug, msg);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            rfc3339(Duration::from_millis(0)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(Duration::from_millis(951_782_400_123)),
            "2000-02-29T00:00:00.123Z"
        );
        assert_eq!(
            rfc3339(Duration::from_secs(1_796_219_547)),
            "2026-12-02T13:52:27.000Z"
        );
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("WARNING").unwrap(), Level::Warn);
        assert!(Level::parse("loud").is_err());
        assert!(Level::Error < Level::Debug);
    }
}
