//! Request-head parsing and message framing for the server side (RFC 9112 §2–§7).
//!
//! [`parse_head`] turns the bytes of a complete head into a [`RequestHead`] whose fields are
//! offset ranges into the caller's buffer, so the hot path allocates nothing but the header
//! index it reuses across requests. Everything that makes framing ambiguous is rejected here,
//! before a single body byte is read or forwarded — this is the smuggling boundary.

use super::{list_elements, parse_content_length, range_in, Framing, HttpError};
use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header fields the parser has room for without heap allocation.
const STACK_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// The request-target form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetForm {
    Origin,
    Absolute,
    Asterisk,
}

/// One header field as ranges into the request buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRange {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head. Ranges index the buffer passed to [`parse_head`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub version: Version,
    pub form: TargetForm,
    /// Path and query to route on and to forward (origin-form even for absolute-form input).
    pub path: Range<usize>,
    /// The authority: from an absolute-form target, else the Host field (may be empty).
    pub host: Range<usize>,
    pub framing: Framing,
    /// Whether the client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field (WebSocket handshakes).
    pub upgrade: bool,
    /// Length of the head including the final CRLF.
    pub head_len: usize,
    /// Whether the request carries a body (for 100-continue and discard decisions).
    pub has_body: bool,
}

impl RequestHead {
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.method.clone()]
    }
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.path.clone()]
    }
    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method(buf) == b"HEAD"
    }
}

/// Limits applied while parsing; a head over them is answered with 431 (or 414).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
}

#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed; nothing was consumed.
    Partial,
    Complete(RequestHead),
}

/// A request line whose version httparse refused. `HTTP/1.x` with a higher minor version
/// is served as HTTP/1.1 (RFC 9112 §2.3: process it as the highest minor version known);
/// another major version gets 505; anything else (`http/1.1`, `HTTP/1.10`, a target with a
/// space in it) is a syntax error, 400.
fn parse_other_version(
    buf: &[u8],
    limits: Limits,
    headers: &mut Vec<HeaderRange>,
) -> Result<Parsed, HttpError> {
    let malformed = || HttpError::bad_request("malformed request line");
    // Empty lines before the request line are allowed (RFC 9112 §2.2).
    let begin = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[begin..];
    let line_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let line = rest[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&rest[..line_end]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(_target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    // httparse refuses a version as soon as it differs from HTTP/1.0 or 1.1, even while
    // the line is still arriving: wait for the rest when it can still become HTTP/d.d.
    let line_complete = line_end < rest.len();
    if !line_complete && is_version_prefix(version) {
        return check_partial(buf, limits).map(|()| Parsed::Partial);
    }
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            // Same length, one byte changed: the header ranges found in the copy are the
            // ranges in `buf`, and the version byte itself is never forwarded.
            let mut patched = buf.to_vec();
            patched[begin + line.len() - 1] = b'1';
            match parse_once(&patched, limits, headers) {
                Err(Refused::Version) => Err(malformed()),
                Err(Refused::Http(e)) => Err(e),
                Ok(p) => Ok(p),
            }
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HttpError::new(
                505,
                "http_version_not_supported",
                "only HTTP/1.x is served",
            ))
        }
        _ => Err(malformed()),
    }
}

/// Whether `v` is a proper prefix of some `HTTP/<digit>.<digit>`.
fn is_version_prefix(v: &[u8]) -> bool {
    v.len() < 8
        && v.iter().enumerate().all(|(i, &b)| match i {
            0..=4 => b == b"HTTP/"[i],
            6 => b == b'.',
            _ => b.is_ascii_digit(),
        })
}

/// Why [`parse_once`] refused a head.
enum Refused {
    /// httparse refused the version: [`parse_other_version`] looks closer.
    Version,
    Http(HttpError),
}

impl From<HttpError> for Refused {
    fn from(e: HttpError) -> Refused {
        Refused::Http(e)
    }
}

/// Parses one request head from the start of `buf`, filling `headers` (cleared first) with
/// the header index. Returns `Partial` while the head is incomplete and within limits.
pub fn parse_head(
    buf: &[u8],
    limits: Limits,
    headers: &mut Vec<HeaderRange>,
) -> Result<Parsed, HttpError> {
    match parse_once(buf, limits, headers) {
        Ok(p) => Ok(p),
        Err(Refused::Http(e)) => Err(e),
        Err(Refused::Version) => parse_other_version(buf, limits, headers),
    }
}

