//! Responses the gateway generates itself: health answers and JSON errors.
//!
//! Written straight into the connection's output buffer; the `Date` value comes from a
//! per-shard cache refreshed once a second, so formatting a date is never per request.

use std::time::{SystemTime, UNIX_EPOCH};

/// The interim answer to `Expect: 100-continue`: send the body.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) for the current second.
#[derive(Debug, Clone)]
pub struct DateCache {
    text: [u8; 29],
    second: u64,
}

impl Default for DateCache {
    fn default() -> Self {
        let mut d = DateCache {
            text: [b' '; 29],
            second: u64::MAX,
        };
        d.refresh();
        d
    }
}

impl DateCache {
    /// Re-renders the date if the wall-clock second changed.
    pub fn refresh(&mut self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now != self.second {
            self.second = now;
            self.text = imf_fixdate(now);
        }
    }

    pub fn get(&self) -> &[u8] {
        &self.text
    }
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's
/// civil-from-days), valid for every day a u64 of seconds can name.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = [b' '; 29];
    let mut w = Vec::with_capacity(29);
    w.extend_from_slice(DAYS[(days % 7) as usize]);
    w.extend_from_slice(b", ");
    push2(&mut w, day as u64);
    w.push(b' ');
    w.extend_from_slice(MONTHS[(month - 1).clamp(0, 11) as usize]);
    w.push(b' ');
    let y = year.clamp(0, 9999) as u64;
    push2(&mut w, y / 100);
    push2(&mut w, y % 100);
    w.push(b' ');
    push2(&mut w, h);
    w.push(b':');
    push2(&mut w, m);
    w.push(b':');
    push2(&mut w, s);
    w.extend_from_slice(b" GMT");
    out.copy_from_slice(&w[..29]);
    out
}

fn push2(w: &mut Vec<u8>, v: u64) {
    w.push(b'0' + (v / 10 % 10) as u8);
    w.push(b'0' + (v % 10) as u8);
}

/// Appends a decimal number.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// A complete response with a fixed body.
pub struct Reply<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// Extra header lines, each without CRLF.
    pub extra: &'a [&'a str],
}

/// What a response says about its connection (RFC 9112 §9.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Persist {
    /// `Connection: close`: the connection ends after this response.
    Close,
    /// `Connection: keep-alive`: an HTTP/1.0 client keeps the connection only when told
    /// (RFC 9112 Appendix C.2.2).
    KeepAlive10,
    /// Nothing: HTTP/1.1 connections persist by default.
    KeepAlive,
}

impl Persist {
    /// For a connection that ends after this response (`close`) or not, with an HTTP/1.0
    /// (`http10`) or later client.
    pub fn of(close: bool, http10: bool) -> Persist {
        match (close, http10) {
            (true, _) => Persist::Close,
            (false, true) => Persist::KeepAlive10,
            (false, false) => Persist::KeepAlive,
        }
    }

    /// The header line that says it (with its CRLF), empty for an HTTP/1.1 keep-alive.
    pub fn field(self) -> &'static [u8] {
        match self {
            Persist::Close => b"Connection: close\r\n",
            Persist::KeepAlive10 => b"Connection: keep-alive\r\n",
            Persist::KeepAlive => b"",
        }
    }
}

impl Reply<'_> {
    /// Appends the response to `out`. `head_only` omits the body (HEAD requests) but keeps
    /// Content-Length; `persist` says what the response announces about the connection.
    pub fn write(&self, out: &mut Vec<u8>, date: &[u8], persist: Persist, head_only: bool) {
        self.write_with(out, date, persist, head_only, b"");
    }

    /// [`Reply::write`] with more header lines (each with its CRLF) after the others.
    pub fn write_with(
        &self,
        out: &mut Vec<u8>,
        date: &[u8],
        persist: Persist,
        head_only: bool,
        more: &[u8],
    ) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_u64(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\nServer: coregate\r\nDate: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_u64(out, self.body.len() as u64);
        for line in self.extra {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(line.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(more);
        out.extend_from_slice(persist.field());
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(self.body);
        }
    }
}

/// The JSON error body used for every error the gateway generates:
/// `{"error":{"status":502,"code":"bad_gateway","message":"...","provider":"..."}}`.
pub fn json_error(status: u16, code: &str, message: &str, provider: Option<&str>) -> Vec<u8> {
    let mut err = serde_json::json!({ "status": status, "code": code, "message": message });
    if let (Some(p), Some(obj)) = (provider, err.as_object_mut()) {
        obj.insert("provider".into(), serde_json::Value::from(p));
    }
    serde_json::to_vec(&serde_json::json!({ "error": err })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_format() {
        assert_eq!(&imf_fixdate(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(&imf_fixdate(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &imf_fixdate(1_709_208_000),
            b"Thu, 29 Feb 2024 12:00:00 GMT"
        );
    }

    #[test]
    fn reply_bytes() {
        let mut out = Vec::new();
        Reply {
            status: 200,
            content_type: "application/json",
            body: b"{}",
            extra: &[],
        }
        .write(&mut out, b"D", Persist::Close, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("Connection: close\r\n\r\n{}"));
    }

    #[test]
    fn error_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&json_error(502, "bad_gateway", "x\"y", Some("p"))).unwrap();
        assert_eq!(v["error"]["provider"], "p");
        assert_eq!(v["error"]["message"], "x\"y");
    }
}
