//! A shard's providers for one config generation: each provider's endpoints (with their
//! pools and health), the headers it adds, and the endpoint choice for each request.
//!
//! A reload builds a new [`Providers`] on every shard with [`Providers::rebuild`]: a
//! provider whose settings, credential and stats slot did not change is carried over as it
//! is (the same `Rc`: its pooled connections, TLS sessions and ejection state survive the
//! reload, so an unrelated change costs no reconnect storm). The others are built anew and
//! the ones left behind are retired: their idle connections close at once, their busy ones
//! when the exchanges that hold them (on the old generation) end.

use super::connect::UpstreamTls;
use super::endpoint::parse_endpoint;
use super::pool::Endpoint;
use super::ProviderConfig;
use crate::stats::{EndpointStats, ProviderStats};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// One provider as seen by one shard.
pub struct Provider {
    pub name: String,
    pub cfg: ProviderConfig,
    /// Its slot in the shard's provider stats: stable across reloads for a provider name,
    /// so counters do not restart when the config changes.
    pub stat: usize,
    pub endpoints: Vec<Rc<Endpoint>>,
    next: Cell<usize>,
    /// The Host header to send; `None` keeps the client's.
    pub host_header: Option<Vec<u8>>,
    /// The credential header (name, value) injected into every request.
    pub credential: Option<(Vec<u8>, Vec<u8>)>,
    /// The provider's `add_headers`, as bytes.
    pub add_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Rate-limited log lines about this provider's failures.
    pub failures: super::error::FailureLog,
    /// Per-shard random state for the second choice of power-of-two-choices.
    rng: Cell<u64>,
    /// Every endpoint has the same weight (ties are broken by recent latency).
    equal_weights: bool,
    /// Its TLS roots' fingerprint (`ClientTls::roots`), when it speaks TLS.
    tls_roots: Option<u64>,
}

pub struct Providers {
    pub list: Vec<Rc<Provider>>,
}

/// The endpoint chosen for one attempt. Keep it until the attempt's outcome is recorded:
/// when the attempt is the endpoint's half-open probe and ends without a verdict, dropping
/// the pick gives the probe up, so that the endpoint is probed again instead of staying
/// ejected for good.
pub struct Pick {
    pub index: usize,
    pub ep: Rc<Endpoint>,
    /// `false`: every endpoint is ejected or down (or tried), and this one is a likely
    /// failure.
    pub in_service: bool,
    probe: Option<u64>,
}

impl Pick {
    fn new(index: usize, ep: &Rc<Endpoint>, in_service: bool, probe: Option<u64>) -> Pick {
        Pick {
            index,
            ep: ep.clone(),
            in_service,
            probe,
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(ticket) = self.probe {
            self.ep.health.abandon_probe(ticket);
        }
    }
}

/// How to build one generation's providers: `addresses[p][e]` is where provider `p`'s
/// endpoint `e` resolved, `slots[p]` its stats slot, and `connection_cap` the shard's
/// client connection cap (the default `queue_max`).
pub struct ProviderInputs<'a> {
    pub cfgs: &'a [ProviderConfig],
    /// Each provider's TLS client config, built once off the shards ([`client_tls`]).
    pub tls: &'a [Option<ClientTls>],
    pub addresses: &'a [Vec<Vec<SocketAddr>>],
    pub slots: &'a [usize],
    pub connection_cap: usize,
}

impl ProviderInputs<'_> {
    fn resolved(&self, p: usize) -> &[Vec<SocketAddr>] {
        self.addresses.get(p).map_or(&[][..], |a| a.as_slice())
    }

    fn tls(&self, p: usize) -> Option<&ClientTls> {
        self.tls.get(p)?.as_ref()
    }

    fn slot(&self, p: usize) -> usize {
        self.slots.get(p).copied().unwrap_or(p)
    }
}

