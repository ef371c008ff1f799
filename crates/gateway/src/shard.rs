//! A shard: one pinned thread, one glommio executor, and everything a request touches.
//!
//! The shard is the unit of ownership. It owns its listener, its config generation (route
//! table, provider pools, certificates), its stats, and its date cache; its tasks share them
//! through `Rc` on one thread. The only things that leave the shard are stats snapshots (to
//! the aggregator) and the only things that enter are control messages: the drain, a new
//! config (a reload), and new address sets of provider host names from the resolver thread.

use crate::generation::{Generation, NewConfig};
use crate::stats::{ShardStats, Snapshot};
use crate::upstream::pool::provider_stats;
use coregate_http1::reply::DateCache;
use coregate_http1::request::Limits;
use coregate_runtime::event::Event;
use coregate_runtime::executor::run_pinned;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages from the main thread (and the resolver thread) to a shard.
#[derive(Debug, Clone)]
pub enum Control {
    /// Stop accepting, finish in-flight requests (up to the drain timeout), then exit.
    Drain,
    /// Switch to a new config (SIGHUP): requests in flight finish on the old one.
    Reload(Arc<NewConfig>),
    /// A provider endpoint's host name resolves to a new set of addresses (in config
    /// generation `generation`: a message about an older one is ignored).
    Addresses {
        generation: u64,
        provider: usize,
        endpoint: usize,
        addrs: Vec<std::net::SocketAddr>,
    },
    /// The active health check's verdict on a provider endpoint changed (in config
    /// generation `generation`).
    EndpointHealth {
        generation: u64,
        provider: usize,
        endpoint: usize,
        up: bool,
    },
    /// Until when (seconds since the epoch) each tenant is out of its usage budget (`None`:
    /// it is not), for the tenants of config generation `generation`.
    TenantBudgets {
        generation: u64,
        until: Vec<Option<u64>>,
    },
    /// This shard's shares of each tenant's limits (from the aggregator), for the tenants
    /// of config generation `generation`.
    TenantShares { generation: u64, shares: Vec<f64> },
    /// Re-resolving a provider's host name failed (sent to shard 0 only, to be counted).
    ResolveFailed { provider: usize },
}

/// Time limits for client connections, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    /// For a new connection's first byte (the idle timeout applies between requests).
    pub first_byte_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// State owned by one shard and shared by its tasks on its thread.
pub struct Shard {
    pub id: usize,
    pub core: usize,
    /// Parser limits and client timeouts: copied out of the config (they change on reload).
    pub limits: Cell<Limits>,
    pub http: Cell<HttpTimeouts>,
    pub drain_timeout: Cell<Duration>,
    /// The config generation new requests use ([`Shard::config`]).
    pub current: RefCell<Rc<Generation>>,
    pub stats: RefCell<ShardStats>,
    pub date: RefCell<DateCache>,
    /// Set when the drain starts: connections close after their current exchange.
    pub draining: Cell<bool>,
    pub drain: Event,
    /// During a drain: when connections waiting between requests are closed (a client
    /// that sends its next request before then gets it answered, with `Connection: close`).
    pub drain_idle_until: Cell<Option<Instant>>,
    /// The drain timeout passed: tunnels still open are closed now (a WebSocket gets a
    /// 1001 close frame first).
    pub drain_expired: Cell<bool>,
    /// Requests between parsed head and finished response.
    pub inflight: Cell<usize>,
    /// The access log's per-shard buffer, when there is an access log.
    pub access_log: Option<crate::access_log::ShardLog>,
    /// The usage export's per-shard buffer (one JSON line per request or session).
    pub usage_export: Option<crate::access_log::ShardLog>,
    /// Makes request ids.
    pub ids: crate::request_id::IdGenerator,
    /// This shard's share of every tenant's limits (replaced with the config generation).
    pub tenant_limits: RefCell<Rc<crate::tenants::limits::ShardLimits>>,
    /// How many shards the process runs (a tenant's first share is 1 / this).
    pub shard_count: usize,
    /// Usage per tenant × provider × route.
    pub usage: RefCell<crate::stats::usage::ShardUsage>,
    /// Until when each tenant of the current generation is out of budget.
    pub budget_until: RefCell<Vec<Option<u64>>>,
    /// Tenant rates shared through Redis (`limits.backend = "redis"`), per generation.
    pub redis_limits: RefCell<Option<Rc<crate::tenants::redis::RedisLimits>>>,
}

