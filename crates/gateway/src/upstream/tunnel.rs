//! Upgraded connections (WebSocket and any other `Upgrade` protocol, RFC 9110 §7.8).
//!
//! A request with `Connection: upgrade` and an `Upgrade` field (and no body) is forwarded on
//! a connection of its own, outside the pool: a tunnel lives for minutes, and counting it
//! against the pool's cap would starve ordinary requests. If the provider answers
//! `101 Switching Protocols`, the gateway relays the 101 and from then on copies bytes both
//! ways, without looking at them, until both directions have ended. Any other answer is an
//! ordinary response, and that provider connection is closed after it.
//!
//! A direction that reads EOF half-closes the other socket's write side, so a clean close
//! travels through; an error on either side ends both. The tunnel ends when no byte moved
//! in either direction for the provider's `tunnel_idle_timeout_ms`.
//!
//! A drain lets tunnels run until its timeout. Then a WebSocket tunnel is ended the way the
//! protocol ends one: a Close frame with 1001 (going away) to the client, and a masked one
//! to the provider, each only where its direction is at a frame boundary (the relay follows
//! frame headers as they pass, without unmasking or copying payloads); a tunnel of another
//! protocol, or one whose framing was lost, is cut.

use super::connect::open;
use super::error::UpstreamError;
use super::exchange::{fail, fail_over, Job};
use super::forward::{
    count_response_head, read_response_head, relay_response, Download, Leg, Limits, Progress,
};
use super::heads::{interim_head, select_key_protocol};
use super::pool::{provider_stats, record_outcome, Outcome};
use super::providers::Pick;
use super::realtime::RealtimeUsage;
use crate::facts::WsUsage;
use crate::session::{BodyState, Flow, Session};
use crate::shard::Shard;
use crate::stats::usage::UsageKey;
use coregate_http1::request::HeaderRange;
use coregate_http1::websocket::{close_frame, FrameTracker};
use coregate_runtime::deadline::WaitClass;
use coregate_runtime::wire::{Rx, Stream, Tx, Wire};
use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

/// Read buffer of the provider side of a tunnel.
const TUNNEL_BUF: usize = 16 * 1024;

/// Forwards an upgrade request (its head already built as `up_head`) and, on 101, relays
/// the tunnel until it ends.
pub(super) async fn upgrade(
    session: &mut Session,
    job: Job<'_>,
    headers: &mut Vec<HeaderRange>,
) -> Flow {
    let shard = session.shard().clone();
    let facts = session.facts();
    let (job, pick, stream) = match connect(session, job).await {
        Ok(connected) => connected,
        Err(flow) => return flow,
    };
    let leg = Leg {
        shard: &shard,
        stat: job.provider.stat,
        req: job.req,
        limits: Limits::of(&job.provider.cfg, session),
        facts: &facts,
    };
    provider_stats(&shard, job.provider.stat, |s| {
        s.counters.new_connections += 1
    });
    let mut up = Wire::over(stream, TUNNEL_BUF);
    if let Some(flow) = handshake(session, leg, job, &pick, &mut up, headers).await {
        return flow;
    }
    if session.flush().await.is_err() {
        return Flow::Close;
    }
    session.mark_answered();
    let _open = OpenTunnel::new(&shard);
    let websocket = job
        .upgrade
        .iter()
        .any(|p| p.eq_ignore_ascii_case(b"websocket"));
    let usage_key = facts.usage_key.borrow().clone();
    let ends = Ends {
        shard: &shard,
        idle: Duration::from_millis(job.provider.cfg.tunnel_idle_timeout_ms),
        websocket,
        tenant: facts.tenant.get().map(|(t, _)| t),
        usage_key: usage_key.as_ref(),
        audio_rate: facts.ws_audio_rate.get(),
    };
    let (client_rx, client_tx) = session.client_io();
    let (carried, audio_counted) = relay(client_rx, client_tx, &mut up, ends).await;
    facts.ws.set(carried);
    facts.ws_audio_counted_ms.set(audio_counted);
    Flow::Close
}

