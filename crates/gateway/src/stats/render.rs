//! Rendering of the aggregated view: `/stats` JSON and `/metrics` Prometheus text.

use super::aggregate::{Aggregator, ProviderView, ShardView};
use super::{
    new_histogram, Counters, EndpointStats, HandshakeFailure, ProviderCounters, UpstreamError,
};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::fmt::Write;

pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Exact-as-recorded quantiles (the value of the bucket holding the quantile, 1 % wide).
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0.0});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

fn classes(r: &[u64; 5]) -> Value {
    let mut m = Map::new();
    for (name, v) in CLASSES.iter().zip(r) {
        m.insert((*name).into(), Value::from(*v));
    }
    Value::Object(m)
}

/// Refusals by class (401, 403, 429) and by reason.
fn refused_json(r: &[u64; super::REFUSAL_REASONS.len()]) -> Value {
    let by_reason: Map<String, Value> = super::REFUSAL_REASONS
        .iter()
        .zip(r)
        .map(|(name, n)| ((*name).to_string(), Value::from(*n)))
        .collect();
    json!({
        "unauthorized": r[0] + r[1],
        "forbidden": r[2],
        "limited": r[3..].iter().sum::<u64>(),
        "by_reason": by_reason,
    })
}

fn counters_json(c: &Counters, latency: &Histogram<u64>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("connections_active".into(), c.connections_active.into());
    m.insert("connections_total".into(), c.connections_total.into());
    m.insert("requests".into(), c.requests.into());
    m.insert("responses".into(), classes(&c.responses));
    m.insert("bytes_in".into(), c.bytes_in.into());
    m.insert("bytes_out".into(), c.bytes_out.into());
    m.insert("parse_errors".into(), c.parse_errors.into());
    m.insert(
        "timeouts".into(),
        json!({"head": c.head_timeouts, "idle": c.idle_timeouts, "io": c.io_timeouts}),
    );
    m.insert("accept_errors".into(), c.accept_errors.into());
    m.insert("accept_paused".into(), c.accept_paused.into());
    m.insert("config_generation".into(), c.config_generation.into());
    m.insert("reload_failures".into(), c.reload_failures.into());
    m.insert("access_log_dropped".into(), c.access_log_dropped.into());
    m.insert(
        "shared_limits".into(),
        json!({"fallback_shards": c.limits_fallback, "redis_failures": c.redis_failures}),
    );
    m.insert("refused".into(), refused_json(&c.refused));
    m.insert(
        "tunnels".into(),
        json!({"active": c.tunnels_active, "total": c.tunnels_total}),
    );
    let mut failures = Map::new();
    for f in HandshakeFailure::ALL {
        failures.insert(
            f.label().into(),
            c.tls_handshake_failures[f as usize].into(),
        );
    }
    m.insert(
        "tls".into(),
        json!({"handshakes": c.tls_handshakes, "resumed": c.tls_resumed,
               "handshake_failures": failures}),
    );
    m.insert("latency_us".into(), latency_json(latency));
    m
}

fn provider_json(p: &ProviderView) -> Value {
    let c = &p.counters;
    let (mut errors, mut retry_reasons) = (Map::new(), Map::new());
    for e in UpstreamError::ALL {
        errors.insert(e.label().into(), c.errors[e as usize].into());
        if c.retry_reasons[e as usize] > 0 {
            retry_reasons.insert(e.label().into(), c.retry_reasons[e as usize].into());
        }
    }
    json!({
        "requests": c.requests,
        "responses": classes(&c.responses),
        "errors": errors,
        "pool": {
            "hits": c.pool_hits, "misses": c.pool_misses, "new_connections": c.new_connections,
            "retries": c.retries, "open": c.connections_open, "idle": c.connections_idle,
            "queued": c.queued,
        },
        "tls": {
            "handshakes": c.tls_handshakes, "resumed": c.tls_resumed,
            "handshake_us": latency_json(&p.handshake_us),
        },
        "dns": {"updates": c.dns_updates, "failures": c.dns_failures},
        "endpoints": {
            "failovers": c.failovers, "ejections": c.ejections, "ejected": c.endpoints_ejected,
            "retry_reasons": retry_reasons,
            "fallbacks": c.fallbacks,
        },
        "ttfb_us": latency_json(&p.ttfb_us),
        "total_us": latency_json(&p.total_us),
        "by_endpoint": endpoints_json(&p.endpoints),
    })
}

