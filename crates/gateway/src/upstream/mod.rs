//! The proxy path: providers, their per-shard connection pools, and forwarding.
//!
//! * [`ProviderConfig`] — one `[[providers]]` entry: endpoints, timeouts, pool sizes.
//! * `pool` — a shard's idle keep-alive connections per endpoint (LIFO), caps, waiters.
//! * `error` — every way a provider exchange fails: status, JSON code, message, metric.
//! * `exchange` — one request's life on the provider side: sequential or duplex, retries of
//!   stale pooled connections, the error answers.
//! * `forward` — the two streams of an exchange: request body up, response down.
//! * `heads` — the request head sent to the provider and the response heads for the client.
//! * `tunnel` — upgraded connections (WebSocket): a connection of their own, bytes relayed
//!   both ways after the provider's 101.
//!
//! Pool contract (when two requests share a connection): connections are pooled per shard,
//! per provider, per endpoint. Two providers never share connections even if they name the
//! same address, because their Host, timeouts and caps differ. A connection goes back to the
//! pool only after its response was read to the end and both sides allowed keep-alive.

pub mod connect;
pub mod error;
pub mod exchange;
pub mod forward;
mod heads;
pub mod pool;
pub mod tunnel;

use serde::{Deserialize, Serialize};

/// One `[[providers]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub name: String,
    /// `ip:port` addresses, used round-robin per shard.
    pub endpoints: Vec<String>,
    /// Host header sent upstream; empty keeps the client's Host.
    pub host: String,
    pub connect_timeout_ms: u64,
    /// Time from the request being sent to the first response byte.
    pub response_head_timeout_ms: u64,
    /// Longest pause between two reads of the response (body) from the provider.
    pub idle_read_timeout_ms: u64,
    /// Upper bound on the whole exchange with the provider.
    pub total_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint per shard.
    pub pool_max_idle: usize,
    /// Open connections (idle + busy) per endpoint per shard.
    pub pool_max_total: usize,
    /// Idle pooled connections older than this are closed.
    pub pool_idle_timeout_ms: u64,
    /// Requests that may wait for a connection per endpoint per shard when at the cap;
    /// 0 (the default) means the shard's client connection cap, so a request is never
    /// refused by the queue while its connection was accepted.
    pub queue_max: usize,
    /// How long a request waits for a connection before 503.
    pub queue_timeout_ms: u64,
    /// An upgraded connection (WebSocket tunnel) where no byte moved either way for this
    /// long is closed.
    pub tunnel_idle_timeout_ms: u64,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            endpoints: Vec::new(),
            host: String::new(),
            connect_timeout_ms: 2_000,
            response_head_timeout_ms: 30_000,
            idle_read_timeout_ms: 30_000,
            total_timeout_ms: 300_000,
            pool_max_idle: 1024,
            pool_max_total: 1024,
            pool_idle_timeout_ms: 60_000,
            queue_max: 0,
            queue_timeout_ms: 5_000,
            tunnel_idle_timeout_ms: 300_000,
        }
    }
}

/// Checks providers; errors carry the dotted key.
pub fn validate_providers(providers: &[ProviderConfig]) -> Result<(), (String, String)> {
    for (i, p) in providers.iter().enumerate() {
        let key = |k: &str| format!("providers[{i}].{k}");
        if p.name.is_empty() {
            return Err((key("name"), "must not be empty".into()));
        }
        if providers[..i].iter().any(|q| q.name == p.name) {
            return Err((key("name"), format!("{:?} is defined twice", p.name)));
        }
        if p.endpoints.is_empty() {
            return Err((key("endpoints"), "needs at least one host:port".into()));
        }
        for (j, e) in p.endpoints.iter().enumerate() {
            coregate_runtime::listener::parse_addr(e)
                .map_err(|m| (format!("providers[{i}].endpoints[{j}]"), m))?;
        }
        if !p.host.is_empty() && p.host.parse::<http::uri::Authority>().is_err() {
            return Err((key("host"), format!("{:?} is not a valid host", p.host)));
        }
        for (k, v) in [
            ("connect_timeout_ms", p.connect_timeout_ms),
            ("response_head_timeout_ms", p.response_head_timeout_ms),
            ("idle_read_timeout_ms", p.idle_read_timeout_ms),
            ("total_timeout_ms", p.total_timeout_ms),
            ("pool_idle_timeout_ms", p.pool_idle_timeout_ms),
            ("queue_timeout_ms", p.queue_timeout_ms),
            ("tunnel_idle_timeout_ms", p.tunnel_idle_timeout_ms),
        ] {
            if v == 0 || v > 24 * 3600 * 1000 {
                return Err((key(k), format!("{v} is out of range (1..=86400000)")));
            }
        }
        if p.pool_max_total == 0 {
            return Err((key("pool_max_total"), "must be at least 1".into()));
        }
        if p.pool_max_idle > p.pool_max_total {
            return Err((
                key("pool_max_idle"),
                format!(
                    "{} exceeds pool_max_total ({})",
                    p.pool_max_idle, p.pool_max_total
                ),
            ));
        }
    }
    Ok(())
}
