//! The life of one proxied request on the provider side: [`proxy`] builds the provider's
//! request head and hands the request to a tunnel (upgrades) or to [`exchange`], which takes
//! a pooled connection and runs one of two paths:
//!
//! * **sequential** — the request has no body left to send: write the head, relay the
//!   response. A stale pooled connection that fails before any response byte is retried
//!   once on a fresh one.
//! * **duplex** — a body follows: it streams up while the response streams down (a provider
//!   may answer before the body ends), and the first side to finish decides.
//!
//! Every failure before a response head reached the client becomes a 502/503/504 with a
//! JSON body ([`fail`]); after that the client connection closes.

use super::error::UpstreamError;
use super::forward::{download, upload, ClientSide, Download, Leg, Limits, Progress};
use super::heads::{offered_upgrades, request_head, Handshake};
use super::pool::{acquire, provider_stats, record_outcome, Lease, Outcome, UpConn};
use super::providers::Provider;
use crate::generation::Generation;
use crate::meter::BodyMeter;
use crate::session::{BodyError, BodyState, Flow, Session};
use crate::shard::Shard;
use crate::stats::record;
use coregate_http1::reply::{json_error, Persist, Reply};
use coregate_http1::request::{HeaderRange, RequestHead, Version};
use coregate_http1::Framing;
use std::rc::Rc;

/// One request on its way to a provider: what [`exchange`] and the tunnel work from.
#[derive(Clone, Copy)]
pub(super) struct Job<'a> {
    pub(super) head: &'a RequestHead,
    pub(super) req: ClientSide,
    pub(super) provider: &'a Provider,
    /// The request head as sent to the provider.
    pub(super) up_head: &'a [u8],
    /// The protocols offered in the forwarded `Upgrade` (empty: not an upgrade).
    pub(super) upgrade: &'a [Vec<u8>],
    /// The providers of the config the request started on (the fallbacks are among them).
    pub(super) providers: &'a [Rc<Provider>],
    /// The fallback chain still ahead: each provider with the request head built for it.
    pub(super) fallbacks: &'a [(usize, Vec<u8>)],
    /// What the provider's 101 must be, for an upgrade.
    pub(super) handshake: &'a Handshake,
}

impl<'a> Job<'a> {
    /// Counts a failure of this provider in its stats and its rate-limited log.
    pub(super) fn count_failure(self, shard: &Shard, e: UpstreamError) {
        provider_stats(shard, self.provider.stat, |s| s.error(e));
        self.provider
            .failures
            .record(shard.id, &self.provider.name, e);
    }

    /// When every endpoint of this provider is out (`pick` is not in service), the same
    /// request for its fallback provider, if it has one: a fallback beats a likely failure.
    /// Nothing was tried, so no endpoint and no failover is counted; the move is.
    pub(super) fn past_an_all_out_provider(
        self,
        shard: &Shard,
        pick: &super::providers::Pick,
    ) -> Option<Job<'a>> {
        match pick.in_service {
            true => None,
            false => self.fall_back(shard, UpstreamError::NoHealthyEndpoint),
        }
    }

    /// The same request for the next provider of the fallback chain, when the failure `e`
    /// sent nothing (no endpoint of this provider could be reached). Counts the failure on
    /// this provider and the move.
    pub(super) fn fall_back(self, shard: &Shard, e: UpstreamError) -> Option<Job<'a>> {
        if !e.nothing_sent() {
            return None;
        }
        let ((p, head), rest) = self.fallbacks.split_first()?;
        let provider = self.providers.get(*p)?;
        self.count_failure(shard, e);
        provider_stats(shard, self.provider.stat, |s| {
            s.counters.fallbacks += 1;
            s.counters.retry_reasons[e as usize] += 1;
        });
        provider_stats(shard, provider.stat, |s| s.counters.requests += 1);
        Some(Job {
            provider,
            up_head: head,
            fallbacks: rest,
            ..self
        })
    }
}

/// How one attempt on one provider connection ended.
enum Attempt {
    /// The response side finished (whole, or failed as the [`Download`] says).
    Finished(Download),
    /// A stale pooled connection failed before any response byte: try a fresh one.
    Stale,
    /// The client failed while its body was read; the connection's fate is decided.
    ClientFailed(Flow),
}

/// How the duplex path's two streams ended: the first to finish decides.
enum DuplexEnd {
    Response(Download),
    ClientBody(BodyError),
}

