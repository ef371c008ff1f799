//! Forwarding one request to a provider and streaming the response back.
//!
//! Both bodies stream through fixed buffers: the request body from the client's read
//! buffer to the provider, the response body from the provider connection's buffer to the
//! client. A write that blocks (slow client or slow provider) stops the matching read, so
//! memory per exchange is bounded whatever the body size. Nothing is retried once a
//! response byte has been forwarded.

use super::heads::{request_head, response_head, transfer_codings, ClientFraming};
use super::pool::{acquire, provider_stats, Provider, UpConn};
use super::ProviderConfig;
use crate::session::{BodyError, BodyState, Conn, Flow};
use crate::shard::Shard;
use crate::stats::{class_index, record, UpstreamError};
use coregate_http1::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use coregate_http1::reply::{json_error, Persist, Reply};
use coregate_http1::request::{HeaderRange, RequestHead, Version};
use coregate_http1::response::{parse_response, ParsedResponse, ResponseHead};
use coregate_http1::Framing;
use coregate_runtime::wire::{Rx, Tx};
use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

/// Time limits of one exchange with a provider.
#[derive(Clone, Copy)]
pub(super) struct Limits {
    /// When the exchange started (the request's head was complete): the start of the
    /// budget and of the time-to-first-byte and total-time stats.
    pub(super) started: Instant,
    /// Longest pause between reads (and for writes) on the provider connection.
    pub(super) idle: Duration,
    /// Time to the first response byte.
    ttfb: Duration,
    /// End of the total budget.
    deadline: Instant,
    /// Longest pause between reads of the client's request body.
    client_body: Duration,
}

impl Limits {
    /// The provider's limits for the exchange of `conn`'s current request.
    pub(super) fn of(cfg: &ProviderConfig, conn: &Conn) -> Limits {
        let started = conn.started_at;
        Limits {
            started,
            idle: Duration::from_millis(cfg.idle_read_timeout_ms),
            ttfb: Duration::from_millis(cfg.response_head_timeout_ms),
            deadline: started + Duration::from_millis(cfg.total_timeout_ms),
            client_body: conn.shard.http.body_read_timeout,
        }
    }
}

fn io_to_upstream(e: &io::Error, timeout_kind: UpstreamError) -> UpstreamError {
    match e.kind() {
        io::ErrorKind::TimedOut => timeout_kind,
        _ => UpstreamError::Reset,
    }
}

/// Reads from the provider with a read timeout bounded by the total deadline (`now` is the
/// caller's clock reading, so one exchange reads the clock as few times as it can). Returns
/// the bytes read (0 = closed) or the error kind to report.
async fn up_read(
    up: &mut Rx,
    wait: Duration,
    wait_kind: UpstreamError,
    deadline: Instant,
    now: Instant,
) -> Result<usize, UpstreamError> {
    let left = deadline.saturating_duration_since(now);
    let (limit, kind) = if left <= wait {
        (left, UpstreamError::TotalTimeout)
    } else {
        (wait, wait_kind)
    };
    if limit.is_zero() {
        return Err(kind);
    }
    let cap = up.capacity();
    up.make_room(cap);
    up.read_some(limit)
        .await
        .map_err(|e| io_to_upstream(&e, kind))
}

