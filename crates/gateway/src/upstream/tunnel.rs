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

use super::connect::connect;
use super::forward::{download, fail, Download, Job, Limits};
use super::pool::provider_stats;
use crate::session::{BodyState, Conn, Flow};
use crate::shard::Shard;
use coregate_http1::request::HeaderRange;
use coregate_runtime::wire::{Rx, Tx, Wire};
use std::cell::Cell;
use std::io;
use std::time::{Duration, Instant};

/// Read buffer of the provider side of a tunnel.
const TUNNEL_BUF: usize = 16 * 1024;

/// Forwards an upgrade request (its head already built as `up_head`) and, on 101, relays
/// the tunnel until it ends.
pub(super) async fn upgrade(conn: &mut Conn, job: Job<'_>, headers: &mut Vec<HeaderRange>) -> Flow {
    let Job {
        req,
        provider,
        pidx,
        up_head,
        ..
    } = job;
    let shard = conn.shard.clone();
    let cfg = &provider.cfg;
    let t = Limits::of(cfg, conn);
    let mut no_body = BodyState::Done;
    let Some(ep) = provider.pick() else {
        return fail(
            conn,
            job,
            &mut no_body,
            false,
            crate::stats::UpstreamError::ConnectError,
        )
        .await;
    };
    let stream = match connect(ep.addr, Duration::from_millis(cfg.connect_timeout_ms)).await {
        Ok(s) => s,
        Err(e) => return fail(conn, job, &mut no_body, false, e).await,
    };
    provider_stats(&shard, pidx, |s| s.counters.new_connections += 1);
    let mut up = Wire::new(stream, TUNNEL_BUF);
    up.tx.stream.set_write_timeout(t.idle);
    if up.tx.stream.write_all(up_head).await.is_err() {
        let e = crate::stats::UpstreamError::Reset;
        return fail(conn, job, &mut no_body, false, e).await;
    }
    let d = download(
        &shard,
        pidx,
        &mut conn.wire.tx,
        &mut up.rx,
        headers,
        req,
        t,
        &Cell::new(true),
        &Cell::new(false),
    )
    .await;
    match d {
        Download::Switched => {}
        // Not switched: an ordinary response, already forwarded; this connection closes.
        Download::Done { close, .. } => {
            return if close { Flow::Close } else { Flow::KeepAlive };
        }
        Download::BeforeHead(e, _) => {
            return fail(conn, job, &mut no_body, false, e).await;
        }
        Download::MidBody(e) => {
            if let Some(e) = e {
                provider_stats(&shard, pidx, |s| s.error(e));
            }
            let _ = conn.flush().await;
            return Flow::Close;
        }
    }
    if conn.flush().await.is_err() {
        return Flow::Close;
    }
    conn.answered_at = Some(Instant::now());
    let idle = Duration::from_millis(cfg.tunnel_idle_timeout_ms);
    let _open = OpenTunnel::new(&shard);
    relay(&mut conn.wire, &mut up, idle).await;
    Flow::Close
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

/// Copies bytes both ways until both directions ended (or one failed, or the tunnel sat
/// idle for `idle`).
async fn relay(client: &mut Wire, up: &mut Wire, idle: Duration) {
    let last = Cell::new(Instant::now());
    let failed = Cell::new(false);
    let (client_fd, up_fd) = (client.rx.stream.clone(), up.rx.stream.clone());
    let abort = || {
        failed.set(true);
        client_fd.shutdown_both();
        up_fd.shutdown_both();
    };
    let to_up = pump(&mut client.rx, &mut up.tx, &last, &failed, idle, &abort);
    let to_client = pump(&mut up.rx, &mut client.tx, &last, &failed, idle, &abort);
    futures_lite::future::zip(to_up, to_client).await;
}

/// One direction of a tunnel: whatever is buffered, then read → write until EOF, which is
/// passed on as a half-close.
async fn pump(
    from: &mut Rx,
    to: &mut Tx,
    last: &Cell<Instant>,
    failed: &Cell<bool>,
    idle: Duration,
    abort: &dyn Fn(),
) {
    loop {
        if !from.buffered().is_empty() {
            let n = from.buffered().len();
            if to.stream.write_all(from.buffered()).await.is_err() {
                return abort();
            }
            to.bytes += n as u64;
            from.consume(n);
            last.set(Instant::now());
        }
        if failed.get() {
            return;
        }
        from.make_room(TUNNEL_BUF);
        match from.read_some(idle).await {
            Ok(0) => {
                // EOF: pass the close on; the other direction may still be sending.
                if to.stream.shutdown_write().is_err() {
                    return abort();
                }
                return;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                // Quiet in this direction; the tunnel is idle only if the other one is too.
                if last.get().elapsed() >= idle {
                    return abort();
                }
            }
            Err(_) => return abort(),
        }
    }
}
