//! The access log: one line per request or tunnel, written without I/O on the request path.
//!
//! A finished request formats its line into its shard's buffer (a `Vec`, no lock, no
//! syscall); the shard's housekeeping tick hands the buffer to the writer thread over a
//! channel; that thread alone touches the file (and reopens it on SIGUSR1, for logrotate).
//! A buffer the writer cannot take (the channel is full: the disk is slower than the
//! traffic) is dropped and counted, never waited for.
//!
//! Formats: JSON lines (the default: every field named, `null` when unknown) or nginx's
//! combined log format (the tenant as its user) with the request id, route, provider,
//! upstream, bytes in, timings and error appended.

use coregate_http1::reply::push_u64;
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// A file (appended to; reopened on SIGUSR1), `stdout`, or empty: no access log.
    pub path: String,
    pub format: Format,
    /// The share of successful (below 400) requests logged, 0..=1.
    pub sample_ok: f64,
    /// The share of failed requests (400 and above, or a gateway error) logged, 0..=1.
    pub sample_error: f64,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            path: String::new(),
            format: Format::Json,
            sample_ok: 1.0,
            sample_error: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Combined,
}

impl AccessLogConfig {
    pub fn enabled(&self) -> bool {
        !self.path.is_empty()
    }

    /// The error names the key under `access_log`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, v) in [
            ("sample_ok", self.sample_ok),
            ("sample_error", self.sample_error),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((key, format!("{v} is out of range (0..=1)")));
            }
        }
        Ok(())
    }
}

/// Everything one line says.
pub struct Entry<'a> {
    pub request_id: &'a [u8],
    pub tenant: Option<&'a str>,
    pub client: Option<IpAddr>,
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// The request's protocol version as its request line names it (`HTTP/1.1`).
    pub version: &'a str,
    pub route: Option<&'a str>,
    pub provider: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
    /// The gateway's error code when it answered (a 4xx/5xx of its own).
    pub error: Option<&'a str>,
    pub user_agent: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
}

/// A shard's side of the log: its settings and its buffer.
pub struct ShardLog {
    format: Format,
    sample_ok: f64,
    sample_error: f64,
    buf: RefCell<Vec<u8>>,
    rng: Cell<u64>,
    writer: Sender<Vec<u8>>,
    /// Lines dropped because the writer fell behind.
    pub dropped: Cell<u64>,
    lines: Cell<u64>,
}

/// Hand the buffer over before the tick when it grows past this.
const FLUSH_BYTES: usize = 1 << 20;

impl ShardLog {
    pub fn new(cfg: &AccessLogConfig, writer: Sender<Vec<u8>>, seed: u64) -> ShardLog {
        ShardLog {
            format: cfg.format,
            sample_ok: cfg.sample_ok,
            sample_error: cfg.sample_error,
            buf: RefCell::new(Vec::new()),
            rng: Cell::new(seed | 1),
            writer,
            dropped: Cell::new(0),
            lines: Cell::new(0),
        }
    }

    /// Whether lines are in the combined format (which needs User-Agent and Referer).
    pub fn combined(&self) -> bool {
        self.format == Format::Combined
    }

    /// Whether a request that ended with `status` is logged (sampling).
    pub fn wants(&self, status: u16, error: bool) -> bool {
        let share = if status >= 400 || error {
            self.sample_error
        } else {
            self.sample_ok
        };
        if share >= 1.0 {
            return true;
        }
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64 <= share
    }

    pub fn write(&self, e: &Entry<'_>) {
        let format = self.format;
        self.write_with(|buf, now| match format {
            Format::Json => json_line(buf, now, e),
            Format::Combined => combined_line(buf, now, e),
        });
    }

    /// Appends one line that `line` formats (given the time since the epoch).
    pub fn write_with(&self, line: impl FnOnce(&mut Vec<u8>, Duration)) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut buf = self.buf.borrow_mut();
        line(&mut buf, now);
        self.lines.set(self.lines.get() + 1);
        if buf.len() >= FLUSH_BYTES {
            drop(buf);
            self.flush();
        }
    }

    /// Hands the buffered lines to the writer (the shard's tick, and the end of a drain).
    pub fn flush(&self) {
        let buf = std::mem::take(&mut *self.buf.borrow_mut());
        let lines = self.lines.replace(0);
        if !buf.is_empty() && self.writer.try_send(buf).is_err() {
            self.dropped.set(self.dropped.get() + lines);
        }
    }
}