/// Proxies one request over route `route_idx` of config generation `config`, which the
/// exchange holds to its end (a reload meanwhile does not change its provider). The request
/// head is in the session's buffer; on return the exchange is complete (or the connection
/// must close).
pub async fn proxy(
    session: &mut Session,
    head: RequestHead,
    config: Rc<Generation>,
    route_idx: usize,
) -> Flow {
    let shard = session.shard().clone();
    let Some(route) = config.routes.get(route_idx) else {
        return Flow::Close;
    };
    let pidx = route.provider;
    let Some(provider) = config.providers.list.get(pidx) else {
        return Flow::Close;
    };
    let buf = session.head_bytes();
    // Only protocols on the route's allow-list are switched to; a request offering none
    // (e.g. `Upgrade: h2c`) goes on as an ordinary request without its Upgrade fields.
    let upgrade = offered_upgrades(buf, &head, session.headers(), route);
    let req = ClientSide {
        is_head: head.is_head(buf),
        http10: head.version == Version::Http10,
        keep_alive: head.keep_alive,
        expects_continue: head.expect_continue,
        upgrade: !upgrade.is_empty(),
    };
    // The head for each provider of the fallback chain is built now, while the client's
    // head is still in the buffer. Without a fallback (the usual case) only the route's
    // provider's head is built and nothing more is allocated.
    let heads = {
        let (headers, facts) = (session.headers(), session.client_facts());
        let build = |p: &Provider| request_head(buf, &head, headers, route, p, facts, &upgrade);
        let fallbacks = match provider.cfg.fallback.is_empty() {
            true => Ok(Vec::new()),
            false => super::fallback_chain(&config.providers.list, pidx)
                .into_iter()
                .skip(1)
                .filter_map(|p| Some((p, config.providers.list.get(p)?)))
                .map(|(p, fallback)| build(fallback).map(|h| (p, h)))
                .collect(),
        };
        build(provider).and_then(|h| Ok((h, fallbacks?)))
    };
    let (up_head, fallbacks): (Vec<u8>, Vec<(usize, Vec<u8>)>) = match heads {
        Ok(h) => h,
        Err(e) => {
            session.respond_bad_request(&e);
            return Flow::Close;
        }
    };
    let handshake = match upgrade.is_empty() {
        true => Handshake::default(),
        false => Handshake::of(buf, session.headers(), session.client_facts().key_carrier),
    };
    provider_stats(&shard, provider.stat, |s| s.counters.requests += 1);
    let facts = session.facts();
    let logged = shard.records_names();
    let tenant = match facts.tenant.get() {
        Some((t, _)) => config.tenants.names.get(t).cloned(),
        None => None,
    };
    let tenant = tenant.unwrap_or_else(|| config.tenants.anonymous.clone());
    *facts.usage_key.borrow_mut() = Some((tenant, provider.stat, route.name.clone()));
    // Voice units: read from the body as it streams up, or a WebSocket's audio frames.
    let target = head.path(buf);
    if head.upgrade {
        facts.ws_audio_rate.set(BodyMeter::query_rate(target));
    } else if head.has_body {
        let ct = session
            .headers()
            .iter()
            .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(b"content-type"))
            .map_or(&b""[..], |h| &buf[h.value.clone()]);
        *facts.meter.borrow_mut() = Some(BodyMeter::for_request(ct, target));
    }
    facts.note(logged, &facts.route, &route.name);
    facts.note(logged, &facts.provider, &provider.name);
    session.consume_head(&head);
    let mut headers = session.take_headers();
    let job = Job {
        head: &head,
        req,
        provider,
        up_head: &up_head,
        upgrade: &upgrade,
        providers: &config.providers.list,
        fallbacks: &fallbacks,
        handshake: &handshake,
    };
    let flow = if req.upgrade {
        super::tunnel::upgrade(session, job, &mut headers).await
    } else {
        exchange(session, job, &mut headers).await
    };
    session.restore_headers(headers);
    flow
}