impl Providers {
    pub fn new(inputs: &ProviderInputs<'_>) -> Result<Providers, String> {
        Providers::rebuild(None, inputs)
    }

    /// The providers of `inputs`, carrying over from `old` every provider that is the same
    /// in all but its addresses (those are taken from `inputs`).
    pub fn rebuild(
        old: Option<&Providers>,
        inputs: &ProviderInputs<'_>,
    ) -> Result<Providers, String> {
        let mut list = Vec::with_capacity(inputs.cfgs.len());
        for (i, c) in inputs.cfgs.iter().enumerate() {
            let cfg = effective(c, inputs.connection_cap);
            let slot = inputs.slot(i);
            let kept = old
                .and_then(|o| o.list.iter().find(|p| p.name == c.name))
                .filter(|p| p.stat == slot && same_settings(&p.cfg, &cfg))
                .filter(|p| p.credential == c.credential_header())
                // A CA file rewritten in place is a new provider: its connections were
                // verified against the roots it replaces.
                .filter(|p| p.tls_roots == inputs.tls(i).map(|t| t.roots));
            match kept {
                Some(p) => {
                    for (e, addrs) in p.endpoints.iter().zip(inputs.resolved(i)) {
                        e.set_addrs(addrs.clone());
                    }
                    list.push(p.clone());
                }
                None => {
                    let tls = inputs.tls(i);
                    list.push(Rc::new(Provider::new(cfg, inputs.resolved(i), slot, tls)?));
                }
            }
        }
        Ok(Providers { list })
    }

    /// Retires the providers of this (old) generation that `next` does not carry over.
    pub fn retire_all_but(&self, next: &Providers) {
        for p in &self.list {
            if !next.list.iter().any(|q| Rc::ptr_eq(p, q)) {
                for e in &p.endpoints {
                    e.retire();
                }
            }
        }
    }

    /// Applies a new address set of one endpoint (a control message from the resolver).
    pub fn set_addrs(&self, provider: usize, endpoint: usize, addrs: Vec<SocketAddr>) {
        if let Some(ep) = self
            .list
            .get(provider)
            .and_then(|p| p.endpoints.get(endpoint))
        {
            ep.set_addrs(addrs);
        }
    }

    /// Applies the active health check's verdict on one endpoint (a control message).
    pub fn set_down(&self, provider: usize, endpoint: usize, down: bool) {
        if let Some(ep) = self
            .list
            .get(provider)
            .and_then(|p| p.endpoints.get(endpoint))
        {
            if ep.health.is_down() && !down {
                ep.forget_latency();
            }
            ep.health.set_down(down);
        }
    }

    /// Gives every endpoint its entry in its provider's stats (found by name, so an
    /// endpoint kept across a reload keeps counting where it was).
    pub fn register_endpoints(&self, stats: &mut [ProviderStats]) {
        for p in &self.list {
            let Some(s) = stats.get_mut(p.stat) else {
                continue;
            };
            for e in &p.endpoints {
                let i = match s.endpoints.iter().position(|x| x.name == e.name) {
                    Some(i) => i,
                    None => {
                        s.endpoints.push(EndpointStats {
                            name: e.name.clone(),
                            ..Default::default()
                        });
                        s.endpoints.len() - 1
                    }
                };
                e.stat.set(i);
            }
        }
    }

    /// Copies the pool gauges into the stats before a snapshot; the slots of providers no
    /// longer configured read zero.
    pub fn update_gauges(&self, stats: &mut [ProviderStats]) {
        for s in stats.iter_mut() {
            s.counters.connections_open = 0;
            s.counters.connections_idle = 0;
            s.counters.queued = 0;
            s.counters.endpoints_ejected = 0;
            for e in s.endpoints.iter_mut() {
                e.ejected = 0;
                e.down = 0;
            }
        }
        let now = Instant::now();
        for p in &self.list {
            let Some(s) = stats.get_mut(p.stat) else {
                continue;
            };
            for e in &p.endpoints {
                let g = e.gauges(now);
                s.counters.connections_open += g.open;
                s.counters.connections_idle += g.idle;
                s.counters.queued += g.queued;
                s.counters.endpoints_ejected += u64::from(g.ejected);
                if let Some(es) = s.endpoints.get_mut(e.stat.get()) {
                    es.ejected = u64::from(e.health.is_passively_ejected(now));
                    es.down = u64::from(e.health.is_down());
                }
            }
        }
    }
}

