//! The admin listener: `/stats`, `/metrics` and `/health` on a separate address.
//!
//! It runs on its own plain thread with blocking sockets, off every shard core's
//! executor, and asks the aggregator for rendered documents over a channel. One request per
//! connection; scrapes are rare, so simplicity wins over throughput here.

use crate::stats::aggregate::Query;
use crate::tenants::{bearer_token, digest, Digest};
use crossbeam_channel::Sender;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Binds the admin address (so bind errors surface before serving starts).
pub fn bind(addr: &str) -> Result<TcpListener, String> {
    let a = crate::config::parse_addr(addr)?;
    TcpListener::bind(a).map_err(|e| format!("cannot listen on admin address {addr}: {e}"))
}

/// [`bind`] for a takeover: the old process frees the address when it starts draining,
/// so an address in use is tried again, every 100 ms, for up to `within`.
pub fn bind_when_free(addr: &str, within: Duration) -> Result<TcpListener, String> {
    let end = Instant::now() + within;
    loop {
        match bind(addr) {
            Ok(l) => return Ok(l),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e),
        }
    }
}

/// Serves admin requests on the current thread until `stop` is set and the listener shut
/// down (a takeover: the successor answers on this address now).
pub fn serve(
    listener: TcpListener,
    queries: Sender<Query>,
    stop: Arc<AtomicBool>,
    token: Option<Digest>,
) {
    for stream in listener.incoming() {
        match stream {
            Ok(_) if stop.load(Ordering::SeqCst) => return,
            Ok(s) => handle(s, &queries, token.as_ref()),
            Err(_) if stop.load(Ordering::SeqCst) => return,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn handle(mut s: TcpStream, queries: &Sender<Query>, token: Option<&Digest>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let Some((path, query)) = read_request(&mut s, token) else {
        return;
    };
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (query, ctype) = match path.as_str() {
        "/stats" => (Query::Stats(tx), "application/json"),
        "/metrics" => (Query::Metrics(tx), "text/plain; version=0.0.4"),
        // `?reset=1` answers, then starts a new window (for a billing period's export).
        "/usage" => {
            let reset = query
                .split('&')
                .any(|p| p == "reset=1" || p == "reset=true");
            (Query::Usage { reset, reply: tx }, "application/json")
        }
        "/health" | "/" => return answer_health(&mut s, queries),
        _ => {
            return respond_error(
                &mut s,
                404,
                "not_found",
                "no such admin path (try /stats, /metrics, /usage or /health)",
            )
        }
    };
    if queries.send(query).is_err() {
        return respond_error(
            &mut s,
            503,
            "aggregator_stopped",
            "the stats aggregator has stopped",
        );
    }
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(body) => respond(&mut s, 200, ctype, &body),
        Err(_) => respond_error(
            &mut s,
            503,
            "aggregator_busy",
            "the stats aggregator did not answer within 5 s",
        ),
    }
}

/// Reads one request head and returns its path and query string; answers (and returns
/// `None`) a malformed or oversized head, a missing admin token, or a method other than GET
/// or HEAD.
fn read_request(s: &mut TcpStream, token: Option<&Digest>) -> Option<(String, String)> {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        match s.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path.unwrap_or("");
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                // `/health` stays open: balancers probe it without credentials.
                let health = path == "/health" || path == "/";
                if !health && token.is_some_and(|t| !presents(req.headers, t)) {
                    let body = coregate_http1::reply::json_error(
                        401,
                        "unauthorized",
                        "the admin API needs Authorization: Bearer TOKEN (admin.token)",
                        None,
                    );
                    let challenge = crate::tenants::www_authenticate(has_bearer(req.headers));
                    let body = String::from_utf8_lossy(&body);
                    respond_with(s, 401, "application/json", challenge, &body);
                    return None;
                }
                if !matches!(req.method, Some("GET" | "HEAD")) {
                    respond_error(s, 405, "method_not_allowed", "the admin API is GET only");
                    return None;
                }
                return Some((path.to_string(), query.to_string()));
            }
            Ok(httparse::Status::Partial) if len < buf.len() => continue,
            _ => {
                respond_error(s, 400, "bad_request", "malformed or oversized request");
                return None;
            }
        }
    }
}

/// `/health`: 503 while draining or with a stale shard, so that a balancer stops sending.
fn answer_health(s: &mut TcpStream, queries: &Sender<Query>) {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let answer = queries
        .send(Query::Health(tx))
        .ok()
        .and_then(|_| rx.recv_timeout(Duration::from_secs(5)).ok());
    match answer {
        Some((true, body)) => respond(s, 200, "application/json", &body),
        Some((false, body)) => respond(s, 503, "application/json", &body),
        None => respond_error(s, 503, "aggregator_busy", "no answer within 5 s"),
    }
}

/// An error in the data plane's JSON shape (`{"error":{"status","code","message"}}`).
fn respond_error(s: &mut TcpStream, status: u16, code: &str, message: &str) {
    let body = coregate_http1::reply::json_error(status, code, message, None);
    respond(
        s,
        status,
        "application/json",
        &String::from_utf8_lossy(&body),
    );
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) {
    respond_with(s, status, ctype, "", body);
}

/// [`respond`] with one more header line (`Name: value`, or "" for none).
fn respond_with(s: &mut TcpStream, status: u16, ctype: &str, header: &str, body: &str) {
    let extra = if header.is_empty() {
        String::new()
    } else {
        format!("{header}\r\n")
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        coregate_http1::reply::reason(status),
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Drain what the client may still send so it reads our answer, not a reset.
    let mut sink = [0u8; 1024];
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    while let Ok(n) = s.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// Whether the request presents a bearer token at all (a wrong one is `invalid_token`).
fn has_bearer(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("authorization") && bearer_token(h.value).is_some())
}

/// Whether the request's `Authorization: Bearer` token has the digest `token` (compared as
/// digests, never as secrets).
fn presents(headers: &[httparse::Header<'_>], token: &Digest) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("authorization")
            && bearer_token(h.value).is_some_and(|t| digest(t) == *token)
    })
}
