//! The bodies of the fuzz targets (fuzz/fuzz_targets/), here rather than in the fuzz crate
//! so that `cargo test` (tests/fuzz_corpus.rs) replays the corpus through exactly the code
//! the fuzzer ran. Each function feeds arbitrary bytes to a real parser, whole and split
//! into pieces at points derived from the bytes, and asserts the parser's invariants: no
//! panic, every range inside the buffer, consumed ≤ input, a split parse agreeing with a
//! whole one where the contract says it must, bounded output. A failed assertion here is a
//! bug report (the fuzzer keeps the input), so these functions assert on purpose; they
//! are for fuzzing and tests only, never for the request path.
//!
//! docs/fuzzing.md lists the invariants per target and how to run the fuzzer.

use crate::chunked::ChunkedDecoder;
use crate::request::{self, HeaderRange, Limits, Parsed, RequestHead};
use crate::response::{self, ParsedResponse, ResponseHead};
use crate::websocket::{close_frame, FrameTracker};
use crate::{Framing, HttpError};

/// The gateway's default head limits (`[http]` max_head_bytes, max_headers).
const GATEWAY_LIMITS: Limits = Limits {
    max_head_bytes: 16384,
    max_headers: 64,
};
/// The gateway's and the load generator's response-head limit.
const MAX_RESPONSE_HEAD: usize = 16384;
/// Inputs up to this long are also fed one byte at a time (quadratic work otherwise).
const BYTEWISE_MAX: usize = 512;

/// Cut offsets in `1..data.len()`, ascending, from a PRNG seeded by the input: an input
/// always splits the same way (so a replay reproduces a failure), and another input splits
/// differently (so the fuzzer explores the splits as it explores the bytes).
pub fn cuts(data: &[u8], n: usize) -> Vec<usize> {
    if data.len() < 2 {
        return Vec::new();
    }
    // FNV-1a over the input, then xorshift64: cheap and deterministic.
    let mut x = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    let mut out: Vec<usize> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            1 + (x % (data.len() as u64 - 1)) as usize
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `data` cut at `at` (ascending offsets inside it).
pub fn pieces<'a>(data: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for &cut in at {
        out.push(&data[from..cut]);
        from = cut;
    }
    out.push(&data[from..]);
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What may reach a provider in a field value: HTAB, visible ASCII, SP, obs-text. Never CR,
/// LF or NUL (an obs-fold or a bare line break would let a value carry a second field).
fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80
}

/// Every header index entry lies inside the head; names are tokens, values clean.
fn check_fields(buf: &[u8], head_len: usize, headers: &[HeaderRange]) {
    for h in headers {
        assert!(h.name.start <= h.name.end && h.name.end <= head_len);
        assert!(h.value.start <= h.value.end && h.value.end <= head_len);
        let name = &buf[h.name.clone()];
        assert!(!name.is_empty() && name.iter().all(|&b| is_tchar(b)));
        assert!(buf[h.value.clone()].iter().all(|&b| is_value_byte(b)));
    }
}