/// A provider's TLS client config as the shards get it.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// What the roots were built from: a hash of the `ca_file`'s bytes (0 for the public
    /// roots or no verification), so that a reload tells a rewritten CA file from the same.
    pub roots: u64,
}

/// Each provider's TLS client config (`None` for a provider without `https` endpoints),
/// built where a config is loaded: the CA files are read there, once, and every shard gets
/// the same roots.
pub fn client_tls(cfgs: &[ProviderConfig]) -> Result<Vec<Option<ClientTls>>, String> {
    cfgs.iter()
        .map(|c| match c.uses_tls() {
            true => {
                let named = |e: String| format!("{}: {e}", c.name);
                let roots = roots_fingerprint(c).map_err(named)?;
                let config = coregate_runtime::tls::client_config(c.verify()).map_err(named)?;
                Ok(Some(ClientTls { config, roots }))
            }
            false => Ok(None),
        })
        .collect()
}

fn roots_fingerprint(c: &ProviderConfig) -> Result<u64, String> {
    use std::hash::{Hash, Hasher};
    if !c.tls_verify || c.ca_file.is_empty() {
        return Ok(0);
    }
    let bytes = std::fs::read(&c.ca_file).map_err(|e| format!("{}: {e}", c.ca_file))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Ok(h.finish())
}

/// A seed of its own for each provider on each shard (and each process), so that shards do
/// not make the same choices in lockstep.
fn random_seed(name: &str) -> u64 {
    use std::hash::BuildHasher;
    // Never 0: xorshift would stay there.
    std::collections::hash_map::RandomState::new().hash_one(name) | 1
}

/// The provider's settings as a shard uses them (`queue_max = 0` means the shard's cap).
fn effective(c: &ProviderConfig, cap: usize) -> ProviderConfig {
    ProviderConfig {
        queue_max: if c.queue_max == 0 {
            cap.max(1)
        } else {
            c.queue_max
        },
        ..c.clone()
    }
}

/// Whether two provider configs are the same setting for setting (compared in their
/// serialized form, which holds every setting and no secret).
fn same_settings(a: &ProviderConfig, b: &ProviderConfig) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

impl Provider {
    fn new(
        cfg: ProviderConfig,
        resolved: &[Vec<SocketAddr>],
        stat: usize,
        tls: Option<&ClientTls>,
    ) -> Result<Provider, String> {
        let c = &cfg;
        let specs = c
            .endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        // One client config (and session cache) per provider per shard.
        let tls_config = match (c.uses_tls(), tls) {
            (true, Some(t)) => Some(coregate_runtime::tls::with_own_sessions(&t.config)),
            (true, None) => return Err(format!("{}: no TLS client config", c.name)),
            (false, _) => None,
        };
        let mut endpoints = Vec::with_capacity(specs.len());
        for (j, spec) in specs.iter().enumerate() {
            let tls = match (&tls_config, spec.tls) {
                (Some(config), true) => {
                    let name = c.host_name().unwrap_or(&spec.host);
                    Some(UpstreamTls {
                        config: config.clone(),
                        name: coregate_runtime::tls::server_name(name)?,
                    })
                }
                _ => None,
            };
            let addrs = resolved.get(j).cloned().unwrap_or_default();
            let weight = c.weight(j);
            let endpoint = Endpoint::new(c.endpoints[j].clone(), addrs, tls, weight);
            endpoints.push(Rc::new(endpoint));
        }
        let host_header = if !c.host.is_empty() {
            Some(c.host.as_bytes().to_vec())
        } else {
            specs
                .first()
                .filter(|s| s.ip.is_none() || s.tls)
                .map(|s| s.authority().into_bytes())
        };
        Ok(Provider {
            name: c.name.clone(),
            stat,
            endpoints,
            next: Cell::new(random_seed(&c.name) as usize),
            host_header,
            credential: c.credential_header(),
            add_headers: c
                .add_headers
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            failures: Default::default(),
            rng: Cell::new(random_seed(&c.name)),
            equal_weights: (0..c.endpoints.len()).all(|j| c.weight(j) == c.weight(0)),
            tls_roots: tls.filter(|_| c.uses_tls()).map(|t| t.roots),
            cfg,
        })
    }