fn parse_once(
    buf: &[u8],
    limits: Limits,
    headers: &mut Vec<HeaderRange>,
) -> Result<Parsed, Refused> {
    headers.clear();
    let max = limits.max_headers;
    // Uninitialised slots: zeroing 64 headers (2 KiB) per request showed in profiles.
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap: Vec<httparse::Header<'_>>;
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max <= STACK_HEADERS {
        &mut stack[..max]
    } else {
        heap = Vec::with_capacity(max);
        &mut heap.spare_capacity_mut()[..max]
    };
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, slots) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                431,
                "too_many_headers",
                format!("more than {max} header fields"),
            )
            .into())
        }
        Err(httparse::Error::Version) => return Err(Refused::Version),
        Err(e) => {
            return Err(HttpError::bad_request(format!("malformed request head: {e}")).into())
        }
    };
    let head_len = match status {
        httparse::Status::Partial => {
            return Ok(check_partial(buf, limits).map(|()| Parsed::Partial)?)
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.max_head_bytes {
        return Err(too_large(buf, limits).into());
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::bad_request("incomplete request line").into());
    };
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    for h in req.headers.iter() {
        headers.push(HeaderRange {
            name: range_in(buf, h.name.as_bytes()),
            value: range_in(buf, h.value),
        });
    }
    let fields = Fields { buf, headers };
    let method_r = range_in(buf, method.as_bytes());
    let target_r = range_in(buf, target.as_bytes());
    Ok(build_head(&fields, method_r, target_r, version, head_len)?)
}

fn check_partial(buf: &[u8], limits: Limits) -> Result<(), HttpError> {
    if buf.len() >= limits.max_head_bytes {
        return Err(too_large(buf, limits));
    }
    Ok(())
}

fn too_large(buf: &[u8], limits: Limits) -> HttpError {
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end.is_none_or(|e| e >= limits.max_head_bytes) {
        HttpError::new(
            414,
            "uri_too_long",
            "request line exceeds the head size limit",
        )
    } else {
        HttpError::new(
            431,
            "request_header_fields_too_large",
            format!("request head exceeds {} bytes", limits.max_head_bytes),
        )
    }
}

struct Fields<'a> {
    buf: &'a [u8],
    headers: &'a [HeaderRange],
}

impl<'a> Fields<'a> {
    fn values(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.headers
            .iter()
            .filter(move |h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(move |h| &buf[h.value.clone()])
    }

    fn ranges(&self, name: &'a str) -> impl Iterator<Item = &'a HeaderRange> + 'a {
        let buf = self.buf;
        self.headers
            .iter()
            .filter(move |h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
    }
}

fn build_head(
    f: &Fields<'_>,
    method: Range<usize>,
    target: Range<usize>,
    version: Version,
    head_len: usize,
) -> Result<Parsed, HttpError> {
    let buf = f.buf;
    let method_b = &buf[method.clone()];
    let target_b = &buf[target.clone()];

    // Host: exactly one in HTTP/1.1 (RFC 9112 §3.2), at most one in 1.0.
    let mut hosts = f.ranges("host");
    let host_field = hosts.next().map(|h| h.value.clone());
    if hosts.next().is_some() {
        return Err(HttpError::bad_request("more than one Host header field"));
    }
    if version == Version::Http11 && host_field.is_none() {
        return Err(HttpError::bad_request("HTTP/1.1 request without Host"));
    }
    if let Some(h) = &host_field {
        validate_host(&buf[h.clone()])?;
    }

    let (form, path, host) = classify_target(buf, method_b, target.clone(), host_field)?;
    let _ = target_b;

    let framing = request_framing(f, version)?;
    let has_body = framing != Framing::Length(0);

    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    for v in f.values("connection") {
        for token in list_elements(v) {
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                keep_alive_token = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                upgrade_token = true;
            }
        }
    }
    let keep_alive = !close && (version == Version::Http11 || keep_alive_token);
    // Honoured only where RFC 9110 §7.8 allows it (never in HTTP/1.0) and only without a
    // body: the gateway switches protocols at the end of the head, not after a body.
    let upgrade = upgrade_token
        && f.values("upgrade").next().is_some()
        && version == Version::Http11
        && !has_body;

    let mut expect_continue = false;
    for v in f.values("expect") {
        for e in list_elements(v) {
            if e.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::new(
                    417,
                    "expectation_failed",
                    "only Expect: 100-continue is supported",
                ));
            }
        }
    }
    // A 1.0 client cannot understand 100 Continue (RFC 9110 §10.1.1).
    if version == Version::Http10 {
        expect_continue = false;
    }

    Ok(Parsed::Complete(RequestHead {
        method,
        version,
        form,
        path,
        host,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
        head_len,
        has_body,
    }))
}