/// How many header fields are named `name` (an oracle independent of the parser's own).
fn count(buf: &[u8], headers: &[HeaderRange], name: &[u8]) -> usize {
    headers
        .iter()
        .filter(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
        .count()
}

/// The request parser's result on `data` (or a prefix of it) with its header index.
type RequestResult = (Result<Parsed, HttpError>, Vec<HeaderRange>);

fn parse_request(buf: &[u8], limits: Limits) -> RequestResult {
    let mut headers = Vec::new();
    let r = request::parse_head(buf, limits, &mut headers);
    check_request(buf, limits, &r, &headers);
    (r, headers)
}

/// Invariants of one request parse on its own.
fn check_request(
    buf: &[u8],
    limits: Limits,
    r: &Result<Parsed, HttpError>,
    headers: &[HeaderRange],
) {
    let h = match r {
        Err(e) => {
            assert!(
                [400, 405, 414, 417, 431, 501, 505].contains(&e.status),
                "{e:?}"
            );
            return;
        }
        Ok(Parsed::Partial) => {
            assert!(
                buf.len() < limits.max_head_bytes,
                "a Partial past the limit"
            );
            return;
        }
        Ok(Parsed::Complete(h)) => h,
    };
    assert!(h.head_len > 0 && h.head_len <= buf.len() && h.head_len <= limits.max_head_bytes);
    assert!(headers.len() <= limits.max_headers);
    for r in [&h.method, &h.path, &h.host] {
        assert!(
            r.start <= r.end && r.end <= h.head_len,
            "{r:?} outside the head"
        );
    }
    assert!(!h.method.is_empty() && buf[h.method.clone()].iter().all(|&b| is_tchar(b)));
    let path = &buf[h.path.clone()];
    assert!(!path.iter().any(|&b| b <= b' ' || b == 0x7f), "{path:?}");
    check_fields(buf, h.head_len, headers);
    check_request_framing(buf, h, headers);
}

/// The smuggling rules, checked against the raw fields rather than the parser's reading.
fn check_request_framing(buf: &[u8], h: &RequestHead, headers: &[HeaderRange]) {
    let te = count(buf, headers, b"transfer-encoding");
    let cl = count(buf, headers, b"content-length");
    assert!(
        te == 0 || cl == 0,
        "Transfer-Encoding and Content-Length both accepted"
    );
    assert!(count(buf, headers, b"host") <= 1);
    let framing_ok = match h.framing {
        Framing::Chunked => te > 0 && h.version == request::Version::Http11,
        Framing::Length(n) => te == 0 && (n == 0 || cl > 0),
        Framing::UntilClose => false,
    };
    assert!(
        framing_ok,
        "{:?} from {te} TE and {cl} CL fields",
        h.framing
    );
    assert_eq!(h.has_body, h.framing != Framing::Length(0));
    assert!(!(h.upgrade && h.has_body), "upgrade with a body");
}

/// A prefix of the input must agree with the whole: the gateway parses the head again as
/// each read adds bytes, so a segmentation must never change the outcome.
fn check_prefix(whole: &RequestResult, p: usize, prefix: &RequestResult) {
    let agree = match (&whole.0, &prefix.0) {
        (Ok(Parsed::Complete(h)), Ok(Parsed::Partial)) => p < h.head_len,
        (Ok(Parsed::Complete(h)), Ok(Parsed::Complete(g))) => {
            p >= h.head_len && h == g && whole.1 == prefix.1
        }
        (Ok(Parsed::Partial), Ok(Parsed::Partial)) => true,
        (Err(_), Ok(Parsed::Partial) | Err(_)) => true,
        _ => false,
    };
    assert!(agree, "whole {whole:?}, but its first {p} bytes {prefix:?}");
}

/// Request heads: limits, ranges, the smuggling rules, prefixes, tighter limits, and the
/// chunked body when the head says chunked.
pub fn request_head(data: &[u8]) {
    let whole = parse_request(data, GATEWAY_LIMITS);
    let mut at = cuts(data, 8);
    if let Ok(Parsed::Complete(h)) = &whole.0 {
        // The most delicate points: one byte short of the head, and exactly the head.
        at.extend([h.head_len - 1, h.head_len]);
    }
    for p in at {
        check_prefix(&whole, p, &parse_request(&data[..p], GATEWAY_LIMITS));
    }
    // Tighter (or, at 100 fields, heap-allocated) limits: a head within them parses the same.
    let seed = cuts(data, 1).first().copied().unwrap_or(0);
    let tight = Limits {
        max_head_bytes: 256 << (seed % 4),
        max_headers: [1, 8, 64, 100][(seed / 4) % 4],
    };
    let small = parse_request(data, tight);
    if let Ok(Parsed::Complete(h)) = &whole.0 {
        if h.head_len <= tight.max_head_bytes && whole.1.len() <= tight.max_headers {
            assert!(
                matches!(&small.0, Ok(Parsed::Complete(g)) if g == h),
                "{small:?}"
            );
        }
        if h.framing == Framing::Chunked {
            chunked(&data[h.head_len..]);
        }
    }
}

/// The response parser's result for `request_was_head`, checked on its own.
fn parse_resp(buf: &[u8], request_was_head: bool) -> Result<ParsedResponse, HttpError> {
    let mut headers = Vec::new();
    let r = response::parse_response(buf, request_was_head, MAX_RESPONSE_HEAD, &mut headers);
    match &r {
        Err(e) => assert_eq!(e.status, 502),
        Ok(ParsedResponse::Partial) => assert!(buf.len() < MAX_RESPONSE_HEAD),
        Ok(ParsedResponse::Complete(h)) => {
            assert!(h.head_len > 0 && h.head_len <= buf.len());
            assert!(h.reason.start <= h.reason.end && h.reason.end <= h.head_len);
            assert!((100..=599).contains(&h.status));
            check_fields(buf, h.head_len, &headers);
            check_response_framing(buf, h, &headers, request_was_head);
        }
    }
    r
}

fn check_response_framing(
    buf: &[u8],
    h: &ResponseHead,
    headers: &[HeaderRange],
    request_was_head: bool,
) {
    let no_body = request_was_head || h.status < 200 || h.status == 204 || h.status == 304;
    let te = count(buf, headers, b"transfer-encoding") > 0;
    let cl = count(buf, headers, b"content-length") > 0;
    if no_body {
        assert_eq!(h.framing, Framing::Length(0));
    } else if te {
        assert!(h.framing == Framing::Chunked || h.framing == Framing::UntilClose);
        // TE beside CL: the framing is in doubt, so the connection must not be reused.
        assert!(!(cl && h.keep_alive));
    }
    if h.framing == Framing::UntilClose {
        assert!(!h.keep_alive);
    }
}

/// The parts of a response head that do not depend on the request's method.
fn head_parts(h: &ResponseHead) -> (u16, std::ops::Range<usize>, bool, usize) {
    (h.status, h.reason.clone(), h.http11, h.head_len)
}

/// Response heads: both for a GET and for a HEAD request, prefixes, and the chunked body.
pub fn response_head(data: &[u8]) {
    let get = parse_resp(data, false);
    let head = parse_resp(data, true);
    let agree = match (&get, &head) {
        (Ok(ParsedResponse::Complete(g)), Ok(ParsedResponse::Complete(h))) => {
            head_parts(g) == head_parts(h)
        }
        (Ok(ParsedResponse::Partial), Ok(ParsedResponse::Partial)) => true,
        // A bad Content-Length only matters where a body follows.
        (Err(_), Ok(ParsedResponse::Complete(_)) | Err(_)) => true,
        _ => false,
    };
    assert!(agree, "GET {get:?} but HEAD {head:?}");
    for p in cuts(data, 8) {
        let prefix = parse_resp(&data[..p], false);
        let agree = match (&get, &prefix) {
            (Ok(ParsedResponse::Complete(g)), Ok(ParsedResponse::Partial)) => p < g.head_len,
            (Ok(ParsedResponse::Complete(g)), Ok(ParsedResponse::Complete(r))) => {
                p >= g.head_len && g == r
            }
            (Ok(ParsedResponse::Partial), Ok(ParsedResponse::Partial)) => true,
            (Err(_), Ok(ParsedResponse::Partial) | Err(_)) => true,
            _ => false,
        };
        assert!(agree, "whole {get:?}, but its first {p} bytes {prefix:?}");
    }
    if let Ok(ParsedResponse::Complete(g)) = &get {
        if g.framing == Framing::Chunked {
            chunked(&data[g.head_len..]);
        }
    }
}

/// What decoding a chunked body from a sequence of reads produced.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    payload: Vec<u8>,
    /// Bytes consumed; the rest (after the last chunk) belongs to the next message. Left at
    /// 0 after an error: a step that fails reports nothing of what it read before the bad
    /// byte, so the count depends on where the reads ended.
    used: usize,
    done: bool,
    error: Option<HttpError>,
}

