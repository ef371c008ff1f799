//! The aggregator: the one place where state from several shards meets.
//!
//! It runs on its own thread (not a shard core's executor), receives [`Snapshot`]s from every
//! shard and admin queries from the admin listener, and owns the merged view. Because only
//! this thread touches that view, it needs no lock either.

use super::{new_histogram, Counters, ProviderStats, Snapshot};
use crossbeam_channel::{select, Receiver, Sender};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A request from the admin listener, answered with the rendered body.
pub enum Query {
    Stats(Sender<String>),
    Metrics(Sender<String>),
    /// Admin `/health`: whether to answer 200, and the JSON body.
    Health(Sender<(bool, String)>),
    /// The process started draining (from the signal thread): `/health` turns 503 so that
    /// load balancers stop sending.
    Draining,
    /// A reload's outcome (from the main thread).
    Reloaded(ReloadEvent),
    /// The provider names of the stats slots, after a reload added providers.
    ProviderNames(Vec<String>),
    /// The tenants of the config generation the shards (now) serve, with their budgets.
    Tenants(u64, Vec<crate::tenants::AggregatorTenant>),
    /// `/usage`, and whether to start a new window after answering.
    Usage {
        reset: bool,
        reply: Sender<String>,
    },
    /// Where the fleet-wide usage totals go (the Redis backend).
    FleetUsage(crossbeam_channel::Sender<super::fleet::Increments>),
    /// The shards' control channels, for the tenants' shares.
    ShardControls(Vec<crossbeam_channel::Sender<crate::shard::Control>>),
}

pub use super::config_status::ReloadEvent;

/// Cumulative view of one shard.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub shard: usize,
    pub core: usize,
    pub tid: i64,
    pub counters: Counters,
    pub latency_us: Histogram<u64>,
    pub providers: Vec<ProviderView>,
    /// When its last snapshot arrived.
    pub seen: Instant,
}

/// A provider's cumulative view: the same shape as a shard's own stats.
pub type ProviderView = ProviderStats;

/// The merged state; see [`super::render`] for how it is shown.
pub struct Aggregator {
    pub started: Instant,
    pub provider_names: Vec<String>,
    pub shards: BTreeMap<usize, ShardView>,
    /// A shard whose last snapshot is older than this is stale (stuck or gone).
    pub stale_after: Duration,
    /// Shards reported stale in the log, so each is logged once per episode.
    logged_stale: BTreeSet<usize>,
    draining: bool,
    /// How many shards were started (one that never shipped a snapshot is stale too).
    expected: usize,
    pub config: super::config_status::ConfigStatus,
    pub tenants: super::tenants::TenantBalance,
    pub usage: super::usage::UsageView,
    /// The fleet totals' writer, and the totals it was last given.
    fleet: Option<(Sender<super::fleet::Increments>, super::fleet::Increments)>,
    /// The shards' snapshot interval: tenants' shares are rebalanced as often.
    interval: Duration,
}

impl Aggregator {
    /// `interval` is the shards' snapshot interval; a shard is stale after three of them
    /// (and at least 3 s) without one.
    pub fn new(provider_names: Vec<String>, interval: Duration, shards: usize) -> Aggregator {
        Aggregator {
            started: Instant::now(),
            provider_names,
            shards: BTreeMap::new(),
            stale_after: (interval * 3).max(Duration::from_secs(3)),
            logged_stale: BTreeSet::new(),
            draining: false,
            expected: shards,
            config: Default::default(),
            tenants: Default::default(),
            usage: Default::default(),
            fleet: None,
            interval,
        }
    }

    /// Shards whose snapshots stopped: a stuck executor (a task that never yields) or a
    /// thread that ended. Their listeners still take their share of new connections.
    pub fn stale_shards(&self) -> Vec<usize> {
        let silent_since_start = self.started.elapsed() > self.stale_after;
        (0..self.expected)
            .filter(|id| match self.shards.get(id) {
                Some(s) => s.seen.elapsed() > self.stale_after,
                None => silent_since_start,
            })
            .collect()
    }

    /// How many shards were started.
    pub fn expected_shards(&self) -> usize {
        self.expected
    }

    /// The config generation each started shard last reported (`None`: no snapshot yet).
    pub fn shard_generations(&self) -> Vec<Option<u64>> {
        (0..self.expected)
            .map(|id| self.shards.get(&id).map(|s| s.counters.config_generation))
            .collect()
    }