async fn exchange(session: &mut Session, job: Job<'_>, headers: &mut Vec<HeaderRange>) -> Flow {
    let shard = session.shard().clone();
    let mut job = job;
    let facts = session.facts();
    let logged = shard.records_names();
    let mut leg = Leg {
        shard: &shard,
        stat: job.provider.stat,
        req: job.req,
        limits: Limits::of(&job.provider.cfg, session),
        facts: &facts,
    };
    let mut body = BodyState::new(job.head.framing);
    let mut sent_continue = false;
    let mut retried = false;
    let mut tried = 0u64;
    loop {
        // `pick` lives to the end of the attempt: see `Pick`.
        let Some(pick) = job.provider.pick(tried) else {
            let e = UpstreamError::ConnectError;
            return fail(session, job, &mut body, sent_continue, e).await;
        };
        if let Some(next) = job.past_an_all_out_provider(&shard, &pick) {
            (job, tried) = (next, 0);
            leg.follow(job, session);
            continue;
        }
        let (ei, ep) = (pick.index, pick.ep.clone());
        let mut lease = match acquire(&shard, job.provider, &ep, retried).await {
            Ok(l) => l,
            Err(e) => {
                record_outcome(&shard, job.provider, &ep, Outcome::Failed(e));
                if fail_over(&shard, job, e, &mut tried, ei) {
                    continue;
                }
                if let Some(next) = job.fall_back(&shard, e) {
                    (job, tried) = (next, 0);
                    leg.follow(job, session);
                    continue;
                }
                return fail(session, job, &mut body, sent_continue, e).await;
            }
        };
        if job.head.expect_continue && !sent_continue {
            sent_continue = true;
            if session.send_continue().await.is_err() {
                return Flow::Close;
            }
        }
        let Some(up) = lease.conn.as_mut() else {
            return Flow::Close;
        };
        facts.upstream.set(Some(up.addr));
        facts.note(logged, &facts.provider, &job.provider.name);
        up.tx.stream.set_write_timeout(leg.limits.idle);
        // A stale pooled connection fails on first use; only a request without a body
        // can be replayed, and only before any response byte.
        let can_retry = lease.reused && !retried && body.is_done();
        let attempt = if body.is_done() {
            sequential(session, leg, job.up_head, up, headers, can_retry).await
        } else {
            duplex(session, leg, job, up, headers, &mut body).await
        };
        let result = match attempt {
            Attempt::Finished(d) => {
                match &d {
                    Download::Done { status, .. } => {
                        if let Some(us) = facts.ttfb_us.get() {
                            ep.observe_latency(us, leg.limits.started);
                        }
                        record_outcome(&shard, job.provider, &ep, Outcome::Answered(*status))
                    }
                    Download::BeforeHead(e, _) => {
                        record_outcome(&shard, job.provider, &ep, Outcome::Failed(*e))
                    }
                    Download::MidBody(_) => {}
                }
                d
            }
            Attempt::ClientFailed(flow) => return flow,
            Attempt::Stale => {
                retried = true;
                provider_stats(&shard, job.provider.stat, |s| s.counters.retries += 1);
                continue;
            }
        };
        return finish(session, leg, job, lease, result, &mut body, sent_continue).await;
    }
}

/// Whether a request whose attempt failed with `e` on endpoint `ei` goes on to another
/// endpoint: only when nothing of it was sent (Pingora's rule: never after a request byte
/// left) and an untried endpoint is left. Marks `ei` tried and counts the failover.
pub(super) fn fail_over(
    shard: &Shard,
    job: Job<'_>,
    e: UpstreamError,
    tried: &mut u64,
    ei: usize,
) -> bool {
    if ei < 64 {
        *tried |= 1 << ei;
    }
    let n = job.provider.endpoints.len().min(64);
    if !e.nothing_sent() || (tried.count_ones() as usize) >= n {
        return false;
    }
    provider_stats(shard, job.provider.stat, |s| {
        s.counters.failovers += 1;
        s.counters.retry_reasons[e as usize] += 1;
    });
    true
}

/// The request is complete in its head: send it, relay the response.
async fn sequential(
    session: &mut Session,
    leg: Leg<'_>,
    up_head: &[u8],
    up: &mut UpConn,
    headers: &mut Vec<HeaderRange>,
    can_retry: bool,
) -> Attempt {
    match up.tx.stream.write_all(up_head).await {
        Err(_) if can_retry => Attempt::Stale,
        Err(e) => {
            let kind = UpstreamError::of_io(&e, UpstreamError::IdleTimeout);
            Attempt::Finished(Download::BeforeHead(kind, false))
        }
        Ok(()) => {
            let (_, client_tx) = session.client_io();
            let progress = Progress::uploaded();
            match download(leg, client_tx, &mut up.rx, headers, &progress).await {
                Download::BeforeHead(UpstreamError::Reset, false) if can_retry => Attempt::Stale,
                d => Attempt::Finished(d),
            }
        }
    }
}

