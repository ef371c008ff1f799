//! The two streams of a provider exchange: the request body up ([`upload`]) and the
//! response down ([`download`], or [`read_response_head`] and [`relay_response`] apart for an
//! upgrade request, whose 101 the tunnel relays).
//!
//! Both bodies stream through fixed buffers: the request body from the client's read
//! buffer to the provider, the response body from the provider connection's buffer to the
//! client. A write that blocks (slow client or slow provider) stops the matching read, so
//! memory per exchange is bounded whatever the body size. Nothing is retried once a
//! response byte has been forwarded.

use super::error::UpstreamError;
use super::heads::{interim_head, response_head, transfer_codings, ClientFraming};
use super::pool::provider_stats;
use super::ProviderConfig;
use crate::facts::Facts;
use crate::request_id::RequestId;
use crate::session::{BodyError, BodyState, Session};
use crate::shard::Shard;
use crate::stats::{class_index, record};
use coregate_http1::chunked::{encode_chunk, ChunkedDecoder, LAST_CHUNK};
use coregate_http1::request::HeaderRange;
use coregate_http1::response::{parse_response, ParsedResponse, ResponseHead};
use coregate_http1::Framing;
use coregate_runtime::wire::{Rx, Tx};
use std::cell::Cell;
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
    /// The provider's limits for the exchange of the session's current request.
    pub(super) fn of(cfg: &ProviderConfig, session: &Session) -> Limits {
        let started = session.started_at();
        Limits {
            started,
            idle: Duration::from_millis(cfg.idle_read_timeout_ms),
            ttfb: Duration::from_millis(cfg.response_head_timeout_ms),
            deadline: started + Duration::from_millis(cfg.total_timeout_ms),
            client_body: session.shard().http.get().body_read_timeout,
        }
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
        .map_err(|e| UpstreamError::of_io(&e, kind))
}

/// Reads the final response head. Interim (1xx) responses are relayed to the client as
/// they come (RFC 9110 §15.2: a proxy forwards them), except to an HTTP/1.0 client, which
/// must never see one, and except 100 Continue when the gateway already answered the
/// client's `Expect` itself. Fails with `BeforeHead` (carrying whether any response byte
/// had arrived: then nothing may be retried) or, when relaying a 1xx failed, `MidBody(None)`.
pub(super) async fn read_response_head(
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
                        interim_head(&mut client.buf, up.buffered(), &h, headers);
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
    pub(super) is_head: bool,
    pub(super) http10: bool,
    pub(super) keep_alive: bool,
    /// The client sent `Expect: 100-continue` (the gateway answers it).
    pub(super) expects_continue: bool,
    /// The client asked to switch protocols: a 101 is the expected answer.
    pub(super) upgrade: bool,
}

/// The fixed facts of one exchange that both of its streams read.
#[derive(Clone, Copy)]
pub(super) struct Leg<'a> {
    pub(super) shard: &'a Shard,
    /// The provider's stats slot.
    pub(super) stat: usize,
    pub(super) req: ClientSide,
    pub(super) limits: Limits,
    /// What the request learns (status, time to the response head: the endpoint's recent
    /// latency for the balancer, and the access log's figures).
    pub(super) facts: &'a Facts,
}

impl Leg<'_> {
    /// The leg of `job` now that the request moved to its provider (down the fallback
    /// chain): that provider's stats slot and timeouts.
    pub(super) fn follow(&mut self, job: super::exchange::Job<'_>, session: &Session) {
        self.stat = job.provider.stat;
        self.limits = Limits::of(&job.provider.cfg, session);
    }
}

/// What the two streams of an exchange tell each other while both run.
#[derive(Default)]
pub(super) struct Progress {
    /// The whole request body went up.
    pub(super) upload_done: Cell<bool>,
    /// A response head went to the client: no error answer can follow.
    pub(super) head_sent: Cell<bool>,
    /// Writing to the provider failed; the response side goes on (it may hold an answer).
    pub(super) up_failed: Cell<Option<UpstreamError>>,
}

impl Progress {
    /// An exchange whose request body (if any) is already sent.
    pub(super) fn uploaded() -> Progress {
        let p = Progress::default();
        p.upload_done.set(true);
        p
    }
}