impl Shard {
    /// Hands the access log's and the usage export's buffered lines to their writers.
    fn flush_logs(&self) {
        for log in self.access_log.iter().chain(&self.usage_export) {
            log.flush();
        }
    }

    /// Until when (for `Retry-After`) `tenant` is out of its usage budget, if it is.
    pub fn out_of_budget(&self, tenant: usize) -> Option<u64> {
        let until = self.budget_until.borrow().get(tenant).copied().flatten()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (until > now).then_some(until)
    }

    /// Whether requests must note their route, provider and tenant names (for a log line
    /// or an export line).
    pub fn records_names(&self) -> bool {
        self.access_log.is_some() || self.usage_export.is_some()
    }

    /// The config generation for a new request; the request holds it to its end.
    pub fn config(&self) -> Rc<Generation> {
        self.current.borrow().clone()
    }
}

/// What a shard needs to start; everything here is moved into its thread.
pub struct ShardSpec {
    pub id: usize,
    pub core: usize,
    /// The config to start with (generation 1).
    pub config: Arc<NewConfig>,
    pub max_connections: usize,
    pub snapshots: Sender<Snapshot>,
    pub control: Receiver<Control>,
    /// Reports whether the listener was bound (the main thread waits for every shard).
    pub ready: Sender<Result<(), String>>,
    /// Told when the shard's thread ends, normally or by a panic.
    pub exited: Sender<ShardExit>,
    /// The access log writer's channel, when there is an access log.
    pub access_log: Option<Sender<Vec<u8>>>,
    /// The usage export writer's channel, when there is one.
    pub usage_export: Option<Sender<Vec<u8>>>,
    pub shard_count: usize,
}

/// A shard thread's end, as the main thread learns it.
#[derive(Debug, Clone, Copy)]
pub struct ShardExit {
    pub id: usize,
    pub panicked: bool,
}

/// Sends [`ShardExit`] when dropped: at the end of the thread, or while a panic unwinds it.
struct ExitNotice {
    id: usize,
    tx: Sender<ShardExit>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.tx.send(ShardExit {
            id: self.id,
            panicked: std::thread::panicking(),
        });
    }
}

/// Starts the shard's thread; returns when the thread is spawned.
pub fn spawn(spec: ShardSpec) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("coregate-shard-{}", spec.id))
        .spawn(move || {
            let _notice = ExitNotice {
                id: spec.id,
                tx: spec.exited.clone(),
            };
            run_thread(spec)
        })
}

fn run_thread(spec: ShardSpec) {
    let ready = spec.ready.clone();
    let name = format!("shard-{}", spec.id);
    let on_error = move |e: String| {
        let _ = ready.send(Err(e));
    };
    run_pinned(&name, Some(spec.core), on_error, shard_main(spec));
}

fn current_tid() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

