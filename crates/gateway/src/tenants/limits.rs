//! Per-tenant limits that hold without shared state on the request path.
//!
//! Each shard enforces a *share* of every tenant's limits with state of its own (a token
//! bucket, in-flight and session counts: `Cell`s, no atomics). SO_REUSEPORT spreads
//! connections by hash, not by tenant, so a tenant's traffic can sit on one shard; equal
//! fixed shares would then admit a fraction of its limit. Instead every shard reports each
//! tenant's demand (requests attempted) with its stats, and the aggregator splits the limit
//! max-min fairly over the shards' recent demand (`shares_for`; a floor keeps a little
//! everywhere, so traffic that moves is not refused outright), sent back as a control
//! message. The request path only reads its shard's share.
//!
//! Accuracy: the rate holds to within the headroom and floor a light shard leaves unused,
//! a few stats intervals after the load moves (demand is smoothed); concurrency and
//! session caps are rounded up per shard, so a tenant can exceed them by at most one per
//! shard.

use super::TenantConfig;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

/// One tenant's configured limits (0: none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TenantLimits {
    pub rate_per_s: f64,
    pub burst: f64,
    pub max_concurrent: u32,
    pub max_sessions: u32,
}

impl TenantLimits {
    pub fn of(t: &TenantConfig) -> TenantLimits {
        TenantLimits {
            rate_per_s: t.rate_per_s,
            // An unset burst is one second's worth.
            burst: match t.burst {
                0 => t.rate_per_s.max(1.0),
                b => f64::from(b),
            },
            max_concurrent: t.max_concurrent,
            max_sessions: t.max_sessions,
        }
    }
}

pub fn validate(t: &TenantConfig) -> Result<(), (&'static str, String)> {
    if !t.rate_per_s.is_finite() || !(0.0..=1e7).contains(&t.rate_per_s) {
        return Err((
            "rate_per_s",
            format!("{} is out of range (0..=10000000)", t.rate_per_s),
        ));
    }
    for (key, v) in [
        (
            "budget_audio_seconds_per_minute",
            t.budget_audio_seconds_per_minute,
        ),
        (
            "budget_audio_seconds_per_day",
            t.budget_audio_seconds_per_day,
        ),
    ] {
        if !v.is_finite() || v < 0.0 {
            return Err((key, format!("{v} must be 0 (none) or more")));
        }
    }
    if t.burst > 0 && t.rate_per_s == 0.0 {
        return Err(("burst", "needs rate_per_s".into()));
    }
    Ok(())
}

/// Why a request was held back (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// Over the request rate; a token comes back in about this many seconds.
    Rate {
        retry_after_s: u64,
    },
    Concurrency,
    Sessions,
}

impl Limited {
    pub fn code(self) -> &'static str {
        match self {
            Limited::Rate { .. } => "rate_limited",
            Limited::Concurrency => "too_many_concurrent_requests",
            Limited::Sessions => "too_many_sessions",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Limited::Rate { .. } => "the tenant's request rate is used up",
            Limited::Concurrency => "the tenant has as many requests in flight as it may",
            Limited::Sessions => "the tenant has as many WebSocket sessions open as it may",
        }
    }

    pub fn retry_after_s(self) -> u64 {
        match self {
            Limited::Rate { retry_after_s } => retry_after_s,
            _ => 1,
        }
    }
}

/// One tenant on one shard.
pub struct TenantState {
    tokens: Cell<f64>,
    refilled: Cell<Option<Instant>>,
    /// This shard's share of the tenant's limits (from the aggregator).
    share: Cell<f64>,
    inflight: Cell<u32>,
    sessions: Cell<u32>,
    /// Requests that asked, were let through, and were held back (cumulative).
    pub attempts: Cell<u64>,
    pub admitted: Cell<u64>,
    pub limited: Cell<u64>,
}

impl TenantState {
    fn new(share: f64) -> TenantState {
        TenantState {
            tokens: Cell::new(f64::NAN),
            refilled: Cell::new(None),
            share: Cell::new(share),
            inflight: Cell::new(0),
            sessions: Cell::new(0),
            attempts: Cell::new(0),
            admitted: Cell::new(0),
            limited: Cell::new(0),
        }
    }

    /// Takes a token from the shard's share of the bucket.
    fn take_token(&self, l: &TenantLimits, now: Instant) -> Result<(), Limited> {
        if l.rate_per_s <= 0.0 {
            return Ok(());
        }
        let share = self.share.get();
        let (rate, burst) = (l.rate_per_s * share, (l.burst * share).max(1.0));
        let mut tokens = self.tokens.get();
        if tokens.is_nan() {
            tokens = burst;
        }
        if let Some(at) = self.refilled.get() {
            tokens = (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst);
        }
        self.refilled.set(Some(now));
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            return Ok(());
        }
        self.tokens.set(tokens);
        let wait = if rate > 0.0 {
            (1.0 - tokens) / rate
        } else {
            1.0
        };
        Err(Limited::Rate {
            retry_after_s: wait.ceil().max(1.0) as u64,
        })
    }
}