/// Reads the final response head. Interim (1xx) responses are relayed to the client as
/// they come (RFC 9110 §15.2: a proxy forwards them), except to an HTTP/1.0 client, which
/// must never see one, and except 100 Continue when the gateway already answered the
/// client's `Expect` itself. Fails with `BeforeHead` (carrying whether any response byte
/// had arrived: then nothing may be retried) or, when relaying a 1xx failed, `MidBody(None)`.
async fn read_response_head(
    up: &mut Rx,
    client: &mut Tx,
    req: ClientSide,
    headers: &mut Vec<HeaderRange>,
    t: Limits,
) -> Result<ResponseHead, Download> {
    let sent_at = Instant::now();
    let head_deadline = sent_at + t.ttfb;
    let mut first_wait = Some(sent_at);
    let mut got_bytes = false;
    loop {
        if !up.buffered().is_empty() {
            got_bytes = true;
            match parse_response(up.buffered(), req.is_head, up.capacity(), headers) {
                // 101 only answers a request that asked to switch (RFC 9110 §15.2.2).
                Ok(ParsedResponse::Complete(h)) if h.status == 101 && req.upgrade => return Ok(h),
                Ok(ParsedResponse::Complete(h)) if h.status == 101 => {
                    return Err(Download::BeforeHead(UpstreamError::BadResponse, true));
                }
                Ok(ParsedResponse::Complete(h)) if h.status < 200 => {
                    let answered_by_us = h.status == 100 && req.expects_continue;
                    let relay = !req.http10 && !answered_by_us;
                    if relay {
                        response_head(
                            &mut client.buf,
                            up.buffered(),
                            &h,
                            headers,
                            ClientFraming::None,
                            false,
                            false,
                            None,
                            &[],
                        );
                    }
                    up.consume(h.head_len);
                    // A client that went away fails the exchange like any client write.
                    if relay && client.flush().await.is_err() {
                        return Err(Download::MidBody(None));
                    }
                    // The flush took time: the next wait reads the clock afresh.
                    first_wait = None;
                    continue;
                }
                Ok(ParsedResponse::Complete(h)) => return Ok(h),
                Ok(ParsedResponse::Partial) => {}
                Err(_) => return Err(Download::BeforeHead(UpstreamError::BadResponse, true)),
            }
        }
        // Before the first byte the time-to-first-byte limit applies; once a head has
        // started, a stall longer than the idle-read limit is an idle timeout.
        // The first wait uses the reading the head deadline was set from.
        let now = first_wait.take().unwrap_or_else(Instant::now);
        let to_head = head_deadline.saturating_duration_since(now);
        let (wait, kind) = if got_bytes && t.idle < to_head {
            (t.idle, UpstreamError::IdleTimeout)
        } else {
            (to_head, UpstreamError::HeadTimeout)
        };
        match up_read(up, wait, kind, t.deadline, now).await {
            Ok(0) => return Err(Download::BeforeHead(UpstreamError::Reset, got_bytes)),
            Ok(_) => {}
            Err(e) => return Err(Download::BeforeHead(e, got_bytes)),
        }
    }
}

/// What the client asked for, as far as the response side needs to know.
#[derive(Clone, Copy)]
pub(super) struct ClientSide {
    is_head: bool,
    http10: bool,
    keep_alive: bool,
    /// The client sent `Expect: 100-continue` (the gateway answers it).
    expects_continue: bool,
    /// The client asked to switch protocols: a 101 is the expected answer.
    upgrade: bool,
}

/// How the response side ended.
pub(super) enum Download {
    /// The whole response was forwarded; the provider connection may be reused if `reuse`.
    Done { reuse: bool, close: bool },
    /// The provider failed before a response head: nothing was sent to the client.
    BeforeHead(UpstreamError, bool),
    /// Failed after the head went out: the client connection must close. `None` means
    /// the client, not the provider, failed.
    MidBody(Option<UpstreamError>),
    /// The provider switched protocols (101, relayed to the client): the connection is now
    /// a tunnel.
    Switched,
}

