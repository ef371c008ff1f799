//! The per-provider families of `/metrics`: one series per provider, and per shard where
//! the figure is a shard's.

use super::aggregate::{Aggregator, ProviderView, ShardView};
use super::render::{add_endpoints, escape, Prom, CLASSES};
use super::{EndpointStats, ProviderCounters, UpstreamError};
use hdrhistogram::Histogram;

pub(super) fn provider_metrics(p: &mut Prom, agg: &Aggregator) {
    if agg.provider_names.is_empty() {
        return;
    }
    type Get = fn(&ProviderCounters) -> u64;
    let simple: [(&str, &str, &str, Get); 18] = [
        (
            "coregate_upstream_fallbacks_total",
            "counter",
            "Requests sent on to the fallback provider (no endpoint of this one reached).",
            |c| c.fallbacks,
        ),
        (
            "coregate_upstream_failovers_total",
            "counter",
            "Requests moved to another endpoint after a failure before any byte was sent.",
            |c| c.failovers,
        ),
        (
            "coregate_upstream_ejections_total",
            "counter",
            "Endpoints ejected after failures in a row.",
            |c| c.ejections,
        ),
        (
            "coregate_upstream_endpoints_ejected",
            "gauge",
            "Endpoints out of rotation now (on this shard).",
            |c| c.endpoints_ejected,
        ),
        (
            "coregate_upstream_tls_handshakes_total",
            "counter",
            "TLS handshakes with the provider.",
            |c| c.tls_handshakes,
        ),
        (
            "coregate_upstream_tls_resumed_total",
            "counter",
            "TLS handshakes with the provider that resumed a session.",
            |c| c.tls_resumed,
        ),
        (
            "coregate_upstream_dns_updates_total",
            "counter",
            "Address-set changes of the provider's host names applied.",
            |c| c.dns_updates,
        ),
        (
            "coregate_upstream_dns_failures_total",
            "counter",
            "Re-resolutions of the provider's host names that failed (last good set kept).",
            |c| c.dns_failures,
        ),
        (
            "coregate_upstream_requests_total",
            "counter",
            "Requests forwarded to the provider.",
            |c| c.requests,
        ),
        (
            "coregate_upstream_pool_hits_total",
            "counter",
            "Requests that reused an idle pooled connection.",
            |c| c.pool_hits,
        ),
        (
            "coregate_upstream_pool_misses_total",
            "counter",
            "Requests that found no idle pooled connection.",
            |c| c.pool_misses,
        ),
        (
            "coregate_upstream_new_connections_total",
            "counter",
            "Connections opened to the provider.",
            |c| c.new_connections,
        ),
        (
            "coregate_upstream_retries_total",
            "counter",
            "Requests retried after a stale pooled connection failed.",
            |c| c.retries,
        ),
        (
            "coregate_upstream_connections_open",
            "gauge",
            "Provider connections open.",
            |c| c.connections_open,
        ),
        (
            "coregate_upstream_connections_idle",
            "gauge",
            "Idle pooled provider connections.",
            |c| c.connections_idle,
        ),
        (
            "coregate_upstream_queued",
            "gauge",
            "Requests waiting for a provider connection.",
            |c| c.queued,
        ),
        (
            "coregate_upstream_failures_total",
            "counter",
            "Upstream exchanges that failed, of any kind (by kind: coregate_upstream_errors_total).",
            |c| c.errors.iter().sum(),
        ),
        (
            "coregate_upstream_errors_sum_total",
            "counter",
            "DEPRECATED: renamed coregate_upstream_failures_total; removed in the next release.",
            |c| c.errors.iter().sum(),
        ),
    ];
    let labels = |s: &ShardView, name: &str| {
        format!(
            "shard=\"{}\",core=\"{}\",provider=\"{}\"",
            s.shard,
            s.core,
            escape(name)
        )
    };
    for (metric, kind, help, get) in simple {
        p.family(metric, kind, help);
        for s in agg.shards.values() {
            for (name, pv) in agg.provider_names.iter().zip(&s.providers) {
                p.sample(metric, &labels(s, name), get(&pv.counters));
            }
        }
    }
    p.family(
        "coregate_upstream_responses_total",
        "counter",
        "Provider responses by status class.",
    );
    for s in agg.shards.values() {
        for (name, pv) in agg.provider_names.iter().zip(&s.providers) {
            for (class, v) in CLASSES.iter().zip(&pv.counters.responses) {
                let l = format!("{},class=\"{class}\"", labels(s, name));
                p.sample("coregate_upstream_responses_total", &l, *v);
            }
        }
    }
    p.family(
        "coregate_upstream_retries_by_reason_total",
        "counter",
        "Requests moved to another endpoint or the fallback provider, by the failure's kind.",
    );
    for s in agg.shards.values() {
        for (name, pv) in agg.provider_names.iter().zip(&s.providers) {
            for e in UpstreamError::ALL
                .iter()
                .filter(|e| pv.counters.retry_reasons[**e as usize] > 0)
            {
                let l = format!("{},reason=\"{}\"", labels(s, name), e.label());
                let v = pv.counters.retry_reasons[*e as usize];
                p.sample("coregate_upstream_retries_by_reason_total", &l, v);
            }
        }
    }
    p.family(
        "coregate_upstream_errors_total",
        "counter",
        "Upstream errors by kind.",
    );
    for s in agg.shards.values() {
        for (name, pv) in agg.provider_names.iter().zip(&s.providers) {
            for e in UpstreamError::ALL {
                let l = format!("{},kind=\"{}\"", labels(s, name), e.label());
                p.sample(
                    "coregate_upstream_errors_total",
                    &l,
                    pv.counters.errors[e as usize],
                );
            }
        }
    }
    endpoint_metrics(p, agg);
    for (metric, help, pick) in [
        (
            "coregate_upstream_ttfb_seconds",
            "Time from sending the request to the provider to its first response byte.",
            (|v: &ProviderView| (&v.ttfb_us, v.counters.ttfb_sum_us))
                as fn(&ProviderView) -> (&Histogram<u64>, u64),
        ),
        (
            "coregate_upstream_total_seconds",
            "Time from sending the request to the provider to its last response byte.",
            |v: &ProviderView| (&v.total_us, v.counters.total_sum_us),
        ),
        (
            "coregate_upstream_tls_handshake_seconds",
            "TLS handshake time with the provider (after the TCP connect).",
            |v: &ProviderView| (&v.handshake_us, v.counters.handshake_sum_us),
        ),
    ] {
        p.family(metric, "histogram", help);
        for s in agg.shards.values() {
            for (name, pv) in agg.provider_names.iter().zip(&s.providers) {
                let (h, sum) = pick(pv);
                p.histogram(metric, &labels(s, name), h, sum);
            }
        }
    }
}