/// A shard's limiter: one state per tenant of the current config generation.
pub struct ShardLimits {
    pub states: Vec<TenantState>,
}

impl ShardLimits {
    /// Every tenant starts with an equal share of `shards`.
    pub fn new(tenants: usize, shards: usize) -> ShardLimits {
        let share = 1.0 / shards.max(1) as f64;
        ShardLimits {
            states: (0..tenants).map(|_| TenantState::new(share)).collect(),
        }
    }

    /// Applies the aggregator's shares (one per tenant, in table order).
    pub fn set_shares(&self, shares: &[f64]) {
        for (s, share) in self.states.iter().zip(shares) {
            if share.is_finite() && *share > 0.0 {
                s.share.set(share.min(1.0));
            }
        }
    }

    /// Lets a request of `tenant` through, or says why not. The returned guard holds its
    /// place in the concurrency (and, for a WebSocket, session) count until dropped.
    /// With `rate_decided`, the request rate was checked elsewhere (a token leased from
    /// Redis was spent): only the concurrency and session caps are checked here.
    pub fn admit(
        self: &Rc<Self>,
        tenant: usize,
        limits: &TenantLimits,
        websocket: bool,
        now: Instant,
        rate_decided: bool,
    ) -> Result<Admission, Limited> {
        let Some(s) = self.states.get(tenant) else {
            return Ok(Admission {
                held: None,
                websocket,
            });
        };
        s.attempts.set(s.attempts.get() + 1);
        let no_rate = TenantLimits {
            rate_per_s: 0.0,
            ..*limits
        };
        let limits = if rate_decided { &no_rate } else { limits };
        let result = Self::check(s, limits, websocket, now);
        match result {
            Ok(()) => {
                s.admitted.set(s.admitted.get() + 1);
                s.inflight.set(s.inflight.get() + 1);
                if websocket {
                    s.sessions.set(s.sessions.get() + 1);
                }
                Ok(Admission {
                    held: Some((self.clone(), tenant)),
                    websocket,
                })
            }
            Err(e) => {
                s.limited.set(s.limited.get() + 1);
                Err(e)
            }
        }
    }

    /// Counts a request of `tenant` held back by the shared rate (Redis).
    pub fn count_limited(&self, tenant: usize) {
        if let Some(s) = self.states.get(tenant) {
            s.attempts.set(s.attempts.get() + 1);
            s.limited.set(s.limited.get() + 1);
        }
    }

    fn check(
        s: &TenantState,
        l: &TenantLimits,
        websocket: bool,
        now: Instant,
    ) -> Result<(), Limited> {
        let cap = |max: u32| (f64::from(max) * s.share.get()).ceil().max(1.0) as u32;
        if l.max_concurrent > 0 && s.inflight.get() >= cap(l.max_concurrent) {
            return Err(Limited::Concurrency);
        }
        if websocket && l.max_sessions > 0 && s.sessions.get() >= cap(l.max_sessions) {
            return Err(Limited::Sessions);
        }
        s.take_token(l, now)
    }
}

/// A request's place in its tenant's counts, given back when it ends.
pub struct Admission {
    held: Option<(Rc<ShardLimits>, usize)>,
    websocket: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let Some((limits, tenant)) = &self.held else {
            return;
        };
        if let Some(s) = limits.states.get(*tenant) {
            s.inflight.set(s.inflight.get().saturating_sub(1));
            if self.websocket {
                s.sessions.set(s.sessions.get().saturating_sub(1));
            }
        }
    }
}

/// Headroom a shard that asks for less than its fair part gets over its recent demand, so
/// that a little more traffic there is not refused before the next rebalance.
const HEADROOM: f64 = 1.1;
/// The least any shard keeps (split among the shards), so traffic that moves to an idle
/// shard is not refused outright.
const FLOOR: f64 = 0.05;