/// Decides the request body's framing (RFC 9112 §6.1–§6.3), refusing every ambiguous case.
fn request_framing(f: &Fields<'_>, version: Version) -> Result<Framing, HttpError> {
    let mut te = f.values("transfer-encoding").peekable();
    if te.peek().is_some() {
        if version == Version::Http10 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if f.values("content-length").next().is_some() {
            return Err(HttpError::bad_request(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let codings: Vec<&[u8]> = te.flat_map(list_elements).collect();
        let Some((last, rest)) = codings.split_last() else {
            return Err(HttpError::bad_request("empty Transfer-Encoding"));
        };
        if !last.eq_ignore_ascii_case(b"chunked") {
            return Err(HttpError::bad_request(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        if rest.iter().any(|c| c.eq_ignore_ascii_case(b"chunked")) {
            return Err(HttpError::bad_request("chunked applied more than once"));
        }
        if !rest.is_empty() {
            return Err(HttpError::new(
                501,
                "not_implemented",
                "transfer codings other than chunked are not supported",
            ));
        }
        return Ok(Framing::Chunked);
    }
    Ok(Framing::Length(
        parse_content_length(f.values("content-length"))?.unwrap_or(0),
    ))
}

/// Works out the target form, the path to route on and the authority (RFC 9112 §3.2–3.3).
fn classify_target(
    buf: &[u8],
    method: &[u8],
    target: Range<usize>,
    host_field: Option<Range<usize>>,
) -> Result<(TargetForm, Range<usize>, Range<usize>), HttpError> {
    let t = &buf[target.clone()];
    let empty = target.start..target.start;
    if method == b"CONNECT" {
        return Err(HttpError::new(
            405,
            "method_not_allowed",
            "CONNECT is not supported",
        ));
    }
    if t.contains(&b'#') {
        return Err(HttpError::bad_request("fragment in request target"));
    }
    if t.first() == Some(&b'/') {
        check_dot_segments(t)?;
        return Ok((TargetForm::Origin, target, host_field.unwrap_or(empty)));
    }
    if t == b"*" {
        if method != b"OPTIONS" {
            return Err(HttpError::bad_request("asterisk-form is only for OPTIONS"));
        }
        return Ok((TargetForm::Asterisk, target, host_field.unwrap_or(empty)));
    }
    // absolute-form: scheme "://" authority [path-abempty] [? query]
    let lower_scheme_end = t.windows(3).position(|w| w == b"://");
    let Some(scheme_end) = lower_scheme_end else {
        return Err(HttpError::bad_request("unrecognised request-target form"));
    };
    let scheme = &t[..scheme_end];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(HttpError::bad_request(
            "absolute-form target must be http or https",
        ));
    }
    let rest_start = target.start + scheme_end + 3;
    let rest = &buf[rest_start..target.end];
    let auth_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = rest_start..rest_start + auth_len;
    validate_host(&buf[authority.clone()])?;
    if authority.is_empty() {
        return Err(HttpError::bad_request(
            "absolute-form target without authority",
        ));
    }
    let path_start = rest_start + auth_len;
    check_dot_segments(&buf[path_start..target.end])?;
    // "http://h?q" has an empty path; callers treat an empty path as "/".
    Ok((TargetForm::Absolute, path_start..target.end, authority))
}

/// Refuses a path with a "." or ".." segment, also percent-encoded (`%2e`). Routes match
/// a prefix of the path as sent, and a provider that resolves dot-segments would serve
/// what lies outside the route: `/v1/stt/../admin` past a route for `/v1/stt`, or out of
/// the subtree a prefix rewrite maps to. Clients remove dot-segments before sending (RFC
/// 3986 §5.2.4), so only probes and attacks send them; the query is not part of the path.
pub fn check_dot_segments(target: &[u8]) -> Result<(), HttpError> {
    let path = match target.iter().position(|&b| b == b'?') {
        Some(q) => &target[..q],
        None => target,
    };
    if !path.iter().any(|&b| b == b'.' || b == b'%') {
        return Ok(());
    }
    if path.split(|&b| b == b'/').any(is_dot_segment) {
        return Err(HttpError::bad_request("dot-segment in the request path"));
    }
    Ok(())
}

/// Whether a path segment is "." or "..", with any dot written as `%2e` or `%2E`.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = seg;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

/// A Host value must be a valid authority without userinfo (RFC 9110 §7.2).
fn validate_host(h: &[u8]) -> Result<(), HttpError> {
    if h.is_empty() {
        return Ok(());
    }
    let ok = h.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    if !ok
        || std::str::from_utf8(h)
            .ok()
            .and_then(|s| s.parse::<http::uri::Authority>().ok())
            .is_none()
    {
        return Err(HttpError::bad_request("invalid Host"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
