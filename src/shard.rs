//! A shard: one pinned thread, one glommio executor, and everything a request touches.
//!
//! The shard is the unit of ownership. It owns its listener, its route table copy, its
//! provider pools, its stats, and its date cache; its tasks share them through `Rc` on one
//! thread. The only things that leave the shard are stats snapshots (to the aggregator)
//! and the only thing that enters is the control message that starts a drain.

use crate::config::Config;
use crate::event::Event;
use crate::http::reply::DateCache;
use crate::http::request::Limits;
use crate::route::RouteTable;
use crate::stats::{ShardStats, Snapshot};
use crate::upstream::pool::Providers;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use glommio::{LocalExecutorBuilder, Placement};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Messages from the main thread to a shard.
#[derive(Debug, Clone, Copy)]
pub enum Control {
    /// Stop accepting, finish in-flight requests (up to the drain timeout), then exit.
    Drain,
}

/// Time limits for client connections, from `[http]`.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// State owned by one shard and shared by its tasks on its thread.
pub struct Shard {
    pub id: usize,
    pub core: usize,
    pub limits: Limits,
    pub http: HttpTimeouts,
    pub routes: RouteTable,
    pub providers: Providers,
    pub stats: RefCell<ShardStats>,
    pub date: RefCell<DateCache>,
    /// Set when the drain starts: connections close after their current exchange.
    pub draining: Cell<bool>,
    pub drain: Event,
    /// Requests between parsed head and finished response.
    pub inflight: Cell<usize>,
}

/// What a shard needs to start; everything here is moved into its thread.
pub struct ShardSpec {
    pub id: usize,
    pub core: usize,
    pub config: Config,
    pub max_connections: usize,
    pub snapshots: Sender<Snapshot>,
    pub control: Receiver<Control>,
    /// Reports whether the listener was bound (the main thread waits for every shard).
    pub ready: Sender<Result<(), String>>,
}

/// Starts the shard's thread; returns when the thread is spawned.
pub fn spawn(spec: ShardSpec) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("coregate-shard-{}", spec.id))
        .spawn(move || run_thread(spec))
}

fn run_thread(spec: ShardSpec) {
    let ready = spec.ready.clone();
    if !core_affinity::set_for_current(core_affinity::CoreId { id: spec.core }) {
        let _ = ready.send(Err(format!(
            "shard {}: cannot pin thread to core {}",
            spec.id, spec.core
        )));
        return;
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("shard-{}", spec.id))
        .io_memory(crate::doctor::IO_MEMORY_PER_SHARD)
        .make();
    let executor = match executor {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "shard {}: cannot start the io_uring executor: {e} \
                 (io_uring disabled, or RLIMIT_MEMLOCK too low? run `coregate doctor`)",
                spec.id
            )));
            return;
        }
    };
    executor.run(shard_main(spec));
}

fn current_tid() -> i64 {
    // SAFETY: gettid has no preconditions and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

async fn shard_main(spec: ShardSpec) {
    let cfg = &spec.config;
    let listener = match crate::accept::bind_listener(&cfg.server.listen, cfg.server.backlog) {
        Ok(l) => l,
        Err(e) => {
            let _ = spec.ready.send(Err(format!(
                "shard {}: cannot listen on {}: {e}",
                spec.id, cfg.server.listen
            )));
            return;
        }
    };
    let shard = Rc::new(Shard {
        id: spec.id,
        core: spec.core,
        limits: Limits {
            max_head_bytes: cfg.http.max_head_bytes,
            max_headers: cfg.http.max_headers,
        },
        http: HttpTimeouts {
            head_timeout: Duration::from_millis(cfg.http.head_timeout_ms),
            idle_timeout: Duration::from_millis(cfg.http.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(cfg.http.body_read_timeout_ms),
        },
        routes: RouteTable::new(&cfg.routes, &cfg.providers),
        providers: Providers::new(&cfg.providers, spec.max_connections),
        stats: RefCell::new(ShardStats::new(
            spec.id,
            spec.core,
            current_tid(),
            cfg.providers.len(),
        )),
        date: RefCell::new(DateCache::default()),
        draining: Cell::new(false),
        drain: Event::default(),
        inflight: Cell::new(0),
    });
    let _ = spec.ready.send(Ok(()));

    let accept = glommio::spawn_local(crate::accept::accept_loop(
        shard.clone(),
        listener,
        spec.max_connections,
    ));
    let pool_sweeper = glommio::spawn_local(crate::upstream::pool::sweep_idle(shard.clone()));

    // Housekeeping tick: date cache, stats shipping, control messages.
    let interval = Duration::from_millis(cfg.stats.interval_ms);
    let tick = interval.min(Duration::from_millis(100));
    let mut next_snapshot = Instant::now() + interval;
    loop {
        glommio::timer::sleep(tick).await;
        shard.date.borrow_mut().refresh();
        if Instant::now() >= next_snapshot {
            next_snapshot += interval;
            ship(&shard, &spec.snapshots);
        }
        match spec.control.try_recv() {
            Ok(Control::Drain) | Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {}
        }
    }

    // Drain: stop accepting (the accept loop drops the listener), then wait for requests
    // in flight; idle keep-alive connections are closed when the executor exits.
    shard.draining.set(true);
    shard.drain.fire();
    accept.await;
    let deadline = Instant::now() + Duration::from_millis(cfg.server.drain_timeout_ms);
    while shard.inflight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    pool_sweeper.await;
    ship(&shard, &spec.snapshots);
    crate::deadline::release_wakers();
}

fn ship(shard: &Shard, tx: &Sender<Snapshot>) {
    let snap = {
        let mut stats = shard.stats.borrow_mut();
        shard.providers.update_gauges(&mut stats.providers);
        stats.take_snapshot()
    };
    // Never block a shard on the aggregator; a full channel drops one interval's delta.
    let _ = tx.try_send(snap);
}