    /// The endpoint for the next request, leaving out the endpoints whose bit is set in
    /// `tried`: power of two choices among those in service. The first choice is smooth
    /// weighted round-robin (nginx's: over time each endpoint gets its weight's share, and
    /// with equal weights it is plain round-robin), the second a random other one; the
    /// second wins when it has fewer requests on it per unit of weight, so under
    /// concurrency load evens out and sequential traffic follows the weights; with equal
    /// weights, a tie goes to the endpoint that answered clearly faster lately. An ejected
    /// endpoint whose time is up takes one request as its probe. Weight-0 endpoints are
    /// used only when no other is in service; when every endpoint is out, they are all used
    /// again (better a likely failure than a certain one), round-robin, and the pick says
    /// so (`in_service: false`) so that a provider with a fallback can use it instead.
    pub fn pick(&self, tried: u64) -> Option<Pick> {
        let n = self.endpoints.len();
        let untried = |i: usize| i >= 64 || tried & (1 << i) == 0;
        let now = Instant::now();
        let usable = |i: usize| untried(i) && !self.endpoints[i].health.is_ejected(now);
        let weighted = |i: usize| usable(i) && self.endpoints[i].weight > 0;
        let start = self.next.get();
        self.next.set(start.wrapping_add(1));
        let ring = |from: usize| (0..n).map(move |k| (from + k) % n);
        let first = self
            .weighted_first(&weighted)
            .or_else(|| ring(start).find(|&i| usable(i)));
        let Some(a) = first else {
            let i = ring(start).find(|&i| untried(i))?;
            return Some(Pick::new(i, &self.endpoints[i], false, None));
        };
        let second = ring(a + 1 + self.random() % n.max(1))
            .find(|&i| i != a && weighted(i) == weighted(a) && usable(i));
        let chosen = match second {
            Some(b) if self.lighter(b, a) => b,
            Some(b) if self.equal_weights && self.faster_on_a_tie(b, a, now) => b,
            _ => a,
        };
        let ep = &self.endpoints[chosen];
        let probe = (ep.health.availability(now) == super::health::Availability::Probe)
            .then(|| ep.health.start_probe());
        Some(Pick::new(chosen, ep, true, probe))
    }

