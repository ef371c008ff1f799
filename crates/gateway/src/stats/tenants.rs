//! Tenants as the aggregator sees them: their counts from every shard, and the shares of
//! their limits it hands back to the shards (see `tenants::limits`).

use super::render::{escape, Prom};
use crate::shard::Control;
use crate::tenants::budget::{Budgets, Spent, Windows};
use crate::tenants::limits::shares_for;
use crate::tenants::AggregatorTenant;
use crossbeam_channel::Sender;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// One tenant on one shard, cumulative.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TenantCounters {
    /// Requests that presented the tenant's key for a route it may use.
    pub attempts: u64,
    pub admitted: u64,
    /// Held back by a limit (429).
    pub limited: u64,
}

impl TenantCounters {
    fn add(&mut self, o: &TenantCounters) {
        self.attempts += o.attempts;
        self.admitted += o.admitted;
        self.limited += o.limited;
    }
}

#[derive(Default)]
pub struct TenantBalance {
    /// The current generation's tenants, in table order.
    pub names: Vec<String>,
    budgets: Vec<Budgets>,
    /// Each tenant's request rate (0: none), which the shares split.
    rates: Vec<f64>,
    windows: Vec<Windows>,
    /// Until when each tenant is out of budget, as last told to the shards.
    exhausted: Vec<Option<u64>>,
    /// The config generation every shard was last told `exhausted` under.
    told_generation: Option<u64>,
    /// Per shard: the config generation its counts belong to, and the counts.
    shards: BTreeMap<usize, (u64, Vec<TenantCounters>)>,
    /// Per shard: the attempts at the last rebalance.
    seen: BTreeMap<usize, Vec<u64>>,
    /// The tenant names of the last few config generations (a shard's counts are in its
    /// generation's table order).
    names_of: BTreeMap<u64, Vec<String>>,
    /// By tenant name: what shards counted under generations they have left (a reload
    /// starts a shard's counts afresh; the totals, Prometheus counters, go on).
    carried: std::collections::HashMap<String, TenantCounters>,
    /// Per shard: each tenant's demand (attempts per second), smoothed over intervals.
    demand: BTreeMap<usize, Vec<f64>>,
    /// When the last rebalance ran.
    rebalanced: Option<std::time::Instant>,
    /// Where shares go (set once the shards run).
    pub controls: Vec<Sender<Control>>,
}

impl TenantBalance {
    pub fn set_tenants(&mut self, generation: u64, tenants: Vec<AggregatorTenant>) {
        self.names_of
            .insert(generation, tenants.iter().map(|t| t.name.clone()).collect());
        // A shard is at most one reload behind the others for long; keep a few.
        while self.names_of.len() > 4 {
            self.names_of.pop_first();
        }
        let old_names = std::mem::replace(
            &mut self.names,
            tenants.iter().map(|t| t.name.clone()).collect(),
        );
        self.budgets = tenants.iter().map(|t| t.budgets).collect();
        self.rates = tenants.iter().map(|t| t.rate_per_s).collect();
        // A tenant's windows (what it spent before this minute and day) carry over a
        // reload by name, or a SIGHUP would give it its whole daily budget again; a tenant
        // new to the config starts fresh, one removed is dropped.
        let mut kept: std::collections::HashMap<String, (Windows, Option<u64>)> = old_names
            .into_iter()
            .zip(std::mem::take(&mut self.windows))
            .zip(std::mem::take(&mut self.exhausted))
            .map(|((name, w), e)| (name, (w, e)))
            .collect();
        (self.windows, self.exhausted) = self
            .names
            .iter()
            .map(|name| kept.remove(name).unwrap_or_default())
            .unzip();
        // The tenants' places in the table may have moved: demand starts over.
        self.demand.clear();
    }

    /// Checks every tenant's budgets against `spent` (totals since start, by name) and
    /// tells the shards when a tenant runs out or is back.
    pub fn check_budgets(&mut self, spent: &std::collections::HashMap<String, Spent>) {
        let now = std::time::SystemTime::now();
        let mut changed = false;
        for (i, name) in self.names.iter().enumerate() {
            let Some(b) = self.budgets.get(i).filter(|b| b.any()) else {
                continue;
            };
            let total = spent.get(name).copied().unwrap_or_default();
            let until = self.windows[i].check(total, b, now);
            if until != self.exhausted[i] {
                if until.is_some() {
                    coregate_runtime::log::warn(&format!(
                        "tenant {name:?}: usage budget exhausted; refused until the window ends"
                    ));
                }
                self.exhausted[i] = until;
                changed = true;
            }
        }
        let generations = self.shards.values().map(|(g, _)| *g);
        let (Some(generation), Some(oldest)) = (generations.clone().max(), generations.min())
        else {
            return;
        };
        // A shard forgets who is out of budget when it switches generation (a reload), so
        // the flags go again until every shard has them under its new generation.
        if changed || self.told_generation != Some(generation) {
            for c in &self.controls {
                let until = self.exhausted.clone();
                let _ = c.try_send(Control::TenantBudgets { generation, until });
            }
            if oldest == generation {
                self.told_generation = Some(generation);
            }
        }
    }

    pub fn record(&mut self, shard: usize, generation: u64, counts: Vec<TenantCounters>) {
        let Some((was, old)) = self.shards.insert(shard, (generation, counts)) else {
            return;
        };
        if was == generation {
            return;
        }
        // The shard switched generation: its counts start again from zero, in the new
        // table's order. Its old counts are kept by name, and its demand starts over.
        if let Some(names) = self.names_of.get(&was) {
            for (name, c) in names.iter().zip(old) {
                self.carried.entry(name.clone()).or_default().add(&c);
            }
        }
        self.seen.remove(&shard);
        self.demand.remove(&shard);
    }

