//! Per-shard provider connection pools.
//!
//! For each provider endpoint a shard keeps its idle keep-alive connections in a LIFO stack
//! (the most recently used connection is the least likely to have been closed by the
//! provider), caps open connections, and queues requests that arrive at the cap in a bounded
//! FIFO. A released connection is handed directly to the oldest waiter, so a queued request
//! cannot be overtaken. All of this is `Rc`/`Cell` state on one thread: no locks.

use super::connect::UpstreamTls;
use super::providers::Provider;
use crate::shard::Shard;
use crate::stats::{ProviderStats, UpstreamError};
use coregate_runtime::wire::{Rx, Tx};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Bytes of an upstream connection's read buffer: a response head and a 16 KiB body
/// arrive in one read (with 16 KiB they took two, and cost 15 % more per request).
const UP_BUF: usize = 32 * 1024;

/// An open connection to a provider endpoint: its read side (response bytes) and write
/// side (the request), plus when it went idle.
pub struct UpConn {
    pub rx: Rx,
    pub tx: Tx,
    pub idle_since: Instant,
    /// The address it is connected to.
    pub addr: SocketAddr,
}

enum Handoff {
    Conn(UpConn),
    /// A slot under the cap was freed: the waiter may open a connection.
    MayConnect,
}

#[derive(Default)]
struct Waiter {
    handoff: RefCell<Option<Handoff>>,
    waker: RefCell<Option<Waker>>,
    /// Still in the endpoint's queue and waiting. A waiter that gives up only clears this;
    /// its entry is dropped when it reaches the front, so leaving is O(1) even with
    /// thousands queued.
    queued: Cell<bool>,
}

pub struct Endpoint {
    /// Where the endpoint's name resolves now (one address for an IP literal); replaced
    /// when the resolver thread reports a change.
    addrs: RefCell<Vec<SocketAddr>>,
    next_addr: Cell<usize>,
    /// Set for an `https://` endpoint.
    pub tls: Option<UpstreamTls>,
    /// As the config writes it, for logs.
    pub name: String,
    /// Passive health: failures in a row eject it for a while.
    pub health: super::health::Health,
    idle: RefCell<Vec<UpConn>>,
    open: Cell<usize>,
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters in `waiters` still waiting (the rest gave up and are skipped).
    queued: Cell<usize>,
    /// Its config generation was replaced and this endpoint not carried over: connections
    /// released to it close instead of going idle.
    retired: Cell<bool>,
    /// Its share of requests (`weights`), and its smooth weighted round-robin credit.
    pub(super) weight: u32,
    pub(super) credit: Cell<i64>,
    /// Its index in its provider's endpoint stats.
    pub(super) stat: Cell<usize>,
    /// Recent time to a response head (µs, moving average; 0: none yet) and the start of
    /// the request it last came from.
    latency_us: Cell<u64>,
    latency_at: Cell<Option<Instant>>,
}

/// How long an endpoint's recent latency counts for the balancer without a new sample.
const LATENCY_FRESH: Duration = Duration::from_secs(10);

/// An endpoint's pool gauges at one moment.
pub struct Gauges {
    pub open: u64,
    pub idle: u64,
    pub queued: u64,
    pub ejected: bool,
}

impl Endpoint {
    pub(super) fn new(
        name: String,
        addrs: Vec<SocketAddr>,
        tls: Option<UpstreamTls>,
        weight: u32,
    ) -> Endpoint {
        Endpoint {
            addrs: RefCell::new(addrs),
            next_addr: Cell::new(0),
            tls,
            name,
            health: Default::default(),
            idle: RefCell::new(Vec::new()),
            open: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
            retired: Cell::new(false),
            weight,
            credit: Cell::new(0),
            stat: Cell::new(0),
            latency_us: Cell::new(0),
            latency_at: Cell::new(None),
        }
    }