/// Per endpoint: requests, failures and ejections; `ejected` is how many shards eject it
/// now (one shard's view: 0 or 1), `down` whether the active health check says so.
fn endpoints_json(endpoints: &[EndpointStats]) -> Value {
    let mut m = Map::new();
    for e in endpoints {
        m.insert(
            e.name.clone(),
            json!({
                "requests": e.requests, "failures": e.failures, "ejections": e.ejections,
                "ejected": e.ejected, "down": e.down != 0,
            }),
        );
    }
    Value::Object(m)
}

/// Adds one shard's endpoint figures to the sum, endpoint by endpoint (by name).
pub(super) fn add_endpoints(sum: &mut Vec<EndpointStats>, shard: &[EndpointStats]) {
    for e in shard {
        match sum.iter_mut().find(|s| s.name == e.name) {
            Some(s) => {
                s.requests += e.requests;
                s.failures += e.failures;
                s.ejections += e.ejections;
                s.ejected += e.ejected;
                s.down = s.down.max(e.down);
            }
            None => sum.push(e.clone()),
        }
    }
}

fn providers_json(names: &[String], providers: &[ProviderView]) -> Value {
    let mut m = Map::new();
    for (name, p) in names.iter().zip(providers) {
        m.insert(name.clone(), provider_json(p));
    }
    Value::Object(m)
}

/// Sums counters and merges histograms over all shards.
fn merged(agg: &Aggregator) -> (Counters, Histogram<u64>, Vec<ProviderView>) {
    let mut c = Counters::default();
    let mut h = new_histogram();
    let mut providers: Vec<ProviderView> = Vec::new();
    for s in agg.shards.values() {
        add_counters(&mut c, &s.counters);
        let _ = h.add(&s.latency_us);
        if providers.len() < s.providers.len() {
            providers.resize_with(s.providers.len(), ProviderView::default);
        }
        for (m, p) in providers.iter_mut().zip(&s.providers) {
            add_provider(&mut m.counters, &p.counters);
            add_endpoints(&mut m.endpoints, &p.endpoints);
            let _ = m.ttfb_us.add(&p.ttfb_us);
            let _ = m.total_us.add(&p.total_us);
            let _ = m.handshake_us.add(&p.handshake_us);
        }
    }
    (c, h, providers)
}

fn add_counters(a: &mut Counters, b: &Counters) {
    a.connections_active += b.connections_active;
    a.connections_total += b.connections_total;
    a.requests += b.requests;
    for i in 0..5 {
        a.responses[i] += b.responses[i];
    }
    a.bytes_in += b.bytes_in;
    a.bytes_out += b.bytes_out;
    a.parse_errors += b.parse_errors;
    a.head_timeouts += b.head_timeouts;
    a.idle_timeouts += b.idle_timeouts;
    a.io_timeouts += b.io_timeouts;
    a.accept_errors += b.accept_errors;
    a.accept_paused += b.accept_paused;
    a.latency_sum_us += b.latency_sum_us;
    a.tunnels_active += b.tunnels_active;
    a.tunnels_total += b.tunnels_total;
    a.tls_handshakes += b.tls_handshakes;
    a.tls_resumed += b.tls_resumed;
    a.config_generation = a.config_generation.max(b.config_generation);
    a.reload_failures += b.reload_failures;
    a.access_log_dropped += b.access_log_dropped;
    a.limits_fallback += b.limits_fallback;
    a.redis_failures += b.redis_failures;
    for i in 0..a.refused.len() {
        a.refused[i] += b.refused[i];
    }
    for i in 0..a.tls_handshake_failures.len() {
        a.tls_handshake_failures[i] += b.tls_handshake_failures[i];
    }
}