async fn shard_main(spec: ShardSpec) {
    let listeners = match bind_listeners(&spec) {
        Ok(l) => l,
        Err(e) => {
            let _ = spec.ready.send(Err(e));
            return;
        }
    };
    let generation = match spec.config.build(spec.max_connections, None) {
        Ok(g) => g,
        Err(e) => {
            let _ = spec.ready.send(Err(format!("shard {}: {e}", spec.id)));
            return;
        }
    };
    let shard = new_shard(&spec, generation);
    if spec.id == 0 {
        // Once per process: which read path this kernel gave the shards (all alike).
        let multishot = coregate_runtime::executor::multishot_receives();
        coregate_runtime::log::info(&format!(
            "socket reads: {}",
            coregate_runtime::executor::socket_reads(multishot)
        ));
    }
    let _ = spec.ready.send(Ok(()));

    let slots = Rc::new(glommio::sync::Semaphore::new(spec.max_connections as u64));
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|(listener, tls)| {
            glommio::spawn_local(crate::accept::accept_loop(
                shard.clone(),
                listener,
                slots.clone(),
                spec.max_connections,
                tls,
            ))
        })
        .collect();
    let pool_sweeper = glommio::spawn_local(crate::upstream::pool::sweep_idle(shard.clone()));
    housekeeping(&shard, &spec).await;
    drain(&shard, accepts, &spec.snapshots).await;
    pool_sweeper.await;
    shard.flush_logs();
    ship(&shard, &spec.snapshots);
    coregate_runtime::deadline::release_wakers();
}

/// The shard's state at start, on config generation `generation`.
fn new_shard(spec: &ShardSpec, generation: Generation) -> Rc<Shard> {
    let cfg = &spec.config.config;
    let mut stats = ShardStats::new(spec.id, spec.core, current_tid(), spec.config.slot_count);
    stats.counters.config_generation = generation.number;
    generation
        .providers
        .register_endpoints(&mut stats.providers);
    let tenant_count = generation.tenants.names.len();
    Rc::new(Shard {
        id: spec.id,
        core: spec.core,
        limits: Cell::new(spec.config.limits()),
        http: Cell::new(spec.config.timeouts()),
        drain_timeout: Cell::new(Duration::from_millis(cfg.server.drain_timeout_ms)),
        current: RefCell::new(Rc::new(generation)),
        stats: RefCell::new(stats),
        date: RefCell::new(DateCache::default()),
        draining: Cell::new(false),
        drain: Event::default(),
        drain_idle_until: Cell::new(None),
        drain_expired: Cell::new(false),
        access_log: spec
            .access_log
            .clone()
            .map(|tx| crate::access_log::ShardLog::new(&cfg.access_log, tx, spec.id as u64 + 1)),
        usage_export: spec.usage_export.clone().map(|tx| {
            crate::access_log::ShardLog::new(&Default::default(), tx, spec.id as u64 + 1)
        }),
        ids: crate::request_id::IdGenerator::new(spec.id),
        tenant_limits: RefCell::new(Rc::new(crate::tenants::limits::ShardLimits::new(
            tenant_count,
            spec.shard_count,
        ))),
        shard_count: spec.shard_count,
        usage: RefCell::new(Default::default()),
        budget_until: RefCell::new(Vec::new()),
        redis_limits: RefCell::new(crate::tenants::redis::for_config(cfg, tenant_count)),
        inflight: Cell::new(0),
    })
}

/// The housekeeping tick (date cache, memory release, stats shipping, log flushing,
/// control messages) until a drain is asked for.
async fn housekeeping(shard: &Rc<Shard>, spec: &ShardSpec) {
    let fault = injected_fault(spec.id);
    let started = Instant::now();
    let interval = Duration::from_millis(spec.config.config.stats.interval_ms);
    let tick = interval.min(Duration::from_millis(100));
    let mut next_snapshot = Instant::now() + interval;
    let mut memory = MemoryRelease::default();
    loop {
        glommio::timer::sleep(tick).await;
        inject(spec.id, fault, started);
        shard.date.borrow_mut().refresh();
        memory.tick(shard.stats.borrow().counters.connections_active);
        if Instant::now() >= next_snapshot {
            next_snapshot += interval;
            ship(shard, &spec.snapshots);
        }
        shard.flush_logs();
        if !take_control(shard, &spec.control, spec.max_connections) {
            return;
        }
    }
}