    /// Takes the endpoint out of a replaced generation: its idle connections close now,
    /// its busy ones when released.
    pub(super) fn retire(&self) {
        self.retired.set(true);
        let n = self.idle.borrow_mut().drain(..).count();
        for _ in 0..n {
            close_one(self);
        }
    }

    /// Folds in a response head that came `us` after the start (`at`) of its request: a
    /// moving average over about the last 8.
    pub fn observe_latency(&self, us: u64, at: Instant) {
        let avg = self.latency_us.get();
        let next = if avg == 0 { us } else { avg - avg / 8 + us / 8 };
        self.latency_us.set(next.max(1));
        self.latency_at.set(Some(at));
    }

    /// Forgets the recent latency (an endpoint back in service: its old figures say
    /// nothing now, and would keep it out of a latency tie-break until they aged).
    pub(super) fn forget_latency(&self) {
        self.latency_us.set(0);
        self.latency_at.set(None);
    }

    /// The recent latency, unless none was seen in the last [`LATENCY_FRESH`] (an endpoint
    /// that got no traffic for a while must get a turn to show how it does now).
    pub(super) fn recent_latency(&self, now: Instant) -> Option<u64> {
        let at = self.latency_at.get()?;
        (now.saturating_duration_since(at) < LATENCY_FRESH).then(|| self.latency_us.get())
    }

    pub(super) fn gauges(&self, now: Instant) -> Gauges {
        Gauges {
            open: self.open.get() as u64,
            idle: self.idle.borrow().len() as u64,
            queued: self.queued.get() as u64,
            ejected: self.health.is_ejected(now),
        }
    }

    /// The address for the next new connection (round-robin over the resolved set).
    pub fn next_addr(&self) -> Option<SocketAddr> {
        let addrs = self.addrs.borrow();
        if addrs.is_empty() {
            return None;
        }
        let i = self.next_addr.get();
        self.next_addr.set(i.wrapping_add(1));
        Some(addrs[i % addrs.len()])
    }

    /// How many addresses the endpoint has now.
    pub fn addr_count(&self) -> usize {
        self.addrs.borrow().len()
    }

    /// Takes a new address set from the resolver: idle connections to addresses that left
    /// are closed now, busy ones when they are released.
    pub fn set_addrs(&self, addrs: Vec<SocketAddr>) {
        *self.addrs.borrow_mut() = addrs;
        let gone: Vec<UpConn> = {
            let mut idle = self.idle.borrow_mut();
            let (gone, keep) = idle.drain(..).partition(|c| !self.serves(c.addr));
            *idle = keep;
            gone
        };
        for _ in gone {
            close_one(self);
        }
    }

    fn serves(&self, addr: SocketAddr) -> bool {
        self.addrs.borrow().contains(&addr)
    }
}

impl Endpoint {
    /// Requests on it now: busy connections and queued requests.
    pub(super) fn load(&self) -> usize {
        let busy = self.open.get().saturating_sub(self.idle.borrow().len());
        busy + self.queued.get()
    }
}

/// How an attempt on an endpoint ended, as its health sees it.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A response came (its status: a 5xx counts as a failure when `eject_on_5xx`).
    Answered(u16),
    Failed(UpstreamError),
}

