//! Forwarding one request to a provider and streaming the response back.
//!
//! Both bodies stream through fixed buffers: the request body from the client's read
//! buffer to the provider, the response body from the provider connection's buffer to the
//! client. A write that blocks (slow client or slow provider) stops the matching read, so
//! memory per exchange is bounded whatever the body size. Nothing is retried once a
//! response byte has been forwarded.

use super::pool::{acquire, provider_stats, Lease, Provider};
use crate::conn::{BodyError, BodyState, Conn, Flow};
use crate::http::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use crate::http::reply::{json_error, Reply};
use crate::http::request::{HeaderRange, RequestHead, Version};
use crate::http::response::{parse_response, ParsedResponse, ResponseHead};
use crate::http::{list_elements, Framing};
use crate::route::Route;
use crate::stats::{class_index, record, UpstreamError};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use std::io;
use std::time::{Duration, Instant};

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the ones the gateway rewrites itself.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// Field names listed in Connection, which are hop-by-hop for this message.
fn connection_listed<'a>(buf: &'a [u8], headers: &'a [HeaderRange]) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| buf[h.name.clone()].eq_ignore_ascii_case(b"connection"))
        .flat_map(|h| list_elements(&buf[h.value.clone()]))
        .collect()
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Builds the request head sent to the provider.
fn request_head(
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderRange],
    route: &Route,
    provider: &Provider,
    peer: Option<std::net::IpAddr>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.head_len + 128);
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    let path = head.path(buf);
    match &route.replace_prefix {
        Some(rep) => {
            let rest = path.get(route.prefix.len()..).unwrap_or(b"");
            if !rep.starts_with(b"/") && !rest.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(rep);
            out.extend_from_slice(rest);
        }
        None if path.is_empty() => out.push(b'/'),
        None => out.extend_from_slice(path),
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    if !provider.cfg.host.is_empty() {
        out.extend_from_slice(provider.cfg.host.as_bytes());
    } else if !head.host.is_empty() {
        out.extend_from_slice(&buf[head.host.clone()]);
    } else if let Some(e) = provider.cfg.endpoints.first() {
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(buf, headers);
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut via: Vec<&[u8]> = Vec::new();
    let mut had_content_length = false;
    for h in headers {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        if name.eq_ignore_ascii_case(b"content-length") {
            had_content_length = true;
        }
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
            || listed.iter().any(|l| l.eq_ignore_ascii_case(name))
            || route.remove_headers.iter().any(|r| r.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff.push(value);
        } else if name.eq_ignore_ascii_case(b"via") {
            via.push(value);
        } else {
            push_header(&mut out, name, value);
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    for v in &xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    match peer {
        Some(ip) => out.extend_from_slice(ip.to_string().as_bytes()),
        None => out.extend_from_slice(b"unknown"),
    }
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\nVia: ");
    for v in &via {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(if head.version == Version::Http10 { b"1.0 coregate\r\n" } else { b"1.1 coregate\r\n" });
    for (k, v) in &route.add_headers {
        push_header(&mut out, k, v);
    }
    match head.framing {
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) if n > 0 || had_content_length => {
            out.extend_from_slice(b"Content-Length: ");
            crate::http::reply::push_u64(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// How the response body goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFraming {
    None,
    Length,
    Chunked,
    UntilClose,
}

/// Writes the response head for the client into `out`.
fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    resp: &ResponseHead,
    headers: &[HeaderRange],
    framing: ClientFraming,
    close: bool,
    client_http10: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::http::reply::push_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(&buf[resp.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let listed = connection_listed(buf, headers);
    let mut via: Vec<&[u8]> = Vec::new();
    let keep_length = framing == ClientFraming::None && resp.status != 204 && resp.status >= 200;
    for h in headers {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        // HEAD and 304 answers keep the Content-Length that describes the absent body.
        if keep_length && name.eq_ignore_ascii_case(b"content-length") {
            push_header(out, name, value);
            continue;
        }
        if is_hop_by_hop(name) || listed.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"via") {
            via.push(value);
        } else {
            push_header(out, name, value);
        }
    }
    out.extend_from_slice(b"Via: ");
    for v in &via {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(if resp.http11 { b"1.1 coregate\r\n" } else { b"1.0 coregate\r\n" });
    match (framing, resp.framing) {
        (ClientFraming::Length, Framing::Length(n)) => {
            out.extend_from_slice(b"Content-Length: ");
            crate::http::reply::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        (ClientFraming::Chunked, _) => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Why sending the request failed.
enum SendError {
    /// The client's body was malformed, timed out, or the client left.
    Client(BodyError),
    /// Writing to the provider failed.
    Upstream(UpstreamError),
}

fn io_to_upstream(e: &io::Error, timeout_kind: UpstreamError) -> UpstreamError {
    match e.kind() {
        io::ErrorKind::TimedOut => timeout_kind,
        _ => UpstreamError::Reset,
    }
}

/// Sends the head and streams the request body to the provider.
async fn send_request(
    conn: &mut Conn,
    lease: &mut Lease,
    up_head: &[u8],
    body: &mut BodyState,
    chunked: bool,
    idle: Duration,
) -> Result<(), SendError> {
    let Some(up) = lease.conn.as_mut() else {
        return Err(SendError::Upstream(UpstreamError::ConnectError));
    };
    let _ = up.stream.set_write_timeout(Some(idle));
    let up_err = |e: io::Error| SendError::Upstream(io_to_upstream(&e, UpstreamError::IdleTimeout));
    if body.is_done() {
        return up.stream.write_all(up_head).await.map_err(up_err);
    }
    up.stream.write_all(up_head).await.map_err(up_err)?;
    let mut frame = Vec::new();
    while let Some(r) = conn.body_chunk(body).await.map_err(SendError::Client)? {
        let data = conn.wire.slice(r);
        if chunked {
            frame.clear();
            encode_chunk(&mut frame, data);
            up.stream.write_all(&frame).await.map_err(up_err)?;
        } else {
            up.stream.write_all(data).await.map_err(up_err)?;
        }
    }
    if chunked {
        up.stream.write_all(LAST_CHUNK).await.map_err(up_err)?;
    }
    Ok(())
}

/// Reads from the provider with a read timeout bounded by `deadline`. Returns the bytes
/// read (0 = closed) or the error kind to report.
async fn up_read(
    lease: &mut Lease,
    wait: Duration,
    wait_kind: UpstreamError,
    deadline: Instant,
) -> Result<usize, UpstreamError> {
    let Some(up) = lease.conn.as_mut() else {
        return Err(UpstreamError::Reset);
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let (limit, kind) = if left <= wait { (left, UpstreamError::TotalTimeout) } else { (wait, wait_kind) };
    if limit.is_zero() {
        return Err(kind);
    }
    if up.start == up.end {
        up.start = 0;
        up.end = 0;
    } else if up.end == up.buf.len() {
        up.buf.copy_within(up.start..up.end, 0);
        up.end -= up.start;
        up.start = 0;
    }
    let _ = up.stream.set_read_timeout(Some(limit));
    let end = up.end;
    match up.stream.read(&mut up.buf[end..]).await {
        Ok(n) => {
            up.end += n;
            Ok(n)
        }
        Err(e) => Err(io_to_upstream(&e, kind)),
    }
}

/// Reads the final response head (skipping 1xx interim responses).
/// The error carries whether any response byte had arrived (then nothing may be retried).
async fn read_response_head(
    lease: &mut Lease,
    req_is_head: bool,
    headers: &mut Vec<HeaderRange>,
    (ttfb, idle): (Duration, Duration),
    deadline: Instant,
) -> Result<ResponseHead, (UpstreamError, bool)> {
    let head_deadline = Instant::now() + ttfb;
    let mut got_bytes = false;
    loop {
        if let Some(up) = lease.conn.as_mut() {
            if up.end > up.start {
                got_bytes = true;
                match parse_response(&up.buf[up.start..up.end], req_is_head, up.buf.len(), headers) {
                    Ok(ParsedResponse::Complete(h)) if (100..200).contains(&h.status) && h.status != 101 => {
                        up.start += h.head_len;
                        continue;
                    }
                    Ok(ParsedResponse::Complete(h)) if h.status == 101 => {
                        return Err((UpstreamError::BadResponse, true));
                    }
                    Ok(ParsedResponse::Complete(h)) => return Ok(h),
                    Ok(ParsedResponse::Partial) => {}
                    Err(_) => return Err((UpstreamError::BadResponse, true)),
                }
            }
        }
        // Before the first byte the time-to-first-byte limit applies; once a head has
        // started, a stall longer than the idle-read limit is an idle timeout.
        let to_head = head_deadline.saturating_duration_since(Instant::now());
        let (wait, kind) = if got_bytes && idle < to_head {
            (idle, UpstreamError::IdleTimeout)
        } else {
            (to_head, UpstreamError::HeadTimeout)
        };
        match up_read(lease, wait, kind, deadline).await {
            Ok(0) => return Err((UpstreamError::Reset, got_bytes)),
            Ok(_) => {}
            Err(e) => return Err((e, got_bytes)),
        }
    }
}

/// Proxies one request over route `route_idx`. The request head is in the connection's
/// buffer; on return the exchange is complete (or the connection must close).
pub async fn proxy(conn: &mut Conn, head: RequestHead, route_idx: usize) -> Flow {
    let shard = conn.shard.clone();
    let Some(route) = shard.routes.get(route_idx) else {
        return Flow::Close;
    };
    let pidx = route.provider;
    let Some(provider) = shard.providers.list.get(pidx) else {
        return Flow::Close;
    };
    provider_stats(&shard, pidx, |s| s.counters.requests += 1);
    let req_is_head = head.is_head(conn.head_bytes());
    let up_head = request_head(conn.head_bytes(), &head, &conn.headers, route, provider, conn.peer_ip);
    conn.consume_head(&head);
    let mut headers = std::mem::take(&mut conn.headers);
    let flow = exchange(conn, &head, provider, pidx, &up_head, req_is_head, &mut headers).await;
    conn.headers = headers;
    flow
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    conn: &mut Conn,
    head: &RequestHead,
    provider: &Provider,
    pidx: usize,
    up_head: &[u8],
    req_is_head: bool,
    headers: &mut Vec<HeaderRange>,
) -> Flow {
    let shard = conn.shard.clone();
    let cfg = &provider.cfg;
    let idle = Duration::from_millis(cfg.idle_read_timeout_ms);
    let ttfb = Duration::from_millis(cfg.response_head_timeout_ms);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(cfg.total_timeout_ms);
    let mut body = BodyState::new(head.framing);
    let chunked_up = head.framing == Framing::Chunked;
    let mut sent_continue = false;
    let mut retried = false;

    let (mut lease, resp) = loop {
        let Some(ep) = provider.pick() else {
            return fail(conn, head, &mut body, sent_continue, provider, pidx, UpstreamError::ConnectError).await;
        };
        let mut lease = match acquire(&shard, pidx, &ep, retried).await {
            Ok(l) => l,
            Err(e) => return fail(conn, head, &mut body, sent_continue, provider, pidx, e).await,
        };
        if head.expect_continue && !sent_continue {
            sent_continue = true;
            conn.wire.wbuf.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if conn.flush().await.is_err() {
                return Flow::Close;
            }
        }
        // A stale pooled connection fails on first use; only a request without a body
        // can be replayed, and only before any response byte.
        let can_retry = lease.reused && !retried && !head.has_body;
        match send_request(conn, &mut lease, up_head, &mut body, chunked_up, idle).await {
            Ok(()) => {}
            Err(SendError::Client(e)) => return client_body_failed(conn, e),
            Err(SendError::Upstream(_)) if can_retry => {
                retried = true;
                provider_stats(&shard, pidx, |s| s.counters.retries += 1);
                continue;
            }
            Err(SendError::Upstream(e)) => {
                return fail(conn, head, &mut body, sent_continue, provider, pidx, e).await
            }
        }
        match read_response_head(&mut lease, req_is_head, headers, (ttfb, idle), deadline).await {
            Ok(resp) => break (lease, resp),
            Err((UpstreamError::Reset, false)) if can_retry => {
                retried = true;
                provider_stats(&shard, pidx, |s| s.counters.retries += 1);
                continue;
            }
            Err((e, _)) => return fail(conn, head, &mut body, sent_continue, provider, pidx, e).await,
        }
    };
    let ttfb_us = started.elapsed().as_micros() as u64;
    provider_stats(&shard, pidx, |s| {
        record(&mut s.ttfb_us, ttfb_us);
        s.counters.ttfb_sum_us += ttfb_us;
        s.counters.responses[class_index(resp.status)] += 1;
    });

    let client_http10 = head.version == Version::Http10;
    let framing = match resp.framing {
        Framing::Length(0) => {
            if req_is_head || resp.status == 304 || resp.status == 204 {
                ClientFraming::None
            } else {
                ClientFraming::Length
            }
        }
        Framing::Length(_) => ClientFraming::Length,
        Framing::Chunked | Framing::UntilClose if client_http10 => ClientFraming::UntilClose,
        Framing::Chunked | Framing::UntilClose => ClientFraming::Chunked,
    };
    let close = !head.keep_alive
        || shard.draining.get()
        || framing == ClientFraming::UntilClose
        || !body.is_done();
    if let Some(up) = lease.conn.as_ref() {
        let buf = &up.buf[up.start..up.end];
        response_head(&mut conn.wire.wbuf, buf, &resp, headers, framing, close, client_http10);
    }
    if let Some(up) = lease.conn.as_mut() {
        up.start += resp.head_len;
    }
    shard.stats.borrow_mut().response(resp.status);

    let outcome = stream_body(conn, &mut lease, resp.framing, framing, idle, deadline).await;
    let total_us = started.elapsed().as_micros() as u64;
    provider_stats(&shard, pidx, |s| {
        record(&mut s.total_us, total_us);
        s.counters.total_sum_us += total_us;
    });
    match outcome {
        Ok(()) => {
            let clean = lease.conn.as_ref().is_some_and(|u| u.start == u.end);
            lease.release(resp.keep_alive && clean);
            if close {
                Flow::Close
            } else {
                Flow::KeepAlive
            }
        }
        Err(Some(e)) => {
            provider_stats(&shard, pidx, |s| s.error(e));
            let _ = conn.flush().await;
            Flow::Close
        }
        Err(None) => Flow::Close,
    }
}

/// Streams the response body. `Err(Some(kind))`: the provider failed mid-body;
/// `Err(None)`: the client failed. Either way the client connection must close.
async fn stream_body(
    conn: &mut Conn,
    lease: &mut Lease,
    from: Framing,
    to: ClientFraming,
    idle: Duration,
    deadline: Instant,
) -> Result<(), Option<UpstreamError>> {
    let mut remaining = match from {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut decoder = ChunkedDecoder::default();
    let mut frame = Vec::new();
    loop {
        let Some(up) = lease.conn.as_mut() else { return Err(None) };
        if up.end > up.start {
            let avail = &up.buf[up.start..up.end];
            let (data, consumed, done) = match from {
                Framing::Length(_) => {
                    let n = (avail.len() as u64).min(remaining) as usize;
                    remaining -= n as u64;
                    (&avail[..n], n, remaining == 0)
                }
                Framing::Chunked => {
                    let step = decoder.step(avail).map_err(|_| Some(UpstreamError::BadResponse))?;
                    let d = &avail[step.data_start..step.data_start + step.data_len];
                    (d, step.consumed, step.done)
                }
                Framing::UntilClose => (avail, avail.len(), false),
            };
            let res = if data.is_empty() {
                Ok(())
            } else if to == ClientFraming::Chunked {
                frame.clear();
                encode_chunk(&mut frame, data);
                conn.send(&frame).await
            } else {
                conn.send(data).await
            };
            up.start += consumed;
            res.map_err(|_| None)?;
            if done {
                break;
            }
            continue;
        }
        if remaining == 0 {
            break;
        }
        match up_read(lease, idle, UpstreamError::IdleTimeout, deadline).await {
            Ok(0) if from == Framing::UntilClose => break,
            Ok(0) => return Err(Some(UpstreamError::Reset)),
            Ok(_) => {}
            Err(e) => return Err(Some(e)),
        }
    }
    if to == ClientFraming::Chunked {
        conn.send(LAST_CHUNK).await.map_err(|_| None)?;
    }
    Ok(())
}

/// The client's request body failed while being forwarded.
fn client_body_failed(conn: &mut Conn, e: BodyError) -> Flow {
    if let BodyError::Http(err) = e {
        conn.shard.stats.borrow_mut().counters.parse_errors += 1;
        conn.queue_error(&err, None);
    }
    Flow::Close
}

/// Answers 502/503/504 with a JSON body naming the provider. The client connection stays
/// open when its request body was (or can still be) read to the end.
async fn fail(
    conn: &mut Conn,
    head: &RequestHead,
    body: &mut BodyState,
    sent_continue: bool,
    provider: &Provider,
    pidx: usize,
    e: UpstreamError,
) -> Flow {
    provider_stats(&conn.shard, pidx, |s| s.error(e));
    let status = match e {
        UpstreamError::ConnectTimeout
        | UpstreamError::HeadTimeout
        | UpstreamError::IdleTimeout
        | UpstreamError::TotalTimeout => 504,
        UpstreamError::QueueTimeout => 503,
        _ => 502,
    };
    let message = match e {
        UpstreamError::ConnectRefused => "provider refused the connection".to_string(),
        UpstreamError::ConnectTimeout => "timed out connecting to the provider".to_string(),
        UpstreamError::ConnectError => "could not connect to the provider".to_string(),
        UpstreamError::Reset => "provider closed the connection before responding".to_string(),
        UpstreamError::HeadTimeout => "provider did not start responding in time".to_string(),
        UpstreamError::IdleTimeout => "provider stalled".to_string(),
        UpstreamError::TotalTimeout => "provider exchange exceeded its total timeout".to_string(),
        UpstreamError::BadResponse => "provider sent an invalid response".to_string(),
        UpstreamError::QueueTimeout => "no provider connection became available in time".to_string(),
    };
    let mut close = !head.keep_alive || conn.shard.draining.get();
    if !body.is_done() {
        if head.expect_continue && !sent_continue {
            close = true;
        } else if !matches!(conn.discard(body).await, Ok(true)) {
            close = true;
        }
    }
    let json = json_error(status, e.label(), &message, Some(&provider.name));
    let extra: &[&str] = if status == 503 { &["Retry-After: 1"] } else { &[] };
    let date = conn.shard.date.borrow().get().to_vec();
    Reply {
        status,
        content_type: "application/json",
        body: &json,
        extra,
    }
    .write(&mut conn.wire.wbuf, &date, close, false);
    conn.shard.stats.borrow_mut().response(status);
    if close {
        Flow::Close
    } else {
        Flow::KeepAlive
    }
}