/// How long a drain leaves keep-alive connections for their next request (answered with
/// `Connection: close`) before it closes them: a client in the middle of a request loop
/// sends its next one within this, and learns of the drain from its response instead of
/// racing a close (at most half the drain timeout).
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How long tunnels get, after the drain timeout, to send their close frames.
const TUNNEL_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The drain: stop accepting (the accept loops drop their listeners; with
/// `net.ipv4.tcp_migrate_req = 1` the kernel moves connections still queued on them to
/// another coregate's listeners on the same address), let requests in flight finish, close
/// keep-alive connections after [`DRAIN_IDLE_GRACE`], and wait until every connection is
/// gone or the drain timeout passed; then tunnels still open are closed (WebSocket: 1001).
async fn drain(shard: &Rc<Shard>, accepts: Vec<glommio::Task<()>>, tx: &Sender<Snapshot>) {
    use coregate_runtime::deadline::{cut, WaitClass};
    let started = Instant::now();
    let timeout = shard.drain_timeout.get();
    let idle_until = started + DRAIN_IDLE_GRACE.min(timeout / 2);
    shard.drain_idle_until.set(Some(idle_until));
    shard.draining.set(true);
    shard.drain.fire();
    cut(WaitClass::BetweenRequests, idle_until);
    for a in accepts {
        a.await;
    }
    let open = || shard.stats.borrow().counters.connections_active > 0;
    let deadline = started + timeout;
    let mut last_ship = Instant::now();
    while open() && Instant::now() < deadline + TUNNEL_CLOSE_GRACE {
        if Instant::now() >= deadline && !shard.drain_expired.replace(true) {
            cut(WaitClass::Tunnel, Instant::now());
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
        // The process lives on while it drains: dates stay right and /stats current.
        if last_ship.elapsed() >= Duration::from_millis(100) {
            shard.date.borrow_mut().refresh();
            ship(shard, tx);
            last_ship = Instant::now();
        }
    }
}

/// Gives freed memory back to the OS once many connections closed: the allocator keeps
/// a thread's freed pages for reuse, and a shard that idles after a storm of connections
/// would otherwise hold their memory for good (70 MB after 10,000 closed, measured).
#[derive(Default)]
struct MemoryRelease {
    /// The most connections open since the last release.
    peak: u64,
    last: Option<Instant>,
}

impl MemoryRelease {
    /// Connections that must have closed since the peak before memory is released.
    const CLOSED: u64 = 256;
    const EVERY: Duration = Duration::from_secs(2);

    fn tick(&mut self, open: u64) {
        self.peak = self.peak.max(open);
        let due = self.last.is_none_or(|t| t.elapsed() >= Self::EVERY);
        if due && self.peak.saturating_sub(open) >= Self::CLOSED {
            coregate_runtime::host::release_free_memory();
            self.peak = open;
            self.last = Some(Instant::now());
        }
    }
}

/// A listener, and whether it is the TLS one.
type Listener = (glommio::net::TcpListener, bool);

/// Binds the shard's plain listener and its TLS listener, whichever are configured.
fn bind_listeners(spec: &ShardSpec) -> Result<Vec<Listener>, String> {
    let server = &spec.config.config.server;
    let bind = |addr: &str| {
        coregate_runtime::listener::bind_listener(addr, server.backlog).map_err(|e| {
            format!(
                "shard {}: cannot listen on {addr}: {e} (`coregate doctor --config FILE` \
                     checks the ports and limits the config needs)",
                spec.id
            )
        })
    };
    let mut out = Vec::new();
    if !server.listen.is_empty() {
        out.push((bind(&server.listen)?, false));
    }
    if spec.config.tls.is_some() {
        out.push((bind(&server.tls_listen)?, true));
    }
    Ok(out)
}

/// Applies the control messages waiting; false when the shard must drain.
fn take_control(shard: &Shard, control: &Receiver<Control>, connection_cap: usize) -> bool {
    loop {
        match control.try_recv() {
            Ok(Control::Drain) | Err(TryRecvError::Disconnected) => return false,
            Err(TryRecvError::Empty) => return true,
            Ok(Control::Reload(new)) => crate::generation::switch(shard, &new, connection_cap),
            Ok(Control::Addresses {
                generation,
                provider,
                endpoint,
                addrs,
            }) => {
                let config = shard.config();
                if config.number != generation {
                    continue;
                }
                config.providers.set_addrs(provider, endpoint, addrs);
                if shard.id == 0 {
                    provider_stats(shard, provider, |s| s.counters.dns_updates += 1);
                }
            }
            Ok(Control::EndpointHealth {
                generation,
                provider,
                endpoint,
                up,
            }) => {
                let config = shard.config();
                if config.number == generation {
                    config.providers.set_down(provider, endpoint, !up);
                }
            }
            Ok(Control::TenantBudgets { generation, until }) => {
                if shard.config().number == generation {
                    let newly = {
                        let old = shard.budget_until.borrow();
                        until
                            .iter()
                            .enumerate()
                            .any(|(i, u)| u.is_some() && old.get(i).is_none_or(|o| o.is_none()))
                    };
                    *shard.budget_until.borrow_mut() = until;
                    // Open sessions of a tenant out of budget close now (1008).
                    if newly {
                        coregate_runtime::deadline::cut(
                            coregate_runtime::deadline::WaitClass::Tunnel,
                            Instant::now(),
                        );
                    }
                }
            }
            Ok(Control::TenantShares { generation, shares }) => {
                if shard.config().number == generation {
                    shard.tenant_limits.borrow().set_shares(&shares);
                }
            }
            Ok(Control::ResolveFailed { provider }) => {
                provider_stats(shard, provider, |s| s.counters.dns_failures += 1);
            }
        }
    }
}

/// Fault injection for tests/shard_failure.rs, read once: `COREGATE_FAULT_SHARD_PANIC=<id>`
/// makes that shard panic on its first tick (the process must then exit non-zero);
/// `COREGATE_FAULT_SHARD_STALL=<id>` blocks its thread instead, as a task that never yields
/// would (admin /health must then turn 503): on its first tick, before any snapshot, or
/// with `COREGATE_FAULT_SHARD_STALL_AFTER_MS=<ms>` once it has run (and reported) that long.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Panic,
    Stall { after: Duration },
}

fn injected_fault(id: usize) -> Fault {
    let is = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(id)
    };
    if is("COREGATE_FAULT_SHARD_PANIC") {
        Fault::Panic
    } else if is("COREGATE_FAULT_SHARD_STALL") {
        let after = std::env::var("COREGATE_FAULT_SHARD_STALL_AFTER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        Fault::Stall { after }
    } else {
        Fault::None
    }
}

#[allow(clippy::panic)]
fn inject(id: usize, fault: Fault, started: Instant) {
    match fault {
        Fault::None => {}
        Fault::Panic => panic!("shard {id}: panic injected by COREGATE_FAULT_SHARD_PANIC"),
        Fault::Stall { after } if started.elapsed() < after => {}
        // Blocks the executor for good, without ending the thread.
        Fault::Stall { .. } => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
}

fn ship(shard: &Shard, tx: &Sender<Snapshot>) {
    let snap = {
        let mut stats = shard.stats.borrow_mut();
        shard.config().providers.update_gauges(&mut stats.providers);
        if let Some(log) = &shard.access_log {
            stats.counters.access_log_dropped = log.dropped.get();
        }
        if let Some(r) = shard.redis_limits.borrow().as_ref() {
            stats.counters.limits_fallback = u64::from(!r.healthy.get());
            stats.counters.redis_failures = r.failures.get();
        }
        let mut snap = stats.take_snapshot();
        snap.usage = shard.usage.borrow().rows();
        snap.refused = shard.usage.borrow().refused_rows();
        snap.tenants = shard
            .tenant_limits
            .borrow()
            .states
            .iter()
            .map(|s| crate::stats::tenants::TenantCounters {
                attempts: s.attempts.get(),
                admitted: s.admitted.get(),
                limited: s.limited.get(),
            })
            .collect();
        snap
    };
    // Never block a shard on the aggregator; a full channel drops one interval's delta.
    let _ = tx.try_send(snap);
}