/// A JSON line, written straight into the buffer: no `Value`, no map, no allocation (the
/// serde_json version cost 15 % of a small proxied request's CPU; this one, see
/// docs/benchmarks.md, a few).
fn json_line(out: &mut Vec<u8>, now: Duration, e: &Entry<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    push_time(out, now);
    out.extend_from_slice(b"\",\"request_id\":");
    push_str(out, Some(e.request_id));
    out.extend_from_slice(b",\"tenant\":");
    push_str(out, e.tenant.map(str::as_bytes));
    out.extend_from_slice(b",\"client\":");
    push_display(out, e.client.as_ref());
    out.extend_from_slice(b",\"method\":");
    push_str(out, Some(e.method));
    out.extend_from_slice(b",\"path\":");
    push_str(out, Some(e.path));
    out.extend_from_slice(b",\"route\":");
    push_str(out, e.route.map(str::as_bytes));
    out.extend_from_slice(b",\"provider\":");
    push_str(out, e.provider.map(str::as_bytes));
    out.extend_from_slice(b",\"upstream\":");
    push_display(out, e.upstream.as_ref());
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(e.status));
    out.extend_from_slice(b",\"bytes_in\":");
    push_u64(out, e.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    push_u64(out, e.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    push_ms(out, e.duration);
    out.extend_from_slice(b",\"ttfb_ms\":");
    match e.ttfb {
        Some(t) => push_ms(out, t),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"error\":");
    push_str(out, e.error.map(str::as_bytes));
    out.extend_from_slice(b"}\n");
}

/// A JSON string (escaped as RFC 8259 requires; invalid UTF-8 becomes U+FFFD), or `null`.
pub(crate) fn push_str(out: &mut Vec<u8>, s: Option<&[u8]>) {
    let Some(s) = s else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    for chunk in s.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                0..=0x1F => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.extend_from_slice(b"\\u00");
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 0xF)]);
                }
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{FFFD}".as_bytes());
        }
    }
    out.push(b'"');
}

