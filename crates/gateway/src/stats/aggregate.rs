//! The aggregator: the one place where state from several shards meets.
//!
//! It runs on its own thread (not a shard core's executor), receives [`Snapshot`]s from every
//! shard and admin queries from the admin listener, and owns the merged view. Because only
//! this thread touches that view, it needs no lock either.

use super::{new_histogram, Counters, ProviderStats, Snapshot};
use crossbeam_channel::{select, Receiver, Sender};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::Instant;

/// A request from the admin listener, answered with the rendered body.
pub enum Query {
    Stats(Sender<String>),
    Metrics(Sender<String>),
}

/// Cumulative view of one shard.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub shard: usize,
    pub core: usize,
    pub tid: i64,
    pub counters: Counters,
    pub latency_us: Histogram<u64>,
    pub providers: Vec<ProviderView>,
}

/// A provider's cumulative view: the same shape as a shard's own stats.
pub type ProviderView = ProviderStats;

/// The merged state; see [`super::render`] for how it is shown.
pub struct Aggregator {
    pub started: Instant,
    pub provider_names: Vec<String>,
    pub shards: BTreeMap<usize, ShardView>,
}

impl Aggregator {
    pub fn new(provider_names: Vec<String>) -> Aggregator {
        Aggregator {
            started: Instant::now(),
            provider_names,
            shards: BTreeMap::new(),
        }
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
        });
        view.core = s.core;
        view.tid = s.tid;
        view.counters = s.counters;
        let _ = view.latency_us.add(&s.latency_delta);
        if view.providers.len() < s.providers.len() {
            view.providers
                .resize_with(s.providers.len(), ProviderView::default);
        }
        for (pv, p) in view.providers.iter_mut().zip(s.providers) {
            pv.counters = p.counters;
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
            }
        }
    }

    fn answer(&self, q: Query) {
        let _ = match q {
            Query::Stats(reply) => reply.send(super::render::stats_json(self).to_string()),
            Query::Metrics(reply) => reply.send(super::render::prometheus(self)),
        };
    }
}