fn add_provider(a: &mut ProviderCounters, b: &ProviderCounters) {
    a.requests += b.requests;
    for i in 0..5 {
        a.responses[i] += b.responses[i];
    }
    for i in 0..a.errors.len() {
        a.errors[i] += b.errors[i];
    }
    a.pool_hits += b.pool_hits;
    a.pool_misses += b.pool_misses;
    a.new_connections += b.new_connections;
    a.retries += b.retries;
    a.connections_open += b.connections_open;
    a.connections_idle += b.connections_idle;
    a.queued += b.queued;
    a.ttfb_sum_us += b.ttfb_sum_us;
    a.total_sum_us += b.total_sum_us;
    a.tls_handshakes += b.tls_handshakes;
    a.tls_resumed += b.tls_resumed;
    a.handshake_sum_us += b.handshake_sum_us;
    a.dns_updates += b.dns_updates;
    a.dns_failures += b.dns_failures;
    a.failovers += b.failovers;
    for i in 0..a.retry_reasons.len() {
        a.retry_reasons[i] += b.retry_reasons[i];
    }
    a.ejections += b.ejections;
    a.endpoints_ejected += b.endpoints_ejected;
    a.fallbacks += b.fallbacks;
}

/// The `/stats` document.
pub fn stats_json(agg: &Aggregator) -> Value {
    let stale = agg.stale_shards();
    let mut shards: Vec<Value> = agg
        .shards
        .values()
        .map(|s: &ShardView| {
            let mut m = counters_json(&s.counters, &s.latency_us);
            m.insert("shard".into(), s.shard.into());
            m.insert("core".into(), s.core.into());
            m.insert("tid".into(), s.tid.into());
            // No snapshot for a few intervals: the counters shown are frozen.
            m.insert("stale".into(), stale.contains(&s.shard).into());
            m.insert("reported".into(), true.into());
            m.insert(
                "providers".into(),
                providers_json(&agg.provider_names, &s.providers),
            );
            Value::Object(m)
        })
        .collect();
    // A shard silent since start (stuck before its first snapshot) has no counters to show,
    // but must be seen: it is listed, stale, once the grace period is over.
    for id in stale.iter().filter(|id| !agg.shards.contains_key(id)) {
        shards.push(json!({"shard": id, "stale": true, "reported": false}));
    }
    let (c, h, providers) = merged(agg);
    let mut total = counters_json(&c, &h);
    total.insert(
        "providers".into(),
        providers_json(&agg.provider_names, &providers),
    );
    json!({
        "uptime_s": agg.started.elapsed().as_secs(),
        "config": agg.config.json(&agg.shard_generations()),
        "tenants": agg.tenants.json(),
        "shards": shards,
        "total": total,
    })
}

/// Latency histogram buckets for Prometheus, in µs.
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

pub(super) struct Prom {
    pub(super) out: String,
}