    /// Gives every shard a share of each tenant's limits from its demand since the last
    /// rebalances (`shares_for`). Skipped while shards disagree on the config generation
    /// (a reload is under way: the tenants may have moved).
    pub fn rebalance(&mut self) {
        let n = self.controls.len();
        let generations: Vec<u64> = self.shards.values().map(|(g, _)| *g).collect();
        let Some(&generation) = generations.first() else {
            return;
        };
        if self.shards.len() != n || generations.iter().any(|g| *g != generation) {
            return;
        }
        let tenants = self
            .shards
            .values()
            .map(|(_, c)| c.len())
            .min()
            .unwrap_or(0);
        let now = std::time::Instant::now();
        let elapsed = self
            .rebalanced
            .replace(now)
            .map_or(0.0, |at| now.duration_since(at).as_secs_f64());
        if elapsed > 0.0 {
            self.update_demand(tenants, elapsed);
        }
        let mut shares = vec![vec![f64::NAN; tenants]; n];
        for t in 0..tenants {
            let demand: Vec<f64> = (0..n)
                .map(|s| self.demand.get(&s).and_then(|d| d.get(t)).copied())
                .map(|d| d.unwrap_or(0.0))
                .collect();
            let rate = self.rates.get(t).copied().unwrap_or(0.0);
            for (row, share) in shares
                .iter_mut()
                .zip(shares_for(&demand, rate).unwrap_or_default())
            {
                row[t] = share;
            }
        }
        for (s, c) in self.controls.iter().enumerate() {
            let shares = std::mem::take(&mut shares[s]);
            let _ = c.try_send(Control::TenantShares { generation, shares });
        }
    }

    /// Folds each shard's attempts since the last rebalance (`elapsed` seconds ago) into
    /// its smoothed demand: half the last interval's rate, half what came before, so one
    /// interval's few requests on a light shard do not swing its share.
    fn update_demand(&mut self, tenants: usize, elapsed: f64) {
        for (s, (_, counts)) in &self.shards {
            let before = self.seen.get(s);
            let smoothed = self.demand.entry(*s).or_default();
            smoothed.resize(tenants, f64::NAN);
            for (t, d) in smoothed.iter_mut().enumerate() {
                let prior = before.and_then(|v| v.get(t)).copied().unwrap_or(0);
                let rate = counts[t].attempts.saturating_sub(prior) as f64 / elapsed;
                *d = if d.is_nan() {
                    rate
                } else {
                    0.5 * *d + 0.5 * rate
                };
            }
            self.seen
                .insert(*s, counts.iter().map(|c| c.attempts).collect());
        }
    }

    /// Each current tenant's counts since start: every shard's, by its generation's
    /// names, plus what generations left behind carried.
    fn totals(&self) -> Vec<TenantCounters> {
        let mut by_name = self.carried.clone();
        for (generation, counts) in self.shards.values() {
            let Some(names) = self.names_of.get(generation) else {
                continue;
            };
            for (name, c) in names.iter().zip(counts) {
                by_name.entry(name.clone()).or_default().add(c);
            }
        }
        self.names
            .iter()
            .map(|n| by_name.get(n).copied().unwrap_or_default())
            .collect()
    }

    pub fn json(&self) -> Value {
        let mut m = Map::new();
        for (name, c) in self.names.iter().zip(self.totals()) {
            m.insert(
                name.clone(),
                json!({"requests": c.attempts, "admitted": c.admitted, "limited": c.limited}),
            );
        }
        Value::Object(m)
    }

    pub(super) fn metrics(&self, p: &mut Prom) {
        p.family(
            "coregate_tenant_requests_total",
            "counter",
            "Requests of a tenant (its key, a route it may use), by whether a limit held them back.",
        );
        for (name, c) in self.names.iter().zip(self.totals()) {
            let l = |result: &str| format!("tenant=\"{}\",result=\"{result}\"", escape(name));
            p.sample("coregate_tenant_requests_total", &l("admitted"), c.admitted);
            p.sample("coregate_tenant_requests_total", &l("limited"), c.limited);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(names: &[&str]) -> Vec<AggregatorTenant> {
        names
            .iter()
            .map(|n| AggregatorTenant {
                name: n.to_string(),
                budgets: Budgets::default(),
                rate_per_s: 10.0,
            })
            .collect()
    }

    fn counts(attempts: &[u64]) -> Vec<TenantCounters> {
        attempts
            .iter()
            .map(|&a| TenantCounters {
                attempts: a,
                admitted: a,
                limited: 0,
            })
            .collect()
    }

    #[test]
    fn a_reload_keeps_the_totals_by_name_and_restarts_the_demand() {
        let mut b = TenantBalance::default();
        b.set_tenants(1, tenants(&["a", "b"]));
        b.record(0, 1, counts(&[100, 7]));
        b.record(1, 1, counts(&[5, 0]));
        b.update_demand(2, 1.0);
        // The reload puts a new tenant first: shard 0 switches, shard 1 not yet.
        b.set_tenants(2, tenants(&["new", "a", "b"]));
        b.record(0, 2, counts(&[1, 3, 0]));
        let totals: Vec<u64> = b.totals().iter().map(|c| c.attempts).collect();
        // a: 100 carried + 3 now on shard 0 + 5 still on shard 1 (generation 1).
        assert_eq!(totals, vec![1, 108, 7]);
        // Shard 0's demand starts over from its new counts, not from the old ones.
        assert!(!b.seen.contains_key(&0) && !b.demand.contains_key(&0));
        b.record(1, 2, counts(&[0, 1, 0]));
        let totals: Vec<u64> = b.totals().iter().map(|c| c.attempts).collect();
        assert_eq!(totals, vec![1, 109, 7], "no count goes down");
    }
}