/// A body follows the head: stream it up while the response comes down.
async fn duplex(
    session: &mut Session,
    leg: Leg<'_>,
    job: Job<'_>,
    up: &mut UpConn,
    headers: &mut Vec<HeaderRange>,
    body: &mut BodyState,
) -> Attempt {
    if let Err(e) = up.tx.stream.write_all(job.up_head).await {
        let kind = UpstreamError::of_io(&e, UpstreamError::IdleTimeout);
        return Attempt::Finished(Download::BeforeHead(kind, false));
    }
    let chunked = job.head.framing == Framing::Chunked;
    let progress = Progress::default();
    let UpConn {
        rx: up_rx,
        tx: up_tx,
        ..
    } = up;
    let (client_rx, client_tx) = session.client_io();
    let up_side = async {
        match upload(
            client_rx, up_tx, body, chunked, leg.limits, &progress, leg.facts,
        )
        .await
        {
            // A finished upload waits for the response.
            Ok(()) => futures_lite::future::pending().await,
            Err(e) => DuplexEnd::ClientBody(e),
        }
    };
    let down_side =
        async { DuplexEnd::Response(download(leg, client_tx, up_rx, headers, &progress).await) };
    match futures_lite::future::or(down_side, up_side).await {
        DuplexEnd::Response(d) => Attempt::Finished(match (d, progress.up_failed.get()) {
            // The provider closed because the upload failed: report why it failed.
            (Download::BeforeHead(UpstreamError::Reset, got), Some(e)) => {
                Download::BeforeHead(e, got)
            }
            (d, _) => d,
        }),
        DuplexEnd::ClientBody(e) => {
            if matches!(e, BodyError::Timeout) {
                leg.shard.stats.borrow_mut().counters.io_timeouts += 1;
            }
            if progress.head_sent.get() {
                return Attempt::ClientFailed(Flow::Close);
            }
            if let BodyError::Http(err) = e {
                session.respond_bad_request(&err);
            }
            Attempt::ClientFailed(Flow::Close)
        }
    }
}

/// Settles a finished attempt: the pool gets its connection back (when whole), the stats
/// their figures, and the client an error answer if nothing was sent yet.
async fn finish(
    session: &mut Session,
    leg: Leg<'_>,
    job: Job<'_>,
    lease: Lease,
    result: Download,
    body: &mut BodyState,
    sent_continue: bool,
) -> Flow {
    match result {
        Download::Done { reuse, close, .. } => {
            let total_us = leg.limits.started.elapsed().as_micros() as u64;
            provider_stats(leg.shard, leg.stat, |s| {
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
        Download::BeforeHead(e, _) => fail(session, job, body, sent_continue, e).await,
        Download::MidBody(e) => {
            if let Some(e) = e {
                provider_stats(leg.shard, leg.stat, |s| s.error(e));
            }
            let _ = session.flush().await;
            Flow::Close
        }
    }
}

/// Answers 502/503/504 with a JSON body naming the provider and the cause. The client
/// connection stays open when its request body was (or can still be) read to the end.
pub(super) async fn fail(
    session: &mut Session,
    job: Job<'_>,
    body: &mut BodyState,
    sent_continue: bool,
    e: UpstreamError,
) -> Flow {
    let head = job.head;
    job.count_failure(session.shard(), e);
    let facts = session.facts();
    facts.error.set(Some(e.label()));
    facts.note(
        session.shard().records_names(),
        &facts.provider,
        &job.provider.name,
    );
    let mut close = !head.keep_alive || session.shard().draining.get();
    // A body the client was told to hold back, or that cannot be discarded, forces a close.
    if !body.is_done()
        && ((head.expect_continue && !sent_continue)
            || !matches!(session.discard(body).await, Ok(true)))
    {
        close = true;
    }
    let status = e.status();
    let json = json_error(status, e.label(), e.message(), Some(&job.provider.name));
    let extra: &[&str] = if status == 503 {
        &["Retry-After: 1"]
    } else {
        &[]
    };
    let reply = Reply {
        status,
        content_type: "application/json",
        body: &json,
        extra,
    };
    let http10 = head.version == Version::Http10;
    session.respond(&reply, Persist::of(close, http10), false);
    if close {
        Flow::Close
    } else {
        Flow::KeepAlive
    }
}