/// Records how an attempt on `ep` ended: a failure that says something about the endpoint
/// counts towards its ejection (logged when it happens), a response puts it back in service.
pub fn record_outcome(shard: &Shard, provider: &Provider, ep: &Endpoint, outcome: Outcome) {
    // A full or slow queue is the shard's own pool: the endpoint was not asked.
    if matches!(outcome, Outcome::Failed(e) if !e.counts_against_endpoint()) {
        return;
    }
    let failed = match outcome {
        Outcome::Answered(status) => status >= 500 && provider.cfg.eject_on_5xx,
        Outcome::Failed(_) => true,
    };
    provider_stats(shard, provider.stat, |s| {
        if let Some(e) = s.endpoints.get_mut(ep.stat.get()) {
            e.requests += 1;
            e.failures += u64::from(failed);
        }
    });
    let why = match outcome {
        Outcome::Answered(status) if status >= 500 && provider.cfg.eject_on_5xx => {
            format!("status {status}")
        }
        Outcome::Answered(_) => {
            // Back from an ejection: its latency from before says nothing now.
            if ep.health.returning() {
                ep.forget_latency();
            }
            return ep.health.success();
        }
        Outcome::Failed(e) => e.label().to_string(),
    };
    if let Some(time) = ep.health.failure(&provider.cfg, Instant::now()) {
        // Its latency from before says nothing about it after the ejection: kept, it could
        // lose every tie-break (see `Provider::pick`) to the endpoints that stayed.
        ep.forget_latency();
        provider_stats(shard, provider.stat, |s| {
            s.counters.ejections += 1;
            if let Some(e) = s.endpoints.get_mut(ep.stat.get()) {
                e.ejections += 1;
            }
        });
        coregate_runtime::log::warn(&format!(
            "shard {}: provider {:?}: endpoint {} ejected for {time:?} (last failure: {why})",
            shard.id, provider.name, ep.name
        ));
    }
}

/// A connection checked out of the pool. Unless [`Lease::release`] is called with
/// `reusable = true`, dropping it closes the connection and frees its slot, so no error
/// path can leak pool capacity.
pub struct Lease {
    ep: Rc<Endpoint>,
    max_idle: usize,
    pub conn: Option<UpConn>,
    /// The connection came from the idle pool (it may have gone stale).
    pub reused: bool,
}

impl Lease {
    /// Returns the connection: to the oldest waiter, else to the idle stack if reusable
    /// and there is room; otherwise it is closed.
    pub fn release(mut self, reusable: bool) {
        let Some(mut c) = self.conn.take() else {
            return;
        };
        if !reusable || self.ep.retired.get() || !self.ep.serves(c.addr) {
            close_one(&self.ep);
            return;
        }
        c.idle_since = Instant::now();
        if let Some(Handoff::Conn(mut c)) = hand_off(&self.ep, Handoff::Conn(c)) {
            // An idle pooled connection holds no buffers (see `Rx::park`).
            c.rx.park();
            c.tx.park();
            let mut idle = self.ep.idle.borrow_mut();
            if idle.len() < self.max_idle {
                idle.push(c);
                return;
            }
            drop(idle);
            drop(c);
            close_one(&self.ep);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            close_one(&self.ep);
        }
    }
}

/// Accounts for a closed connection and lets the oldest waiter open a new one.
fn close_one(ep: &Endpoint) {
    ep.open.set(ep.open.get().saturating_sub(1));
    if hand_off(ep, Handoff::MayConnect).is_none() {
        // The waiter now owns the slot it will connect with.
        ep.open.set(ep.open.get() + 1);
    }
}

/// Gives `h` to the oldest live waiter; returns it back if nobody is waiting.
fn hand_off(ep: &Endpoint, h: Handoff) -> Option<Handoff> {
    let waiter = {
        let mut q = ep.waiters.borrow_mut();
        loop {
            match q.pop_front() {
                None => return Some(h),
                Some(w) if w.queued.get() => break w,
                // Gave up while queued: skip it.
                Some(_) => {}
            }
        }
    };
    waiter.queued.set(false);
    ep.queued.set(ep.queued.get().saturating_sub(1));
    *waiter.handoff.borrow_mut() = Some(h);
    if let Some(w) = waiter.waker.borrow_mut().take() {
        w.wake();
    }
    None
}

/// Removes a waiter from the queue when its request gives up or is dropped.
struct QueueGuard<'a> {
    ep: &'a Endpoint,
    waiter: Rc<Waiter>,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        // The entry may stay in the queue a while: it must not keep the task alive.
        self.waiter.waker.take();
        if self.waiter.queued.replace(false) {
            // Left the queue without a handoff (timeout or cancelled request).
            let live = self.ep.queued.get().saturating_sub(1);
            self.ep.queued.set(live);
            let mut q = self.ep.waiters.borrow_mut();
            // Bound the skipped entries: compact when most of the queue has given up.
            if q.len() > 64 && q.len() > 2 * live {
                q.retain(|w| w.queued.get());
            }
        }
        // A handoff that arrived but was never used must not leak.
        match self.waiter.handoff.borrow_mut().take() {
            Some(Handoff::Conn(_)) | Some(Handoff::MayConnect) => close_one(self.ep),
            None => {}
        }
    }
}