/// Opens the provider connection for a handshake: a connect that failed goes on to the next
/// endpoint, then to the fallback provider. Returns the job as it ended up (its provider may
/// be a fallback), the pick (kept until the handshake's outcome is recorded: see `Pick`) and
/// the stream; or the flow of the error answer the client got.
async fn connect<'a>(session: &mut Session, job: Job<'a>) -> Result<(Job<'a>, Pick, Stream), Flow> {
    let shard = session.shard().clone();
    let mut no_body = BodyState::Done;
    let (mut job, mut tried) = (job, 0u64);
    loop {
        let Some(pick) = job.provider.pick(tried) else {
            let e = UpstreamError::ConnectError;
            return Err(fail(session, job, &mut no_body, false, e).await);
        };
        if let Some(next) = job.past_an_all_out_provider(&shard, &pick) {
            (job, tried) = (next, 0);
            continue;
        }
        let (ei, ep) = (pick.index, pick.ep.clone());
        let timeout = Duration::from_millis(job.provider.cfg.connect_timeout_ms);
        match open(&shard, job.provider, &ep, timeout).await {
            Ok((s, addr)) => {
                session.facts().upstream.set(Some(addr));
                return Ok((job, pick, s));
            }
            Err(e) => {
                record_outcome(&shard, job.provider, &ep, Outcome::Failed(e));
                if fail_over(&shard, job, e, &mut tried, ei) {
                    continue;
                }
                match job.fall_back(&shard, e) {
                    Some(next) => (job, tried) = (next, 0),
                    None => return Err(fail(session, job, &mut no_body, false, e).await),
                }
            }
        }
    }
}

/// Sends the handshake and reads the provider's answer: `None` when it switched (its 101
/// queued for the client), else the flow after the answer the client got (the provider's
/// own, relayed, or the gateway's error).
async fn handshake(
    session: &mut Session,
    leg: Leg<'_>,
    job: Job<'_>,
    pick: &Pick,
    up: &mut Wire,
    headers: &mut Vec<HeaderRange>,
) -> Option<Flow> {
    let shard = leg.shard;
    let mut no_body = BodyState::Done;
    up.tx.stream.set_write_timeout(leg.limits.idle);
    if up.tx.stream.write_all(job.up_head).await.is_err() {
        let e = UpstreamError::Reset;
        record_outcome(shard, job.provider, &pick.ep, Outcome::Failed(e));
        return Some(fail(session, job, &mut no_body, false, e).await);
    }
    let (_, client_tx) = session.client_io();
    let outcome =
        match read_response_head(&mut up.rx, client_tx, leg.req, headers, leg.limits).await {
            // A 101 must switch to a protocol the request offered (RFC 9110 §15.2.2), and a
            // WebSocket 101 must answer the request's key (RFC 6455 §4.2.2).
            Ok(resp)
                if resp.status == 101
                    && !job
                        .handshake
                        .accepts(up.rx.buffered(), headers, job.upgrade) =>
            {
                Some(Download::BeforeHead(UpstreamError::BadResponse, true))
            }
            Ok(resp) if resp.status == 101 => {
                count_response_head(leg, &resp);
                interim_head(&mut client_tx.buf, up.rx.buffered(), &resp, headers);
                if let Some(p) = &job.handshake.key_protocol {
                    select_key_protocol(&mut client_tx.buf, up.rx.buffered(), headers, p);
                }
                up.rx.consume(resp.head_len);
                shard.stats.borrow_mut().response(101);
                None
            }
            // Not switched: an ordinary response, forwarded; this provider connection closes.
            Ok(resp) => {
                let progress = Progress::uploaded();
                Some(relay_response(leg, client_tx, &mut up.rx, headers, &resp, &progress).await)
            }
            Err(d) => Some(d),
        };
    let health = match &outcome {
        None => Outcome::Answered(101),
        Some(Download::Done { status, .. }) => Outcome::Answered(*status),
        Some(Download::BeforeHead(e, _)) => Outcome::Failed(*e),
        Some(Download::MidBody(_)) => Outcome::Answered(200),
    };
    record_outcome(shard, job.provider, &pick.ep, health);
    match outcome? {
        Download::Done { close, .. } => Some(if close { Flow::Close } else { Flow::KeepAlive }),
        Download::BeforeHead(e, _) => Some(fail(session, job, &mut no_body, false, e).await),
        Download::MidBody(e) => {
            if let Some(e) = e {
                provider_stats(shard, job.provider.stat, |s| s.error(e));
            }
            let _ = session.flush().await;
            Some(Flow::Close)
        }
    }
}

