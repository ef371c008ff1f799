//! Tests of the request head parser (`request.rs`).
use super::*;

const L: Limits = Limits {
    max_head_bytes: 1024,
    max_headers: 8,
};

fn parse(s: &str) -> Result<Parsed, HttpError> {
    parse_head(s.as_bytes(), L, &mut Vec::new())
}

fn head(s: &str) -> RequestHead {
    match parse(s) {
        Ok(Parsed::Complete(h)) => h,
        other => panic!("{other:?}"),
    }
}

fn status(s: &str) -> u16 {
    match parse(s) {
        Err(e) => e.status,
        other => panic!("expected error, got {other:?}"),
    }
}

#[test]
fn simple_get() {
    let s = "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n";
    let h = head(s);
    assert_eq!(h.path(s.as_bytes()), b"/a?b");
    assert!(h.keep_alive);
    assert_eq!(h.framing, Framing::Length(0));
    assert_eq!(h.head_len, s.len());
}

#[test]
fn keep_alive_rules() {
    assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n").keep_alive);
}

#[test]
fn partial_and_limits() {
    assert!(matches!(parse("GET / HTTP/1.1\r\nHo"), Ok(Parsed::Partial)));
    let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(2000));
    assert_eq!(status(&long), 414);
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{}", "{}".repeat(0))
        + &"X-A: 1\r\n".repeat(9)
        + "\r\n";
    assert_eq!(status(&many), 431);
    let big = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n", "a".repeat(1100));
    assert_eq!(status(&big), 431);
}

#[test]
fn framing_ambiguity_is_rejected() {
    let te_cl =
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status(te_cl), 400);
    let dup = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(status(dup), 400);
    let not_last = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
    assert_eq!(status(not_last), 400);
    let twice = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status(twice), 400);
    let te10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(status(te10), 400);
    let gz = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(status(gz), 501);
    let ok = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_eq!(head(ok).framing, Framing::Chunked);
    let same = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(head(same).framing, Framing::Length(3));
}

#[test]
fn host_rules() {
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"), 400);
    let s = "GET http://example.com:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n";
    let h = head(s);
    assert_eq!(&s.as_bytes()[h.host.clone()], b"example.com:81");
    assert_eq!(h.path(s.as_bytes()), b"/p?q");
}

#[test]
fn upgrade_only_for_bodyless_http11() {
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    assert!(head(&format!("GET / HTTP/1.1\r\nHost: x\r\n{ws}\r\n")).upgrade);
    assert!(!head(&format!("GET / HTTP/1.0\r\n{ws}\r\n")).upgrade);
    assert!(
        !head(&format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n{ws}\r\nx"
        ))
        .upgrade
    );
    assert!(!head("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").upgrade);
}

#[test]
fn a_higher_minor_version_is_served_as_http11() {
    let h = head("\r\nGET / HTTP/1.3\r\nHost: x\r\n\r\n");
    assert_eq!(h.version, Version::Http11);
    let s = "GET /v HTTP/1.2\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
    let h = head(s);
    assert_eq!(h.version, Version::Http11);
    assert_eq!(
        (h.path(s.as_bytes()), h.framing),
        (&b"/v"[..], Framing::Length(3))
    );
    assert_eq!(&s.as_bytes()[h.host.clone()], b"x");
}

#[test]
fn odd_syntax_is_rejected() {
    assert_eq!(status("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 505);
    assert_eq!(status("GET / http/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.10\r\nHost: x\r\n\r\n"), 400);
    // A space in the target, or two versions: one 400, no second look at the line.
    assert_eq!(status("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.2 HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET / http/1.1 HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET /a HTTP/1.2 \r\nHost: x\r\n\r\n"), 400);
    // A version still arriving is waited for, whatever it turns out to be.
    for partial in [
        "GET / HTTP/2",
        "GET / HTTP/2.",
        "GET / HTTP/1.2",
        "GET / HTTP/1.2\r\nHo",
    ] {
        let r = parse_head(partial.as_bytes(), L, &mut Vec::new());
        assert!(matches!(r, Ok(Parsed::Partial)), "{partial:?}: {r:?}");
    }
    assert_eq!(status("GET /#f HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 405);
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
        417
    );
}

#[test]
fn dot_segments_in_the_path_are_refused() {
    for path in [
        "/v1/stt/../admin",
        "/v1/./x",
        "/v1/..",
        "/..",
        "/v1/%2e%2e/admin",
        "/v1/%2E./admin",
        "/v1/.%2e",
        "/v1/%2e/x",
        "http://h/a/../b",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(status(&req), 400, "{path}");
    }
    // Dots that are not whole segments, and dots in the query, are ordinary.
    for path in [
        "/v1/a.b",
        "/v1/.well-known/x",
        "/v1/...",
        "/v1/..a",
        "/v1/%2e%2e%2e",
        "/v1/x?p=../..",
        "/v1/x?./",
        "/a%20b",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(head(&req).path(req.as_bytes()), path.as_bytes(), "{path}");
    }
}