struct WaitHandoff<'a>(&'a Waiter);

impl Future for WaitHandoff<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.handoff.borrow().is_some() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Checks out a connection to `ep`: an idle one (unless `fresh`), a new one under the cap,
/// or the next one released while waiting in the bounded queue.
pub async fn acquire(
    shard: &Shard,
    provider: &Provider,
    ep: &Rc<Endpoint>,
    fresh: bool,
) -> Result<Lease, UpstreamError> {
    let cfg = &provider.cfg;
    let slot = provider.stat;
    let lease = |conn: UpConn, reused: bool| Lease {
        ep: ep.clone(),
        max_idle: cfg.max_idle(),
        conn: Some(conn),
        reused,
    };
    if !fresh {
        let idle_timeout = Duration::from_millis(cfg.pool_idle_timeout_ms);
        loop {
            let Some(c) = ep.idle.borrow_mut().pop() else {
                break;
            };
            // A connection that received bytes or a FIN while idle is unusable: its bytes
            // would be read as the next request's response.
            if c.idle_since.elapsed() < idle_timeout && !c.rx.stream.input_while_idle() {
                provider_stats(shard, slot, |s| s.counters.pool_hits += 1);
                return Ok(lease(c, true));
            }
            close_one(ep);
        }
    } else if ep.open.get() >= cfg.pool_max_total {
        // Make room for the fresh connection by closing an idle one.
        if ep.idle.borrow_mut().pop().is_some() {
            close_one(ep);
        }
    }
    provider_stats(shard, slot, |s| s.counters.pool_misses += 1);
    if ep.open.get() < cfg.pool_max_total {
        ep.open.set(ep.open.get() + 1);
        return open_new(shard, provider, ep).await.map(|c| lease(c, false));
    }
    if ep.queued.get() >= cfg.queue_max {
        return Err(UpstreamError::QueueFull);
    }
    let waiter = Rc::new(Waiter::default());
    waiter.queued.set(true);
    ep.queued.set(ep.queued.get() + 1);
    ep.waiters.borrow_mut().push_back(waiter.clone());
    let guard = QueueGuard { ep, waiter };
    let wait = WaitHandoff(&guard.waiter);
    let _ = glommio::timer::timeout(Duration::from_millis(cfg.queue_timeout_ms), async {
        wait.await;
        Ok(())
    })
    .await;
    let handoff = guard.waiter.handoff.borrow_mut().take();
    drop(guard);
    match handoff {
        Some(Handoff::Conn(c)) if !c.rx.stream.input_while_idle() => {
            provider_stats(shard, slot, |s| s.counters.pool_hits += 1);
            Ok(lease(c, true))
        }
        // A freed slot, or a handed-over connection that got unasked-for bytes (closed here,
        // before connecting): connect on the slot.
        Some(slot) => {
            drop(slot);
            open_new(shard, provider, ep).await.map(|c| lease(c, false))
        }
        None => Err(UpstreamError::QueueTimeout),
    }
}

/// Connects for a slot already counted in `open`; gives the slot back on failure.
async fn open_new(
    shard: &Shard,
    provider: &Provider,
    ep: &Rc<Endpoint>,
) -> Result<UpConn, UpstreamError> {
    let timeout = Duration::from_millis(provider.cfg.connect_timeout_ms);
    match super::connect::open(shard, provider, ep, timeout).await {
        Ok((stream, addr)) => {
            provider_stats(shard, provider.stat, |s| s.counters.new_connections += 1);
            Ok(UpConn {
                rx: Rx::new(stream.clone(), UP_BUF),
                tx: Tx::new(stream),
                idle_since: Instant::now(),
                addr,
            })
        }
        Err(e) => {
            close_one(ep);
            Err(e)
        }
    }
}