/// Per endpoint, summed over the shards: its traffic, ejections, and state now.
fn endpoint_metrics(p: &mut Prom, agg: &Aggregator) {
    let mut by_provider: Vec<Vec<EndpointStats>> = vec![Vec::new(); agg.provider_names.len()];
    for s in agg.shards.values() {
        for (sum, pv) in by_provider.iter_mut().zip(&s.providers) {
            add_endpoints(sum, &pv.endpoints);
        }
    }
    type Get = fn(&EndpointStats) -> u64;
    let families: [(&str, &str, &str, Get); 5] = [
        (
            "coregate_upstream_endpoint_requests_total",
            "counter",
            "Attempts sent to the endpoint (retries and failovers count again).",
            |e| e.requests,
        ),
        (
            "coregate_upstream_endpoint_failures_total",
            "counter",
            "Attempts on the endpoint that failed (or were answered 5xx, with eject_on_5xx).",
            |e| e.failures,
        ),
        (
            "coregate_upstream_endpoint_ejections_total",
            "counter",
            "Times a shard ejected the endpoint (consecutive failures).",
            |e| e.ejections,
        ),
        (
            "coregate_upstream_endpoint_ejected_shards",
            "gauge",
            "Shards that eject the endpoint now.",
            |e| e.ejected,
        ),
        (
            "coregate_upstream_endpoint_up",
            "gauge",
            "1 unless the active health check says the endpoint is down.",
            |e| u64::from(e.down == 0),
        ),
    ];
    for (metric, kind, help, get) in families {
        p.family(metric, kind, help);
        for (name, endpoints) in agg.provider_names.iter().zip(&by_provider) {
            for e in endpoints {
                let l = format!(
                    "provider=\"{}\",endpoint=\"{}\"",
                    escape(name),
                    escape(&e.name)
                );
                p.sample(metric, &l, get(e));
            }
        }
    }
}
