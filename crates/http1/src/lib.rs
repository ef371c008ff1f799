//! HTTP/1.1 wire handling shared by the gateway, the mock provider and the load generator:
//! request-head parsing and framing ([`request`]), response-head parsing ([`response`]),
//! chunked transfer coding ([`chunked`]), writing of locally generated responses ([`reply`]),
//! and WebSocket handshake keys, frame tracking and Close frames ([`websocket`]).
//! [`fuzzing`] holds the fuzz targets' bodies, which tests replay the corpus through.
//!
//! Nothing here does I/O, owns a socket or reads a clock's state beyond formatting a date:
//! functions over bytes, so that they can be fuzzed and benchmarked alone. The gateway's
//! session and provider code, the mock provider and the load generator own the sockets.

#![forbid(unsafe_code)]

pub mod chunked;
pub mod fuzzing;
pub mod reply;
pub mod request;
pub mod response;
pub mod websocket;

/// How a message body is delimited on the wire (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes follow the head (0 = no body).
    Length(u64),
    /// Chunked transfer coding; ends with the zero-size chunk and trailer section.
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

/// An error found in a peer's message, with the status to answer it with. Framing errors
/// always close the connection: once framing is in doubt, nothing after it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(400, "bad_request", message)
    }
}

/// Offset range of a sub-slice inside the buffer it was parsed from. httparse hands back a
/// static `""` for a missing reason phrase (`HTTP/1.1 200\r\n`), which lies outside `buf`:
/// that one becomes the empty range 0..0. (Subtracting its address gave a garbage range,
/// and a provider's response without a reason phrase panicked the shard that sliced it.)
pub(crate) fn range_in(buf: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    match (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize) {
        Some(start) if start + part.len() <= buf.len() => start..start + part.len(),
        _ => 0..0,
    }
}

/// Iterates the comma-separated elements of a list-valued header field, trimmed of
/// optional whitespace, skipping empty elements (RFC 9110 §5.6.1).
pub fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// The elements of every `name` field of a head (list-valued fields may repeat, RFC 9110
/// §5.3), in order. `headers` index `buf`, as [`request::parse_head`] and
/// [`response::parse_response`] leave them.
pub fn field_elements<'a>(
    buf: &'a [u8],
    headers: &'a [request::HeaderRange],
    name: &'a [u8],
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |h| buf[h.name.clone()].eq_ignore_ascii_case(name))
        .flat_map(move |h| list_elements(&buf[h.value.clone()]))
}

/// A `Max-Forwards` value (1*DIGIT), saturating at `u64::MAX` (a valid value too large for
/// a u64 is as good as unbounded).
pub fn max_forwards(value: &[u8]) -> Option<u64> {
    let v = trim_ows(value);
    let digits = !v.is_empty() && v.iter().all(u8::is_ascii_digit);
    parse_decimal(v).or(digits.then_some(u64::MAX))
}

/// Strips leading and trailing SP / HTAB.
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Parses a Content-Length field: one or more header lines, each possibly a list; all
/// values must be the same run of digits (RFC 9110 §8.6). Anything else is ambiguous framing.
pub fn parse_content_length<'a>(
    values: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<u64>, HttpError> {
    let mut found: Option<u64> = None;
    for value in values {
        let mut any = false;
        for elem in value.split(|&b| b == b',').map(trim_ows) {
            any = true;
            let n = parse_decimal(elem)
                .ok_or_else(|| HttpError::bad_request("invalid Content-Length"))?;
            match found {
                Some(prev) if prev != n => {
                    return Err(HttpError::bad_request("conflicting Content-Length values"))
                }
                _ => found = Some(n),
            }
        }
        if !any {
            return Err(HttpError::bad_request("empty Content-Length"));
        }
    }
    Ok(found)
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl(values: &[&str]) -> Result<Option<u64>, HttpError> {
        parse_content_length(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn max_forwards_is_digits_only() {
        assert_eq!(max_forwards(b" 0 "), Some(0));
        assert_eq!(max_forwards(b"12"), Some(12));
        assert_eq!(max_forwards(b"99999999999999999999999"), Some(u64::MAX));
        for bad in [&b""[..], b"-1", b"1 2", b"0x1", b"+3"] {
            assert_eq!(max_forwards(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_length_rules() {
        assert_eq!(cl(&["5"]).unwrap(), Some(5));
        assert_eq!(cl(&["5", "5"]).unwrap(), Some(5));
        assert_eq!(cl(&["5, 5"]).unwrap(), Some(5));
        assert!(cl(&["5", "6"]).is_err());
        assert!(cl(&["+5"]).is_err());
        assert!(cl(&["-1"]).is_err());
        assert!(cl(&["5 5"]).is_err());
        assert!(cl(&["0x5"]).is_err());
        assert!(cl(&[""]).is_err());
        assert!(cl(&["5,"]).is_err());
        assert!(cl(&["99999999999999999999"]).is_err());
        assert_eq!(cl(&[]).unwrap(), None);
    }

    #[test]
    fn list_trimming() {
        let v: Vec<&[u8]> = list_elements(b" gzip ,, chunked\t").collect();
        assert_eq!(v, vec![&b"gzip"[..], &b"chunked"[..]]);
    }
}