pub fn provider_stats(shard: &Shard, idx: usize, f: impl FnOnce(&mut ProviderStats)) {
    if let Some(s) = shard.stats.borrow_mut().providers.get_mut(idx) {
        f(s);
    }
}

/// Closes idle connections past their provider's idle timeout, or closed by the provider
/// (or sent unasked-for bytes), once a second, until the shard drains (then all idle
/// connections are closed).
pub async fn sweep_idle(shard: Rc<Shard>) {
    loop {
        let tick = glommio::timer::sleep(Duration::from_secs(1));
        if futures_lite::future::or(
            async {
                tick.await;
                false
            },
            async {
                shard.drain.wait().await;
                true
            },
        )
        .await
        {
            break;
        }
        for p in &shard.config().providers.list {
            let timeout = Duration::from_millis(p.cfg.pool_idle_timeout_ms);
            for ep in &p.endpoints {
                let expired: Vec<UpConn> = {
                    let mut idle = ep.idle.borrow_mut();
                    let (old, keep): (Vec<UpConn>, Vec<UpConn>) = idle.drain(..).partition(|c| {
                        c.idle_since.elapsed() >= timeout || c.rx.stream.input_while_idle()
                    });
                    *idle = keep;
                    old
                };
                for _ in expired {
                    close_one(ep);
                }
            }
        }
    }
    for p in &shard.config().providers.list {
        for ep in &p.endpoints {
            let n = ep.idle.borrow_mut().drain(..).count();
            for _ in 0..n {
                close_one(ep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        let ep = Endpoint::new(
            "t".into(),
            vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            None,
            1,
        );
        ep.open.set(1);
        ep
    }

    fn enqueue(ep: &Endpoint) -> Rc<Waiter> {
        let w = Rc::new(Waiter::default());
        w.queued.set(true);
        ep.queued.set(ep.queued.get() + 1);
        ep.waiters.borrow_mut().push_back(w.clone());
        w
    }

    #[test]
    fn a_waiter_that_gives_up_is_skipped_and_no_longer_counted() {
        let ep = endpoint();
        let (a, b, c) = (enqueue(&ep), enqueue(&ep), enqueue(&ep));
        drop(QueueGuard {
            ep: &ep,
            waiter: b.clone(),
        });
        assert_eq!(ep.queued.get(), 2);
        assert!(hand_off(&ep, Handoff::MayConnect).is_none());
        assert!(a.handoff.borrow().is_some());
        assert!(hand_off(&ep, Handoff::MayConnect).is_none());
        assert!(b.handoff.borrow().is_none());
        assert!(c.handoff.borrow().is_some());
        assert_eq!(ep.queued.get(), 0);
        assert!(hand_off(&ep, Handoff::MayConnect).is_some());
    }

    #[test]
    fn a_served_waiter_leaving_does_not_touch_the_queue_count() {
        let ep = endpoint();
        let (a, _b) = (enqueue(&ep), enqueue(&ep));
        assert!(hand_off(&ep, Handoff::MayConnect).is_none());
        // The handoff was taken by the request, as `acquire` does before dropping its guard.
        assert!(a.handoff.borrow_mut().take().is_some());
        drop(QueueGuard { ep: &ep, waiter: a });
        assert_eq!(ep.queued.get(), 1);
    }

    #[test]
    fn mass_give_up_compacts_the_queue() {
        let ep = endpoint();
        let all: Vec<_> = (0..1000).map(|_| enqueue(&ep)).collect();
        for w in &all[..990] {
            drop(QueueGuard {
                ep: &ep,
                waiter: w.clone(),
            });
        }
        assert_eq!(ep.queued.get(), 10);
        // Compaction keeps the skipped entries to at most as many as the live ones (or 64).
        assert!(ep.waiters.borrow().len() <= 64);
    }
}