    /// Smooth weighted round-robin over the endpoints `eligible` says may take a request.
    fn weighted_first(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, e) in self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| eligible(*i))
        {
            let w = i64::from(e.weight);
            total += w;
            e.credit.set(e.credit.get() + w);
            if best.is_none_or(|b| e.credit.get() > self.endpoints[b].credit.get()) {
                best = Some(i);
            }
        }
        let b = best?;
        let e = &self.endpoints[b];
        e.credit.set(e.credit.get() - total);
        Some(b)
    }

    /// Whether `b` has as many requests on it as `a` and answered clearly faster lately (by
    /// a fifth, so that noise does not flip the choice). Only with equal weights: explicit
    /// weights say how traffic splits, and a tie-break would override them.
    fn faster_on_a_tie(&self, b: usize, a: usize, now: Instant) -> bool {
        let (eb, ea) = (&self.endpoints[b], &self.endpoints[a]);
        if eb.load() != ea.load() {
            return false;
        }
        match (eb.recent_latency(now), ea.recent_latency(now)) {
            (Some(lb), Some(la)) => lb.saturating_mul(5) < la.saturating_mul(4),
            _ => false,
        }
    }

    /// Whether endpoint `b` has fewer requests on it than `a` per unit of weight.
    fn lighter(&self, b: usize, a: usize) -> bool {
        let (eb, ea) = (&self.endpoints[b], &self.endpoints[a]);
        let load = |e: &Endpoint| e.load() as u64;
        let weight = |e: &Endpoint| u64::from(e.weight.max(1));
        load(eb) * weight(ea) < load(ea) * weight(eb)
    }

    /// xorshift64: a shard's own, no sharing.
    fn random(&self) -> usize {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(weights: Vec<u32>) -> Provider {
        let cfg = ProviderConfig {
            name: "p".into(),
            endpoints: vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            weights,
            ..ProviderConfig::default()
        };
        let addrs = vec![
            vec!["127.0.0.1:1".parse().unwrap()],
            vec!["127.0.0.1:2".parse().unwrap()],
        ];
        Provider::new(cfg, &addrs, 0, None).unwrap()
    }

    fn picks(p: &Provider, n: usize) -> [usize; 2] {
        let mut seen = [0; 2];
        for _ in 0..n {
            seen[p.pick(0).unwrap().index] += 1;
        }
        seen
    }

    #[test]
    fn equal_weights_alternate_until_one_endpoint_is_clearly_faster() {
        let p = provider(Vec::new());
        assert_eq!(picks(&p, 20), [10, 10]);
        let now = Instant::now();
        p.endpoints[0].observe_latency(1_000, now);
        p.endpoints[1].observe_latency(900, now);
        // Within a fifth of each other: still round-robin.
        assert_eq!(picks(&p, 20), [10, 10]);
        p.endpoints[1].observe_latency(100, now);
        p.endpoints[1].observe_latency(100, now);
        assert_eq!(picks(&p, 20), [0, 20]);
    }

    /// Ejects endpoint `i` of `p` at `now`.
    fn eject(p: &Provider, i: usize, now: Instant) {
        let h = &p.endpoints[i].health;
        while h.failure(&p.cfg, now).is_none() {}
    }

    #[test]
    fn a_probe_pick_dropped_without_a_verdict_is_probed_again() {
        let mut p = provider(Vec::new());
        p.cfg.eject_after_failures = 1;
        p.cfg.eject_base_ms = 1;
        eject(&p, 0, Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let probe = std::iter::repeat_with(|| p.pick(0).unwrap())
            .take(4)
            .find(|k| k.index == 0)
            .expect("the ejected endpoint is probed when its time is up");
        // One probe at a time: the others go to endpoint 1.
        assert_eq!(picks(&p, 6), [0, 6]);
        // The attempt ended without a verdict (say the client left): no endpoint may
        // stay ejected for good because of it.
        drop(probe);
        assert!(picks(&p, 4)[0] >= 1, "endpoint 0 is probed again");
    }

    #[test]
    fn with_every_endpoint_out_the_pick_says_it_is_not_in_service() {
        let p = provider(Vec::new());
        let now = Instant::now();
        eject(&p, 0, now);
        assert!(p.pick(0).unwrap().in_service);
        eject(&p, 1, now);
        let k = p.pick(0).unwrap();
        assert!(!k.in_service);
        assert!(p.pick(0b11).is_none(), "every endpoint tried");
    }

    #[test]
    fn explicit_weights_are_not_overridden_by_latency() {
        let p = provider(vec![1, 3]);
        let now = Instant::now();
        p.endpoints[0].observe_latency(100, now);
        p.endpoints[1].observe_latency(10_000, now);
        assert_eq!(picks(&p, 40), [10, 30]);
    }
}