    /// Hands the usage added since the last interval to the fleet totals' writer.
    fn push_fleet_usage(&mut self) {
        let Some((tx, last)) = self.fleet.as_mut() else {
            return;
        };
        let now = self.usage.fleet_totals();
        let mut delta = super::fleet::Increments::new();
        for (tenant, fields) in &now {
            for (field, n) in fields {
                let before = last
                    .get(tenant)
                    .and_then(|f| f.get(field))
                    .copied()
                    .unwrap_or(0);
                if *n > before {
                    delta
                        .entry(tenant.clone())
                        .or_default()
                        .insert(field, n - before);
                }
            }
        }
        if !delta.is_empty() && tx.try_send(delta).is_ok() {
            *last = now;
        }
    }

    /// Logs shards that went stale or came back, once per change.
    fn watch(&mut self) {
        let stale: BTreeSet<usize> = self.stale_shards().into_iter().collect();
        for s in stale.difference(&self.logged_stale) {
            coregate_runtime::log::error(&format!(
                "shard {s}: no stats snapshot for over {:?}: stuck or gone; its listener still \
                 takes new connections (admin /health now answers 503)",
                self.stale_after
            ));
        }
        for s in self.logged_stale.difference(&stale) {
            coregate_runtime::log::info(&format!("shard {s}: snapshots again"));
        }
        self.logged_stale = stale;
    }

    fn health(&self) -> (bool, String) {
        let stale = self.stale_shards();
        let status = if self.draining {
            "draining"
        } else if !stale.is_empty() {
            "degraded"
        } else {
            "ok"
        };
        let body = serde_json::json!({"status": status, "stale_shards": stale});
        (status == "ok", body.to_string())
    }

    /// Folds one snapshot in: counters replace (they are cumulative), histograms add.
    pub fn apply(&mut self, s: Snapshot) {
        let view = self.shards.entry(s.shard).or_insert_with(|| ShardView {
            shard: s.shard,
            core: s.core,
            tid: s.tid,
            counters: Counters::default(),
            latency_us: new_histogram(),
            providers: Vec::new(),
            seen: Instant::now(),
        });
        view.seen = Instant::now();
        view.core = s.core;
        view.tid = s.tid;
        view.counters = s.counters;
        let _ = view.latency_us.add(&s.latency_delta);
        if view.providers.len() < s.providers.len() {
            view.providers
                .resize_with(s.providers.len(), ProviderView::default);
        }
        let generation = s.counters.config_generation;
        self.tenants.record(s.shard, generation, s.tenants);
        self.usage.record(s.shard, s.usage, s.refused);
        for (pv, p) in view.providers.iter_mut().zip(s.providers) {
            pv.counters = p.counters;
            pv.endpoints = p.endpoints;
            let _ = pv.ttfb_us.add(&p.ttfb_us);
            let _ = pv.total_us.add(&p.total_us);
            let _ = pv.handshake_us.add(&p.handshake_us);
        }
    }

    /// Serves snapshots and queries until the query channel closes. After every shard is
    /// gone it keeps answering queries with the final view.
    pub fn run(mut self, snapshots: Receiver<Snapshot>, queries: Receiver<Query>) {
        let never = crossbeam_channel::never();
        let mut shards_open = true;
        let tick = crossbeam_channel::tick(Duration::from_secs(1));
        let rebalance = crossbeam_channel::tick(self.interval);
        loop {
            let snaps = if shards_open { &snapshots } else { &never };
            select! {
                recv(snaps) -> msg => match msg {
                    Ok(s) => self.apply(s),
                    Err(_) => shards_open = false,
                },
                recv(queries) -> msg => match msg {
                    Ok(q) => self.answer(q),
                    Err(_) => return,
                },
                recv(tick) -> _ => {
                    if shards_open && !self.draining {
                        self.watch();
                    }
                }
                recv(rebalance) -> _ => {
                    self.tenants.rebalance();
                    self.tenants.check_budgets(&self.usage.spent_by_tenant());
                    self.push_fleet_usage();
                }
            }
        }
    }

    fn answer(&mut self, q: Query) {
        // A reply nobody waits for any more (the admin request timed out) is dropped.
        match q {
            Query::Stats(reply) => drop(reply.send(super::render::stats_json(self).to_string())),
            Query::Metrics(reply) => drop(reply.send(super::render::prometheus(self))),
            Query::Health(reply) => drop(reply.send(self.health())),
            Query::Draining => self.draining = true,
            Query::Reloaded(event) => self.config.record(event),
            Query::ProviderNames(names) => self.provider_names = names,
            Query::Tenants(generation, t) => self.tenants.set_tenants(generation, t),
            Query::FleetUsage(tx) => self.fleet = Some((tx, Default::default())),
            Query::Usage { reset, reply } => {
                let doc = self.usage.json(&self.provider_names, reset);
                drop(reply.send(doc.to_string()))
            }
            Query::ShardControls(c) => self.tenants.controls = c,
        }
    }
}