/// The shares the aggregator gives, from each shard's recent demand for a tenant
/// (`demand[shard]`, requests per second asked, admitted or not); `None` when nobody asked
/// (the shares stay as they are).
///
/// With a rate limit, the split is max-min fair (water-filling): a shard asking for less
/// than an equal part of what is left gets what it asks (plus `HEADROOM`), and the shards
/// asking more share the rest equally. Demand counts refused requests too, so a shard
/// asking flat out would otherwise take nearly all of a proportional split and starve a
/// light one. Without a rate (only concurrency caps), shares follow the demand.
pub fn shares_for(demand: &[f64], rate_per_s: f64) -> Option<Vec<f64>> {
    let total: f64 = demand.iter().sum();
    if demand.is_empty() || total.is_nan() || total <= 0.0 {
        return None;
    }
    let n = demand.len() as f64;
    let floor = FLOOR / n;
    if rate_per_s.is_nan() || rate_per_s <= 0.0 {
        let rest = 1.0 - FLOOR;
        return Some(demand.iter().map(|d| floor + rest * d / total).collect());
    }
    let wants: Vec<f64> = demand
        .iter()
        .map(|d| (d * HEADROOM / rate_per_s).max(floor))
        .collect();
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by(|&a, &b| wants[a].total_cmp(&wants[b]));
    let mut shares = vec![0.0; wants.len()];
    let mut left = 1.0;
    for (k, &i) in order.iter().enumerate() {
        let fair = left / (wants.len() - k) as f64;
        shares[i] = wants[i].min(fair);
        left -= shares[i];
    }
    // Everyone asks for less than the limit: what is left is spread evenly.
    let spare = left.max(0.0) / n;
    Some(shares.iter().map(|s| s + spare).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(rate: f64, burst: f64) -> TenantLimits {
        TenantLimits {
            rate_per_s: rate,
            burst,
            max_concurrent: 2,
            max_sessions: 1,
        }
    }

    #[test]
    fn the_bucket_refills_at_the_shard_share_of_the_rate() {
        let l = Rc::new(ShardLimits::new(1, 2));
        let t0 = Instant::now();
        let lim = limits(10.0, 4.0);
        // Half of a 4-token burst.
        let a = l.admit(0, &lim, false, t0, false).unwrap();
        drop(a);
        let b = l.admit(0, &lim, false, t0, false).unwrap();
        drop(b);
        assert!(matches!(
            l.admit(0, &lim, false, t0, false),
            Err(Limited::Rate { .. })
        ));
        // Half of 10/s: one token per 200 ms.
        assert!(l
            .admit(0, &lim, false, t0 + Duration::from_millis(210), false)
            .is_ok());
    }

    #[test]
    fn concurrency_and_sessions_are_held_until_the_guard_drops() {
        let l = Rc::new(ShardLimits::new(1, 1));
        let lim = limits(0.0, 0.0);
        let now = Instant::now();
        let ws = l.admit(0, &lim, true, now, false).unwrap();
        assert_eq!(
            l.admit(0, &lim, true, now, false).err(),
            Some(Limited::Sessions)
        );
        let plain = l.admit(0, &lim, false, now, false).unwrap();
        assert_eq!(
            l.admit(0, &lim, false, now, false).err(),
            Some(Limited::Concurrency)
        );
        drop((ws, plain));
        assert!(l.admit(0, &lim, true, now, false).is_ok());
    }

    #[test]
    fn a_light_shard_keeps_what_it_asks_and_the_heavy_one_takes_the_rest() {
        // 100/s: one shard asks 2000/s (mostly refused), the other 20/s.
        let s = shares_for(&[2000.0, 20.0], 100.0).unwrap();
        assert!(
            (s[1] - 0.22).abs() < 1e-9 && (s[0] - 0.78).abs() < 1e-9,
            "{s:?}"
        );
        // Both over an equal part: equal shares.
        let s = shares_for(&[300.0, 90.0], 100.0).unwrap();
        assert!((s[0] - 0.5).abs() < 1e-9, "{s:?}");
        // Both under the limit: each what it asks, the spare spread evenly.
        let s = shares_for(&[10.0, 30.0], 100.0).unwrap();
        assert!(
            (s[0] - 0.39).abs() < 1e-9 && (s[1] - 0.61).abs() < 1e-9,
            "{s:?}"
        );
        // An idle shard keeps the floor.
        let s = shares_for(&[500.0, 0.0], 100.0).unwrap();
        assert!((s[1] - 0.025).abs() < 1e-9, "{s:?}");
        assert_eq!(shares_for(&[0.0, 0.0], 100.0), None);
    }

    #[test]
    fn without_a_rate_shares_follow_the_demand_with_a_floor() {
        let s = shares_for(&[90.0, 10.0], 0.0).unwrap();
        assert!(
            (s[0] - 0.88).abs() < 1e-9 && (s[1] - 0.12).abs() < 1e-9,
            "{s:?}"
        );
        let s = shares_for(&[100.0, 0.0], 0.0).unwrap();
        assert!((s[1] - 0.025).abs() < 1e-9, "{s:?}");
    }
}