/// Reads the provider's response and streams it to the client.
#[allow(clippy::too_many_arguments)]
pub(super) async fn download(
    shard: &Shard,
    pidx: usize,
    client: &mut Tx,
    up: &mut Rx,
    headers: &mut Vec<HeaderRange>,
    req: ClientSide,
    t: Limits,
    upload_done: &Cell<bool>,
    head_sent: &Cell<bool>,
) -> Download {
    let resp = match read_response_head(up, client, req, headers, t).await {
        Ok(r) => r,
        Err(d) => return d,
    };
    // Codings other than chunked still apply to the body as relayed. An HTTP/1.0 client
    // cannot be sent Transfer-Encoding (RFC 9112 §6.1), so such a body could only reach it
    // unlabelled: refuse it. A close-delimited body whose codings include chunked is relayed
    // as it is, since chunked may not be applied twice.
    let codings = match resp.framing {
        Framing::Length(_) => Vec::new(),
        f => transfer_codings(up.buffered(), headers, f),
    };
    if req.http10 && !codings.is_empty() {
        return Download::BeforeHead(UpstreamError::BadResponse, true);
    }
    let chunked_inside = codings.iter().any(|c| c.eq_ignore_ascii_case(b"chunked"));
    let ttfb_us = t.started.elapsed().as_micros() as u64;
    provider_stats(shard, pidx, |s| {
        record(&mut s.ttfb_us, ttfb_us);
        s.counters.ttfb_sum_us += ttfb_us;
        s.counters.responses[class_index(resp.status)] += 1;
    });
    if resp.status == 101 {
        let none = ClientFraming::None;
        response_head(
            &mut client.buf,
            up.buffered(),
            &resp,
            headers,
            none,
            false,
            false,
            None,
            &[],
        );
        up.consume(resp.head_len);
        head_sent.set(true);
        shard.stats.borrow_mut().response(101);
        return Download::Switched;
    }
    let framing = match resp.framing {
        Framing::Length(0) if req.is_head || resp.status == 304 || resp.status == 204 => {
            ClientFraming::None
        }
        Framing::Length(_) => ClientFraming::Length,
        Framing::Chunked | Framing::UntilClose if req.http10 || chunked_inside => {
            ClientFraming::UntilClose
        }
        Framing::Chunked | Framing::UntilClose => ClientFraming::Chunked,
    };
    // A request body still arriving when the response starts means the response may end
    // first; then the connection cannot be reused, so say so up front.
    let close = !req.keep_alive
        || shard.draining.get()
        || framing == ClientFraming::UntilClose
        || !upload_done.get();
    response_head(
        &mut client.buf,
        up.buffered(),
        &resp,
        headers,
        framing,
        close,
        req.http10,
        Some(shard.date.borrow().get()),
        &codings,
    );
    up.consume(resp.head_len);
    head_sent.set(true);
    shard.stats.borrow_mut().response(resp.status);
    match stream_body(client, up, resp.framing, framing, t).await {
        Ok(()) => Download::Done {
            reuse: resp.keep_alive && up.buffered().is_empty(),
            close,
        },
        Err(e) => Download::MidBody(e),
    }
}