impl Prom {
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(super) fn sample(&mut self, name: &str, labels: &str, v: u64) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {v}");
    }

    pub(super) fn histogram(&mut self, name: &str, labels: &str, h: &Histogram<u64>, sum_us: u64) {
        for b in BUCKETS_US {
            let n = if h.is_empty() {
                0
            } else {
                h.count_between(0, b)
            };
            let le = b as f64 / 1e6;
            let _ = writeln!(self.out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(
            self.out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            h.len()
        );
        let _ = writeln!(self.out, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
        let _ = writeln!(self.out, "{name}_count{{{labels}}} {}", h.len());
    }
}

/// The `/metrics` document (Prometheus text exposition format 0.0.4).
pub fn prometheus(agg: &Aggregator) -> String {
    let mut p = Prom { out: String::new() };
    let shard_labels = |s: &ShardView| format!("shard=\"{}\",core=\"{}\"", s.shard, s.core);
    type Get = fn(&Counters) -> u64;
    let simple: [(&str, &str, &str, Get); 17] = [
        (
            "coregate_limits_fallback",
            "gauge",
            "1 while the shard's shared tenant limits fall back to local ones (Redis unreachable).",
            |c| c.limits_fallback,
        ),
        (
            "coregate_limits_redis_failures_total",
            "counter",
            "Redis lease calls that failed or took over 250 ms.",
            |c| c.redis_failures,
        ),
        (
            "coregate_tls_handshakes_total",
            "counter",
            "TLS handshakes completed on the TLS listener.",
            |c| c.tls_handshakes,
        ),
        (
            "coregate_tls_resumed_total",
            "counter",
            "TLS handshakes on the TLS listener that resumed a session.",
            |c| c.tls_resumed,
        ),
        (
            "coregate_connections_active",
            "gauge",
            "Client connections open.",
            |c| c.connections_active,
        ),
        (
            "coregate_tunnels_active",
            "gauge",
            "Upgraded connections (WebSocket tunnels) open.",
            |c| c.tunnels_active,
        ),
        (
            "coregate_tunnels_total",
            "counter",
            "Upgraded connections opened.",
            |c| c.tunnels_total,
        ),
        (
            "coregate_connections_total",
            "counter",
            "Client connections accepted.",
            |c| c.connections_total,
        ),
        (
            "coregate_requests_total",
            "counter",
            "Requests received.",
            |c| c.requests,
        ),
        (
            "coregate_bytes_in_total",
            "counter",
            "Bytes read from clients.",
            |c| c.bytes_in,
        ),
        (
            "coregate_bytes_out_total",
            "counter",
            "Bytes written to clients.",
            |c| c.bytes_out,
        ),
        (
            "coregate_parse_errors_total",
            "counter",
            "Requests refused as malformed.",
            |c| c.parse_errors,
        ),
        (
            "coregate_head_timeouts_total",
            "counter",
            "Connections closed for a slow request head.",
            |c| c.head_timeouts,
        ),
        (
            "coregate_idle_timeouts_total",
            "counter",
            "Keep-alive connections closed when idle.",
            |c| c.idle_timeouts,
        ),
        (
            "coregate_io_timeouts_total",
            "counter",
            "Body reads or writes that timed out.",
            |c| c.io_timeouts,
        ),
        (
            "coregate_accept_errors_total",
            "counter",
            "Failed accept calls.",
            |c| c.accept_errors,
        ),
        (
            "coregate_accept_paused_total",
            "counter",
            "Connections answered 503 (overloaded) and closed at the connection cap.",
            |c| c.accept_paused,
        ),
    ];
    for (name, kind, help, get) in simple {
        p.family(name, kind, help);
        for s in agg.shards.values() {
            p.sample(name, &shard_labels(s), get(&s.counters));
        }
    }
    p.family(
        "coregate_responses_total",
        "counter",
        "Responses sent, by status class.",
    );
    for s in agg.shards.values() {
        for (class, v) in CLASSES.iter().zip(&s.counters.responses) {
            p.sample(
                "coregate_responses_total",
                &format!("{},class=\"{class}\"", shard_labels(s)),
                *v,
            );
        }
    }
    p.family(
        "coregate_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on the TLS listener that failed, by reason.",
    );
    for s in agg.shards.values() {
        for f in HandshakeFailure::ALL {
            p.sample(
                "coregate_tls_handshake_failures_total",
                &format!("{},reason=\"{}\"", shard_labels(s), f.label()),
                s.counters.tls_handshake_failures[f as usize],
            );
        }
    }
    p.family(
        "coregate_request_duration_seconds",
        "histogram",
        "Request latency from parsed head to last response byte written.",
    );
    for s in agg.shards.values() {
        p.histogram(
            "coregate_request_duration_seconds",
            &shard_labels(s),
            &s.latency_us,
            s.counters.latency_sum_us,
        );
    }
    p.family(
        "coregate_shard_stale",
        "gauge",
        "1 while a shard sends no stats snapshot (stuck or gone; admin /health is 503).",
    );
    let stale = agg.stale_shards();
    for id in 0..agg.expected_shards() {
        let v = u64::from(stale.contains(&id));
        p.sample("coregate_shard_stale", &format!("shard=\"{id}\""), v);
    }
    super::provider_metrics::provider_metrics(&mut p, agg);
    agg.config.metrics(&mut p);
    agg.tenants.metrics(&mut p);
    agg.usage.metrics(&mut p, &agg.provider_names);
    p.out
}

/// Escapes a Prometheus label value.
pub(super) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