/// Counts a tunnel in the shard's gauge while it is open.
struct OpenTunnel<'a>(&'a Shard);

impl<'a> OpenTunnel<'a> {
    fn new(shard: &'a Shard) -> OpenTunnel<'a> {
        let mut st = shard.stats.borrow_mut();
        st.counters.tunnels_active += 1;
        st.counters.tunnels_total += 1;
        OpenTunnel(shard)
    }
}

impl Drop for OpenTunnel<'_> {
    fn drop(&mut self) {
        let mut st = self.0.stats.borrow_mut();
        st.counters.tunnels_active = st.counters.tunnels_active.saturating_sub(1);
    }
}

/// What ends a tunnel besides its two sides: the idle timeout and the shard's drain.
#[derive(Clone, Copy)]
struct Ends<'a> {
    shard: &'a Shard,
    idle: Duration,
    /// The tunnel speaks WebSocket: a drain ends it with Close frames.
    websocket: bool,
    /// The request's tenant (an exhausted budget closes the session, 1008).
    tenant: Option<usize>,
    /// Where the session's usage is counted, and the byte rate of the audio it streams up
    /// (when its query names one): that audio is counted as it passes, so that a budget
    /// can run out during the session.
    usage_key: Option<&'a UsageKey>,
    audio_rate: Option<u64>,
}

impl Ends<'_> {
    /// Whether the tunnel must end now, and the Close it ends with: the drain timeout
    /// passed (1001), or the tenant's usage budget ran out (1008).
    fn ending(&self) -> Option<(u16, &'static str)> {
        if self.shard.drain_expired.get() {
            return Some((1001, "gateway shutting down"));
        }
        let out = self.tenant.and_then(|t| self.shard.out_of_budget(t));
        out.map(|_| (1008, "usage budget exhausted"))
    }

    /// Counts the audio streamed up so far (`payload` bytes of binary messages) in the session's usage, from
    /// `counted` ms already counted; returns the new count.
    fn count_audio(&self, payload: u64, counted: u64) -> u64 {
        let (Some(key), Some(rate)) = (self.usage_key, self.audio_rate) else {
            return counted;
        };
        let ms = crate::meter::audio_ms(payload, rate);
        if ms > counted {
            self.shard.usage.borrow_mut().entry(key).audio_ms += ms - counted;
        }
        ms.max(counted)
    }
}

/// Where one direction's bytes go, and its frame boundaries when it carries WebSocket
/// frames (`None` otherwise, or once its framing was lost).
struct Direction {
    frames: Option<FrameTracker>,
    /// Frames this way must be masked (client to provider, RFC 6455 §5.3).
    masked: bool,
    /// The provider's `response.done` usage (provider to client only).
    realtime: Option<RealtimeUsage>,
    /// Audio ms already counted in the usage (client to provider only).
    audio_counted: u64,
}

impl Direction {
    /// Follows the relayed `bytes`; false when they are not WebSocket framing after all.
    fn follow(&mut self, bytes: &[u8]) -> bool {
        let Some(frames) = self.frames.as_mut() else {
            return true;
        };
        let followed = match self.realtime.as_mut() {
            Some(r) => frames.feed_seeing(bytes, &mut |p| r.see(p)),
            None => frames.feed(bytes),
        };
        followed.is_ok()
    }
}