/// Streams the response body. `Err(Some(kind))`: the provider failed mid-body;
/// `Err(None)`: the client failed.
async fn stream_body(
    client: &mut Tx,
    up: &mut Rx,
    from: Framing,
    to: ClientFraming,
    t: Limits,
) -> Result<(), Option<UpstreamError>> {
    let mut remaining = match from {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut decoder = ChunkedDecoder::default();
    let mut frame = Vec::new();
    loop {
        if !up.buffered().is_empty() {
            let avail = up.buffered();
            let (data, consumed, done) = match from {
                Framing::Length(_) => {
                    let n = (avail.len() as u64).min(remaining) as usize;
                    remaining -= n as u64;
                    (&avail[..n], n, remaining == 0)
                }
                Framing::Chunked => {
                    let step = decoder
                        .step(avail)
                        .map_err(|_| Some(UpstreamError::BadResponse))?;
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
                client.send(&frame).await
            } else {
                client.send(data).await
            };
            up.consume(consumed);
            res.map_err(|_| None)?;
            if done {
                break;
            }
            continue;
        }
        if remaining == 0 {
            break;
        }
        // What arrived goes to the client before waiting for more: a streamed (TTS) answer
        // reaches the client frame by frame, not when the buffer fills or the body ends.
        client.flush().await.map_err(|_| None)?;
        let now = Instant::now();
        match up_read(up, t.idle, UpstreamError::IdleTimeout, t.deadline, now).await {
            Ok(0) if from == Framing::UntilClose => break,
            Ok(0) => return Err(Some(UpstreamError::Reset)),
            Ok(_) => {}
            Err(e) => return Err(Some(e)),
        }
    }
    if to == ClientFraming::Chunked {
        client.send(LAST_CHUNK).await.map_err(|_| None)?;
    }
    Ok(())
}

/// Streams the client's request body to the provider. Returns only on a client-side
/// failure or at the end of the body; a failed write to the provider is recorded in
/// `up_failed` and uploading stops, while the response side goes on (a provider may answer
/// early, e.g. 413, and close).
async fn upload(
    client: &mut Rx,
    up: &Tx,
    body: &mut BodyState,
    chunked: bool,
    t: Limits,
    up_failed: &Cell<Option<UpstreamError>>,
    done: &Cell<bool>,
) -> Result<(), BodyError> {
    let mut frame = Vec::new();
    let fail = |e: io::Error| up_failed.set(Some(io_to_upstream(&e, UpstreamError::IdleTimeout)));
    while let Some(r) = client.body_chunk(body, t.client_body).await? {
        let data = client.slice(r);
        let res = if chunked {
            frame.clear();
            encode_chunk(&mut frame, data);
            up.stream.write_all(&frame).await
        } else {
            up.stream.write_all(data).await
        };
        if let Err(e) = res {
            fail(e);
            return futures_lite::future::pending().await;
        }
    }
    if chunked {
        if let Err(e) = up.stream.write_all(LAST_CHUNK).await {
            fail(e);
            return futures_lite::future::pending().await;
        }
    }
    done.set(true);
    Ok(())
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
    let req = ClientSide {
        is_head: head.is_head(conn.head_bytes()),
        http10: head.version == Version::Http10,
        keep_alive: head.keep_alive,
        expects_continue: head.expect_continue,
        upgrade: head.upgrade,
    };
    let up_head = match request_head(
        conn.head_bytes(),
        &head,
        &conn.headers,
        route,
        provider,
        conn.peer_ip,
    ) {
        Ok(h) => h,
        Err(e) => {
            conn.shard.stats.borrow_mut().counters.parse_errors += 1;
            conn.queue_error(&e, None);
            return Flow::Close;
        }
    };
    provider_stats(&shard, pidx, |s| s.counters.requests += 1);
    conn.consume_head(&head);
    let mut headers = std::mem::take(&mut conn.headers);
    let job = Job {
        head: &head,
        req,
        provider,
        pidx,
        up_head: &up_head,
    };
    let flow = if head.upgrade {
        super::tunnel::upgrade(conn, job, &mut headers).await
    } else {
        exchange(conn, job, &mut headers).await
    };
    conn.headers = headers;
    flow
}

/// One request on its way to a provider: what [`exchange`] and the tunnel work from.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub(super) head: &'a RequestHead,
    pub(super) req: ClientSide,
    pub(super) provider: &'a Provider,
    /// The provider's index in the shard's list (and its stats).
    pub(super) pidx: usize,
    /// The request head as sent to the provider.
    pub(super) up_head: &'a [u8],
}

async fn exchange(conn: &mut Conn, job: Job<'_>, headers: &mut Vec<HeaderRange>) -> Flow {
    let Job {
        head,
        req,
        provider,
        pidx,
        up_head,
    } = job;
    let shard = conn.shard.clone();
    let cfg = &provider.cfg;
    let t = Limits::of(cfg, conn);
    let mut body = BodyState::new(head.framing);
    let mut sent_continue = false;
    let mut retried = false;
    let head_sent = Cell::new(false);
    loop {
        let Some(ep) = provider.pick() else {
            return fail(
                conn,
                job,
                &mut body,
                sent_continue,
                UpstreamError::ConnectError,
            )
            .await;
        };
        let mut lease = match acquire(&shard, pidx, &ep, retried).await {
            Ok(l) => l,
            Err(e) => return fail(conn, job, &mut body, sent_continue, e).await,
        };
        if head.expect_continue && !sent_continue {
            sent_continue = true;
            conn.wire
                .tx
                .buf
                .extend_from_slice(coregate_http1::reply::CONTINUE);
            if conn.flush().await.is_err() {
                return Flow::Close;
            }
        }
        let Some(up) = lease.conn.as_mut() else {
            return Flow::Close;
        };
        let UpConn {
            rx: up_rx,
            tx: up_tx,
            ..
        } = up;
        up_tx.stream.set_write_timeout(t.idle);
        // A stale pooled connection fails on first use; only a request without a body
        // can be replayed, and only before any response byte.
        let can_retry = lease.reused && !retried && body.is_done();
        let write_head = up_tx.stream.write_all(up_head).await;
        let result = match write_head {
            Err(_) if can_retry => None,
            Err(e) => Some(Download::BeforeHead(
                io_to_upstream(&e, UpstreamError::IdleTimeout),
                false,
            )),
            Ok(()) if body.is_done() => {
                let d = download(
                    &shard,
                    pidx,
                    &mut conn.wire.tx,
                    up_rx,
                    headers,
                    req,
                    t,
                    &Cell::new(true),
                    &head_sent,
                )
                .await;
                match d {
                    Download::BeforeHead(UpstreamError::Reset, false) if can_retry => None,
                    d => Some(d),
                }
            }
            Ok(()) => {
                let chunked = head.framing == Framing::Chunked;
                let up_failed = Cell::new(None);
                let upload_done = Cell::new(false);
                let client_rx = &mut conn.wire.rx;
                let client_tx = &mut conn.wire.tx;
                let up_side = async {
                    Err(upload(
                        client_rx,
                        up_tx,
                        &mut body,
                        chunked,
                        t,
                        &up_failed,
                        &upload_done,
                    )
                    .await)
                };
                let down_side = async {
                    Ok(download(
                        &shard,
                        pidx,
                        client_tx,
                        up_rx,
                        headers,
                        req,
                        t,
                        &upload_done,
                        &head_sent,
                    )
                    .await)
                };
                // The upload side only finishes first on a client failure; a finished upload
                // waits for the download.
                let up_side = async {
                    match up_side.await {
                        Err(Ok(())) => futures_lite::future::pending().await,
                        other => other,
                    }
                };
                match futures_lite::future::or(down_side, up_side).await {
                    Ok(d) => {
                        let d = match (d, up_failed.get()) {
                            (Download::BeforeHead(UpstreamError::Reset, got), Some(e)) => {
                                Download::BeforeHead(e, got)
                            }
                            (d, _) => d,
                        };
                        Some(d)
                    }
                    Err(Err(client_err)) => {
                        if matches!(client_err, BodyError::Timeout) {
                            shard.stats.borrow_mut().counters.io_timeouts += 1;
                        }
                        if head_sent.get() {
                            return Flow::Close;
                        }
                        return client_body_failed(conn, client_err);
                    }
                    Err(Ok(())) => None,
                }
            }
        };
        let Some(result) = result else {
            retried = true;
            provider_stats(&shard, pidx, |s| s.counters.retries += 1);
            continue;
        };
        let total_us = t.started.elapsed().as_micros() as u64;
        return match result {
            Download::Done { reuse, close } => {
                provider_stats(&shard, pidx, |s| {
                    record(&mut s.total_us, total_us);
                    s.counters.total_sum_us += total_us;
                });
                let complete = body.is_done();
                lease.release(reuse && complete);
                if close || !complete {
                    Flow::Close
                } else {
                    Flow::KeepAlive
                }
            }
            Download::BeforeHead(e, _) => fail(conn, job, &mut body, sent_continue, e).await,
            Download::MidBody(e) => {
                if let Some(e) = e {
                    provider_stats(&shard, pidx, |s| s.error(e));
                }
                let _ = conn.flush().await;
                Flow::Close
            }
            // Only upgrade requests accept a 101 (they go through `tunnel`), so this does not
            // happen here; if it did, the connection could not go on as HTTP.
            Download::Switched => Flow::Close,
        };
    }
}

/// The client's request body failed while being forwarded (before any response byte).
fn client_body_failed(conn: &mut Conn, e: BodyError) -> Flow {
    if let BodyError::Http(err) = e {
        conn.shard.stats.borrow_mut().counters.parse_errors += 1;
        conn.queue_error(&err, None);
    }
    Flow::Close
}

/// Answers 502/503/504 with a JSON body naming the provider. The client connection stays
/// open when its request body was (or can still be) read to the end.
pub(super) async fn fail(
    conn: &mut Conn,
    job: Job<'_>,
    body: &mut BodyState,
    sent_continue: bool,
    e: UpstreamError,
) -> Flow {
    let Job {
        head,
        provider,
        pidx,
        ..
    } = job;
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
        UpstreamError::QueueTimeout => {
            "no provider connection became available in time".to_string()
        }
    };
    let mut close = !head.keep_alive || conn.shard.draining.get();
    // A body the client was told to hold back, or that cannot be discarded, forces a close.
    if !body.is_done()
        && ((head.expect_continue && !sent_continue)
            || !matches!(conn.discard(body).await, Ok(true)))
    {
        close = true;
    }
    let json = json_error(status, e.label(), &message, Some(&provider.name));
    let extra: &[&str] = if status == 503 {
        &["Retry-After: 1"]
    } else {
        &[]
    };
    Reply {
        status,
        content_type: "application/json",
        body: &json,
        extra,
    }
    .write(
        &mut conn.wire.tx.buf,
        conn.shard.date.borrow().get(),
        Persist::of(close, head.version == Version::Http10),
        false,
    );
    conn.shard.stats.borrow_mut().response(status);
    if close {
        Flow::Close
    } else {
        Flow::KeepAlive
    }
}