/// Feeds `reads` to a decoder as a session would: each read stepped until used up.
fn decode(reads: &[&[u8]]) -> Decoded {
    let mut d = ChunkedDecoder::default();
    let mut out = Decoded {
        payload: Vec::new(),
        used: 0,
        done: false,
        error: None,
    };
    'reads: for read in reads {
        let mut pos = 0;
        while pos < read.len() && !d.is_done() {
            match d.step(&read[pos..]) {
                Ok(s) => {
                    assert!(s.consumed > 0 && s.consumed <= read.len() - pos, "{s:?}");
                    assert!(s.data_start + s.data_len <= s.consumed, "{s:?}");
                    assert_eq!(s.done, d.is_done());
                    let data = &read[pos + s.data_start..pos + s.data_start + s.data_len];
                    out.payload.extend_from_slice(data);
                    pos += s.consumed;
                    out.used += s.consumed;
                }
                Err(e) => {
                    out.error = Some(e);
                    out.used = 0;
                    break 'reads;
                }
            }
        }
    }
    out.done = d.is_done();
    out
}

/// Chunked bodies: whole, in data-derived pieces and (when short) byte by byte, the same
/// payload, the same end, the same error.
pub fn chunked(data: &[u8]) {
    let whole = decode(&[data]);
    assert!(whole.used <= data.len() && whole.payload.len() <= data.len());
    match &whole.error {
        Some(e) => assert_eq!(e.status, 400),
        None => assert!(whole.payload.len() <= whole.used),
    }
    let split = decode(&pieces(data, &cuts(data, 8)));
    assert_eq!(whole, split, "split at {:?}", cuts(data, 8));
    if data.len() <= BYTEWISE_MAX {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(whole, decode(&bytes), "fed byte by byte");
    }
}