/// An address as a JSON string, or `null`.
fn push_display(out: &mut Vec<u8>, v: Option<&impl Address>) {
    match v {
        Some(v) => {
            out.push(b'"');
            v.push(out);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Writes an address without the formatting machinery for IPv4 (the usual case).
trait Address {
    fn push(&self, out: &mut Vec<u8>);
}

fn push_ipv4(out: &mut Vec<u8>, ip: std::net::Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        push_u64(out, u64::from(octet));
    }
}

impl Address for IpAddr {
    fn push(&self, out: &mut Vec<u8>) {
        match self {
            IpAddr::V4(ip) => push_ipv4(out, *ip),
            IpAddr::V6(ip) => drop(write!(out, "{ip}")),
        }
    }
}

impl Address for SocketAddr {
    fn push(&self, out: &mut Vec<u8>) {
        match self {
            SocketAddr::V4(a) => {
                push_ipv4(out, *a.ip());
                out.push(b':');
                push_u64(out, u64::from(a.port()));
            }
            SocketAddr::V6(a) => drop(write!(out, "{a}")),
        }
    }
}

/// Milliseconds with microsecond precision: `12.345`.
pub(crate) fn push_ms(out: &mut Vec<u8>, d: Duration) {
    let us = d.as_micros() as u64;
    push_u64(out, us / 1000);
    out.push(b'.');
    let frac = us % 1000;
    out.push(b'0' + (frac / 100) as u8);
    out.push(b'0' + (frac / 10 % 10) as u8);
    out.push(b'0' + (frac % 10) as u8);
}

/// RFC 3339 UTC with milliseconds (`2026-12-02T16:55:44.524Z`), without allocating.
pub(crate) fn push_time(out: &mut Vec<u8>, since_epoch: Duration) {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = coregate_http1::reply::civil_from_days(days as i64);
    let two = |out: &mut Vec<u8>, v: u64| {
        out.push(b'0' + (v / 10 % 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    push_u64(out, y.max(0) as u64);
    out.push(b'-');
    two(out, m as u64);
    out.push(b'-');
    two(out, d as u64);
    out.push(b'T');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.push(b'.');
    let ms = u64::from(since_epoch.subsec_millis());
    out.push(b'0' + (ms / 100) as u8);
    two(out, ms % 100);
    out.push(b'Z');
}

/// nginx's `combined` format, then coregate's fields after it:
/// `client - tenant [03/Dec/2026:07:00:15 +0000] "METHOD path HTTP/1.x" status bytes_out
/// "referer" "agent" rid= route= provider= upstream= bytes_in= ms= ttfb_ms= error=`.
/// Bytes a log parser could misread (`"`, `\`, control and non-ASCII bytes) are written
/// as `\xHH`, as nginx writes them; a field without a value is `-`.
fn combined_line(out: &mut Vec<u8>, now: Duration, e: &Entry<'_>) {
    let dash = |out: &mut Vec<u8>, v: Option<&[u8]>| match v {
        Some(v) if !v.is_empty() => push_clf(out, v),
        _ => out.push(b'-'),
    };
    match e.client {
        Some(ip) => ip.push(out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - ");
    dash(out, e.tenant.map(str::as_bytes));
    out.extend_from_slice(b" [");
    push_clf_time(out, now);
    out.extend_from_slice(b"] \"");
    if e.method == b"-" {
        // No request line was read whole (a 400 or 408 before the head ended).
        out.push(b'-');
    } else {
        push_clf(out, e.method);
        out.push(b' ');
        push_clf(out, e.path);
        out.push(b' ');
        out.extend_from_slice(e.version.as_bytes());
    }
    out.extend_from_slice(b"\" ");
    push_u64(out, u64::from(e.status));
    out.push(b' ');
    push_u64(out, e.bytes_out);
    out.extend_from_slice(b" \"");
    dash(out, e.referer);
    out.extend_from_slice(b"\" \"");
    dash(out, e.user_agent);
    out.extend_from_slice(b"\" rid=");
    dash(out, Some(e.request_id));
    out.extend_from_slice(b" route=");
    dash(out, e.route.map(str::as_bytes));
    out.extend_from_slice(b" provider=");
    dash(out, e.provider.map(str::as_bytes));
    out.extend_from_slice(b" upstream=");
    match e.upstream {
        Some(a) => a.push(out),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" bytes_in=");
    push_u64(out, e.bytes_in);
    out.extend_from_slice(b" ms=");
    push_ms(out, e.duration);
    out.extend_from_slice(b" ttfb_ms=");
    match e.ttfb {
        Some(t) => push_ms(out, t),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" error=");
    dash(out, e.error.map(str::as_bytes));
    out.push(b'\n');
}

/// `v` with `"`, `\`, and bytes below 0x20 or above 0x7E as `\xHH` (nginx's default
/// `escape`): a quoted field stays one field, a line one line.
fn push_clf(out: &mut Vec<u8>, v: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in v {
        if b == b'"' || b == b'\\' || !(0x20..0x7F).contains(&b) {
            out.extend_from_slice(b"\\x");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.push(b);
        }
    }
}

/// nginx's `$time_local` in UTC: `03/Dec/2026:07:00:15 +0000`.
fn push_clf_time(out: &mut Vec<u8>, since_epoch: Duration) {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = coregate_http1::reply::civil_from_days(days as i64);
    let two = |out: &mut Vec<u8>, v: u64| {
        out.push(b'0' + (v / 10 % 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    two(out, d as u64);
    out.push(b'/');
    let month = MONTHS
        .get((m as usize).wrapping_sub(1))
        .copied()
        .unwrap_or(b"???");
    out.extend_from_slice(month);
    out.push(b'/');
    push_u64(out, y.max(0) as u64);
    out.push(b':');
    two(out, rem / 3600);
    out.push(b':');
    two(out, rem % 3600 / 60);
    out.push(b':');
    two(out, rem % 60);
    out.extend_from_slice(b" +0000");
}

/// What the writer thread is told.
pub enum Message {
    /// Reopen the file (SIGUSR1: logrotate moved it).
    Reopen,
}

/// The writer thread's ends: shards send buffers on `lines`, the signal thread `Reopen`.
pub struct Writer {
    pub lines: Sender<Vec<u8>>,
    pub control: Sender<Message>,
}

/// Opens `path` (an error names `key`, the config key) and starts its writer thread.
pub fn start(path: &str, key: &str) -> Result<Writer, String> {
    let path = path.to_string();
    let mut out = open(&path).map_err(|e| format!("{key}: cannot open {path}: {e}"))?;
    let (lines, lines_rx) = crossbeam_channel::bounded::<Vec<u8>>(1024);
    let (control, control_rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("coregate-access-log".into())
        .spawn(move || run(&path, &mut out, lines_rx, control_rx))
        .map_err(|e| format!("cannot start the access log thread: {e}"))?;
    Ok(Writer { lines, control })
}

fn open(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    if path == "stdout" {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(Box::new(f))
}

fn run(
    path: &str,
    out: &mut Box<dyn Write + Send>,
    lines: Receiver<Vec<u8>>,
    control: Receiver<Message>,
) {
    loop {
        crossbeam_channel::select! {
            recv(lines) -> buf => match buf {
                Ok(buf) => {
                    if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                        coregate_runtime::log::warn(&format!("access log: cannot write {path}: {e}"));
                    }
                }
                Err(_) => return,
            },
            recv(control) -> msg => match msg {
                Ok(Message::Reopen) => match open(path) {
                    Ok(f) => {
                        *out = f;
                        coregate_runtime::log::info(&format!("access log: reopened {path}"));
                    }
                    Err(e) => coregate_runtime::log::warn(&format!(
                        "access log: cannot reopen {path} ({e}); still writing the old file"
                    )),
                },
                Err(_) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_parse_and_escape() {
        let e = Entry {
            request_id: b"r-1",
            tenant: Some("acme"),
            client: Some("10.0.0.7".parse().unwrap()),
            method: b"GET",
            path: b"/a\"b\\c\x01\xff",
            version: "HTTP/1.0",
            route: None,
            provider: Some("p"),
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            status: 200,
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_micros(1_234_567),
            ttfb: Some(Duration::from_micros(5)),
            error: None,
            user_agent: None,
            referer: None,
        };
        let mut out = Vec::new();
        json_line(&mut out, Duration::from_millis(1_764_694_544_524), &e);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["time"], "2025-12-02T16:55:44.524Z");
        assert_eq!(v["path"], "/a\"b\\c\u{1}\u{FFFD}");
        assert_eq!(v["duration_ms"], 1234.567);
        assert_eq!(v["ttfb_ms"], 0.005);
        assert_eq!(v["route"], serde_json::Value::Null);
        assert_eq!(v["client"], "10.0.0.7");
        assert_eq!(v["upstream"], "127.0.0.1:9");
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn combined_lines_follow_nginx_and_escape_as_it_does() {
        let e = Entry {
            request_id: b"r-1",
            tenant: Some("acme"),
            client: Some("10.0.0.7".parse().unwrap()),
            method: b"GET",
            path: b"/a\"b\\c\x01\xff",
            version: "HTTP/1.0",
            route: Some("/v1/"),
            provider: None,
            upstream: Some("127.0.0.1:9".parse().unwrap()),
            status: 200,
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_micros(1_234_567),
            ttfb: None,
            error: None,
            user_agent: Some(b"ua \"x\""),
            referer: None,
        };
        let mut out = Vec::new();
        combined_line(&mut out, Duration::from_millis(1_764_694_544_524), &e);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.7 - acme [02/Dec/2025:16:55:44 +0000] \"GET /a\\x22b\\x5Cc\\x01\\xFF \
             HTTP/1.0\" 200 34 \"-\" \"ua \\x22x\\x22\" rid=r-1 route=/v1/ provider=- \
             upstream=127.0.0.1:9 bytes_in=12 ms=1234.567 ttfb_ms=- error=-\n"
        );
    }
}