/// How the response side ended.
pub(super) enum Download {
    /// The whole response was forwarded; the provider connection may be reused if `reuse`.
    Done {
        reuse: bool,
        close: bool,
        /// The provider's status (its 5xx count against the endpoint's health).
        status: u16,
    },
    /// The provider failed before a response head: nothing was sent to the client.
    BeforeHead(UpstreamError, bool),
    /// Failed after the head went out: the client connection must close. `None` means
    /// the client, not the provider, failed.
    MidBody(Option<UpstreamError>),
}

/// Reads the provider's response and streams it to the client. The request was not an
/// upgrade, so a 101 is a bad response ([`read_response_head`] refuses it).
pub(super) async fn download(
    leg: Leg<'_>,
    client: &mut Tx,
    up: &mut Rx,
    headers: &mut Vec<HeaderRange>,
    progress: &Progress,
) -> Download {
    match read_response_head(up, client, leg.req, headers, leg.limits).await {
        Ok(resp) => relay_response(leg, client, up, headers, &resp, progress).await,
        Err(d) => d,
    }
}

/// Counts the provider's first (final or 101) response head: its class and the time to it.
pub(super) fn count_response_head(leg: Leg<'_>, resp: &ResponseHead) {
    let ttfb_us = leg.limits.started.elapsed().as_micros() as u64;
    leg.facts.ttfb_us.set(Some(ttfb_us));
    leg.facts.status.set(resp.status);
    provider_stats(leg.shard, leg.stat, |s| {
        record(&mut s.ttfb_us, ttfb_us);
        s.counters.ttfb_sum_us += ttfb_us;
        s.counters.responses[class_index(resp.status)] += 1;
    });
}

/// Relays a final response whose head `resp` is parsed and buffered in `up`: its head as
/// the client gets it, then its body.
pub(super) async fn relay_response(
    leg: Leg<'_>,
    client: &mut Tx,
    up: &mut Rx,
    headers: &[HeaderRange],
    resp: &ResponseHead,
    progress: &Progress,
) -> Download {
    let Leg { shard, req, .. } = leg;
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
    count_response_head(leg, resp);
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
        || !progress.upload_done.get();
    response_head(
        &mut client.buf,
        up.buffered(),
        resp,
        headers,
        framing,
        close,
        req.http10,
        Some(shard.date.borrow().get()),
        &codings,
        leg.facts.request_id.get().as_ref().map(RequestId::as_bytes),
    );
    up.consume(resp.head_len);
    progress.head_sent.set(true);
    shard.stats.borrow_mut().response(resp.status);
    match stream_body(client, up, resp.framing, framing, leg.limits).await {
        Ok(()) => Download::Done {
            reuse: resp.keep_alive && up.buffered().is_empty(),
            close,
            status: resp.status,
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

/// Streams the client's request body to the provider. Returns at the end of the body
/// (recorded in `progress.upload_done`) or on a client-side failure. A failed write to the
/// provider is recorded in `progress.up_failed` and uploading stops without returning,
/// while the response side goes on (a provider may answer early, e.g. 413, and close).
pub(super) async fn upload(
    client: &mut Rx,
    up: &Tx,
    body: &mut BodyState,
    chunked: bool,
    t: Limits,
    progress: &Progress,
    facts: &Facts,
) -> Result<(), BodyError> {
    let mut frame = Vec::new();
    while let Some(r) = client.body_chunk(body, t.client_body).await? {
        let data = client.slice(r);
        if let Some(m) = facts.meter.borrow_mut().as_mut() {
            m.feed(data);
        }
        let res = if chunked {
            frame.clear();
            encode_chunk(&mut frame, data);
            up.stream.write_all(&frame).await
        } else {
            up.stream.write_all(data).await
        };
        if let Err(e) = res {
            return upload_failed(progress, &e).await;
        }
    }
    if chunked {
        if let Err(e) = up.stream.write_all(LAST_CHUNK).await {
            return upload_failed(progress, &e).await;
        }
    }
    progress.upload_done.set(true);
    Ok(())
}

/// Records a failed write to the provider and parks the upload for good: the exchange's
/// outcome is the response side's to decide.
async fn upload_failed(progress: &Progress, e: &std::io::Error) -> Result<(), BodyError> {
    let kind = UpstreamError::of_io(e, UpstreamError::IdleTimeout);
    progress.up_failed.set(Some(kind));
    futures_lite::future::pending().await
}