/// Everything a relay can observe of a [`FrameTracker`].
#[derive(Debug, PartialEq, Eq)]
struct Observed {
    error: Option<&'static str>,
    at_boundary: bool,
    close_seen: bool,
    in_message: bool,
    messages: u64,
    payload_bytes: u64,
}

fn observe(t: &FrameTracker, error: Option<&'static str>) -> Observed {
    Observed {
        error,
        at_boundary: t.at_boundary(),
        close_seen: t.close_seen(),
        in_message: t.in_message(),
        messages: t.messages(),
        payload_bytes: t.payload_bytes(),
    }
}

/// A fresh tracker fed `reads` in turn, stopping at the first error.
fn follow(reads: &[&[u8]]) -> Observed {
    let mut t = FrameTracker::new();
    let error = reads.iter().find_map(|r| t.feed(r).err()).map(|e| e.0);
    observe(&t, error)
}

/// WebSocket frame streams: after every piece, a tracker fed piecewise agrees with a fresh
/// one fed the same prefix whole; counters stay within what the bytes can hold; and a
/// Close frame built from the input round-trips through the tracker.
pub fn websocket_frames(data: &[u8]) {
    let at = cuts(data, 8);
    let mut t = FrameTracker::new();
    let mut error = None;
    for (i, piece) in pieces(data, &at).into_iter().enumerate() {
        error = error.or_else(|| t.feed(piece).err().map(|e| e.0));
        let end = at.get(i).copied().unwrap_or(data.len());
        assert_eq!(
            observe(&t, error),
            follow(&[&data[..end]]),
            "after {end} bytes"
        );
    }
    let whole = observe(&t, error);
    // Each frame has a 2-byte header; payload cannot exceed the input.
    assert!(whole.payload_bytes <= data.len() as u64);
    assert!(whole.messages <= data.len() as u64 / 2);
    if data.len() <= BYTEWISE_MAX {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(follow(&bytes), whole, "fed byte by byte");
    }
    close_round_trip(data);
}

fn close_round_trip(data: &[u8]) {
    let code = u16::from_be_bytes([
        data.first().copied().unwrap_or(3),
        data.get(1).copied().unwrap_or(232),
    ]);
    let reason = String::from_utf8_lossy(data.get(2..).unwrap_or_default());
    let mask = match data {
        [a, b, c, d, ..] if a & 1 == 1 => Some([*a, *b, *c, *d]),
        _ => None,
    };
    let f = close_frame(code, &reason, mask);
    assert!(f.len() <= 2 + 4 + 125);
    let mut t = FrameTracker::new();
    assert_eq!(t.feed(&f), Ok(()));
    assert!(t.at_boundary() && t.close_seen() && t.messages() == 0);
    let payload_at = if mask.is_some() { 6 } else { 2 };
    let key = mask.unwrap_or_default();
    let mut payload: Vec<u8> = f[payload_at..].to_vec();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    assert_eq!(payload[..2], code.to_be_bytes());
    let text = std::str::from_utf8(&payload[2..]);
    assert!(text.is_ok_and(|t| reason.starts_with(t)), "{payload:?}");
}