/// Copies bytes both ways until both directions ended (or one failed, or the tunnel sat
/// idle, or the drain timeout passed); returns what a WebSocket carried each way (`None`
/// for another protocol, or when its framing was lost).
async fn relay(
    client_rx: &mut Rx,
    client_tx: &mut Tx,
    up: &mut Wire,
    ends: Ends<'_>,
) -> (Option<WsUsage>, u64) {
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let (client_fd, up_fd) = (client_rx.stream.clone(), up.rx.stream.clone());
    let abort = || {
        failed.set(true);
        client_fd.shutdown_both();
        up_fd.shutdown_both();
    };
    // A drain's deadline ends the reads of both sides (`deadline::cut`).
    client_rx.set_wait_class(WaitClass::Tunnel);
    up.rx.set_wait_class(WaitClass::Tunnel);
    let direction = |masked: bool| Direction {
        frames: ends.websocket.then(FrameTracker::new),
        masked,
        realtime: (ends.websocket && !masked).then(RealtimeUsage::default),
        audio_counted: 0,
    };
    let links = Links {
        last: &last,
        failed: &failed,
        abort: &abort,
        ends,
    };
    let (mut upward, mut downward) = (direction(true), direction(false));
    let to_up = pump(client_rx, &mut up.tx, &mut upward, links);
    let to_client = pump(&mut up.rx, client_tx, &mut downward, links);
    futures_lite::future::zip(to_up, to_client).await;
    let audio_counted = upward.audio_counted;
    let (Some(up_frames), Some(down_frames)) = (upward.frames, downward.frames) else {
        return (None, audio_counted);
    };
    let carried = WsUsage {
        messages_up: up_frames.messages(),
        messages_down: down_frames.messages(),
        payload_up: up_frames.payload_bytes(),
        payload_down: down_frames.payload_bytes(),
        audio_up: up_frames.binary_payload_bytes(),
        realtime: downward.realtime.map(|r| r.totals).unwrap_or_default(),
    };
    (Some(carried), audio_counted)
}

/// What the two directions of a tunnel share.
#[derive(Clone, Copy)]
struct Links<'a> {
    /// When a byte last moved either way.
    last: &'a Cell<Instant>,
    failed: &'a Cell<bool>,
    abort: &'a dyn Fn(),
    ends: Ends<'a>,
}

/// One direction of a tunnel: whatever is buffered, then read → write until EOF, which is
/// passed on as a half-close.
async fn pump(from: &mut Rx, to: &mut Tx, dir: &mut Direction, links: Links<'_>) {
    let Links {
        last,
        failed,
        abort,
        ends,
    } = links;
    loop {
        if !from.buffered().is_empty() {
            let n = from.buffered().len();
            if to.stream.write_all(from.buffered()).await.is_err() {
                return abort();
            }
            if !dir.follow(from.buffered()) {
                // Not WebSocket framing after all: relayed as it is, cut at a drain.
                dir.frames = None;
            }
            if dir.masked {
                // Only binary messages carry audio; text ones are control (KeepAlive...).
                let audio = dir.frames.as_ref().map_or(0, |f| f.binary_payload_bytes());
                dir.audio_counted = ends.count_audio(audio, dir.audio_counted);
            }
            to.bytes += n as u64;
            from.consume(n);
            last.set(Instant::now());
        }
        if failed.get() {
            return;
        }
        if let Some(close) = ends.ending() {
            return going_away(to, dir, close).await;
        }
        from.make_room(TUNNEL_BUF);
        let read = from.read_some(ends.idle).await;
        // The read ended (a wait cut short, an EOF or a reset, as when the provider answers
        // our Close on the other side by closing) while the tunnel must end: this side still
        // gets its Close.
        if let (Ok(0) | Err(_), Some(close)) = (&read, ends.ending()) {
            return going_away(to, dir, close).await;
        }
        match read {
            Ok(0) => {
                // EOF: pass the close on; the other direction may still be sending.
                if to.stream.shutdown_write().await.is_err() {
                    return abort();
                }
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                // Quiet in this direction; the tunnel is idle only if the other one is too.
                if last.get().elapsed() >= ends.idle {
                    return abort();
                }
            }
            Err(_) => return abort(),
        }
    }
}

/// Ends one direction: a WebSocket Close (`code`: 1001 going away at the drain deadline,
/// 1008 when the tenant's budget ran out) where the direction is at a frame boundary and
/// has not closed yet, then a half-close.
async fn going_away(to: &mut Tx, dir: &Direction, (code, reason): (u16, &str)) {
    let closable = dir
        .frames
        .as_ref()
        .is_some_and(|f| f.at_boundary() && !f.close_seen());
    if closable {
        let mask = dir.masked.then(mask_key);
        let frame = close_frame(code, reason, mask);
        if to.stream.write_all(&frame).await.is_ok() {
            to.bytes += frame.len() as u64;
        }
    }
    let _ = to.stream.shutdown_write().await;
}

/// A masking key for a frame the gateway writes to a provider. It need not be secret here:
/// the payload is the gateway's own fixed Close reason, not content a peer chose.
fn mask_key() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos.to_le_bytes()
}
