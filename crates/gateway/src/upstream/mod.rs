//! The proxy path: providers, their per-shard connection pools, and forwarding.
//!
//! * [`ProviderConfig`] — one `[[providers]]` entry: endpoints, TLS, credential, timeouts,
//!   pool sizes.
//! * `endpoint` — endpoint syntax (`https://host:port`...) and (blocking) resolution.
//! * `credentials` — presets, `api_key` sources and the redacted [`credentials::Secret`].
//! * `connect` — TCP connect and the TLS handshake, with their failures classified.
//! * `active` — active health checks: one thread per process probes every endpoint and
//!   tells the shards which are down.
//! * `pool` — a shard's idle keep-alive connections per endpoint (LIFO), caps, waiters.
//! * `providers` — one config generation's providers on a shard: endpoint choice (P2C),
//!   and what a reload carries over.
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

pub mod active;
pub mod connect;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod exchange;
pub mod forward;
mod heads;
pub mod health;
pub use heads::ClientFacts;
pub mod pool;
pub mod providers;
pub mod realtime;
pub mod tunnel;

use credentials::Secret;
use endpoint::parse_endpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One `[[providers]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub name: String,
    /// `openai`, `deepgram`, `elevenlabs` or `cartesia`: fills endpoint, TLS and the
    /// credential header; every field set here overrides it.
    pub preset: String,
    /// `host:port`, `http://host[:port]` or `https://host[:port]` (host: a DNS name or IP
    /// literal), balanced per shard (power of two choices, see `weights`).
    pub endpoints: Vec<String>,
    /// Each endpoint's share of requests, in the order of `endpoints` (empty: all 1). An
    /// endpoint of weight 0 takes requests only when no other one can.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<u32>,
    /// Active health checks of every endpoint (off when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<active::HealthCheck>,
    /// Host header sent upstream (and the TLS server name); empty: the endpoint's host
    /// name, or the client's Host when the endpoint is an IP literal.
    pub host: String,
    /// Where the API key is: `env:NAME` or `file:/path`. Never the key itself.
    pub api_key: String,
    /// The header that carries the key (`Authorization`, `xi-api-key`...). The client's own
    /// header of that name is removed.
    pub auth_header: String,
    /// Its value, with `{key}` standing for the key (`Bearer {key}`).
    pub auth_value: String,
    /// Headers set on every request to this provider (after the route's).
    pub add_headers: BTreeMap<String, String>,
    /// PEM file of the CAs that sign a private provider's certificate; empty: the public
    /// web roots (webpki-roots).
    pub ca_file: String,
    /// Verify the provider's certificate. `false` is for tests only and is warned about.
    pub tls_verify: bool,
    /// How often host names are resolved again.
    pub resolve_interval_ms: u64,
    pub connect_timeout_ms: u64,
    /// Time from the request being sent to the first response byte.
    pub response_head_timeout_ms: u64,
    /// Longest pause between two reads of the response (body) from the provider.
    pub idle_read_timeout_ms: u64,
    /// Upper bound on the whole exchange with the provider.
    pub total_timeout_ms: u64,
    /// Idle keep-alive connections kept per endpoint per shard; unset: `pool_max_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_max_idle: Option<usize>,
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
    /// Failures in a row (connect, TLS, DNS, or before a response head) that eject an
    /// endpoint from the shard's rotation; 0 never ejects.
    pub eject_after_failures: u32,
    /// A 5xx answer counts as a failure towards ejection (as Envoy's consecutive 5xx).
    pub eject_on_5xx: bool,
    /// How long a first ejection lasts; each ejection in a row doubles it.
    pub eject_base_ms: u64,
    /// The longest ejection.
    pub eject_max_ms: u64,
    /// Another provider's name: a request that reached none of this provider's endpoints
    /// (nothing sent) goes there, with that provider's host, credential and headers.
    pub fallback: String,
    /// The key `api_key` pointed to, read at start (never serialized or printed).
    #[serde(skip)]
    pub credential: Option<Secret>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            preset: String::new(),
            endpoints: Vec::new(),
            weights: Vec::new(),
            health_check: None,
            host: String::new(),
            api_key: String::new(),
            auth_header: String::new(),
            auth_value: String::new(),
            add_headers: BTreeMap::new(),
            ca_file: String::new(),
            tls_verify: true,
            resolve_interval_ms: 30_000,
            connect_timeout_ms: 2_000,
            response_head_timeout_ms: 30_000,
            idle_read_timeout_ms: 30_000,
            total_timeout_ms: 300_000,
            pool_max_idle: None,
            pool_max_total: DEFAULT_POOL_MAX_TOTAL,
            pool_idle_timeout_ms: 60_000,
            queue_max: 0,
            queue_timeout_ms: 5_000,
            tunnel_idle_timeout_ms: 300_000,
            eject_after_failures: 5,
            eject_on_5xx: true,
            eject_base_ms: 1_000,
            eject_max_ms: 30_000,
            fallback: String::new(),
            credential: None,
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
            return Err((
                key("endpoints"),
                "needs at least one endpoint (or a preset)".into(),
            ));
        }
        for (j, e) in p.endpoints.iter().enumerate() {
            parse_endpoint(e).map_err(|m| (format!("providers[{i}].endpoints[{j}]"), m))?;
        }
        validate_tls(p).map_err(|(k, m)| (key(k), m))?;
        validate_credential(p).map_err(|(k, m)| (key(k), m))?;
        crate::route::check_added_headers(&p.add_headers).map_err(|m| (key("add_headers"), m))?;
        if p.add_headers
            .keys()
            .any(|h| h.eq_ignore_ascii_case(&p.auth_header))
        {
            return Err((
                key("add_headers"),
                format!("{:?} is the credential header (auth_header)", p.auth_header),
            ));
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
            ("resolve_interval_ms", p.resolve_interval_ms),
            ("eject_base_ms", p.eject_base_ms),
            ("eject_max_ms", p.eject_max_ms),
        ] {
            if v == 0 || v > 24 * 3600 * 1000 {
                return Err((key(k), format!("{v} is out of range (1..=86400000)")));
            }
        }
        validate_fallback(providers, i).map_err(|m| (key("fallback"), m))?;
        if p.eject_base_ms > p.eject_max_ms {
            return Err((key("eject_base_ms"), "exceeds eject_max_ms".into()));
        }
        if p.pool_max_total == 0 {
            return Err((key("pool_max_total"), "must be at least 1".into()));
        }
        validate_weights(p).map_err(|m| (key("weights"), m))?;
        if let Some(hc) = &p.health_check {
            hc.validate()
                .map_err(|(k, m)| (key(&format!("health_check.{k}")), m))?;
        }
        if let Some(idle) = p.pool_max_idle.filter(|&i| i > p.pool_max_total) {
            return Err((
                key("pool_max_idle"),
                format!("{idle} exceeds pool_max_total ({})", p.pool_max_total),
            ));
        }
    }
    Ok(())
}

/// Weights, when given, are one per endpoint, at most 1000, and not all 0.
fn validate_weights(p: &ProviderConfig) -> Result<(), String> {
    if p.weights.is_empty() {
        return Ok(());
    }
    if p.weights.len() != p.endpoints.len() {
        return Err(format!(
            "has {} weights for {} endpoints: give one per endpoint, or none",
            p.weights.len(),
            p.endpoints.len()
        ));
    }
    if let Some(w) = p.weights.iter().find(|&&w| w > 1000) {
        return Err(format!("{w} is out of range (0..=1000)"));
    }
    if p.weights.iter().all(|&w| w == 0) {
        return Err("are all 0: no endpoint would take a request".into());
    }
    Ok(())
}

/// The default `pool_max_total`: connections per endpoint per shard.
pub const DEFAULT_POOL_MAX_TOTAL: usize = 1024;

impl ProviderConfig {
    /// Idle connections kept per endpoint per shard: `pool_max_idle`, else all of them.
    pub fn max_idle(&self) -> usize {
        self.pool_max_idle
            .unwrap_or(self.pool_max_total)
            .min(self.pool_max_total)
    }

    /// Endpoint `i`'s weight.
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// Whether any endpoint is `https://`.
    pub fn uses_tls(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| parse_endpoint(e).is_ok_and(|e| e.tls))
    }

    /// The `host` setting without its port (and brackets): the name TLS sends and
    /// verifies for `https` endpoints. `None` when `host` is unset.
    pub fn host_name(&self) -> Option<&str> {
        if self.host.is_empty() {
            return None;
        }
        Some(endpoint::split_host_port(&self.host).map_or(self.host.as_str(), |(h, _)| h))
    }

    /// How this provider verifies certificates.
    pub fn verify(&self) -> coregate_runtime::tls::Verify<'_> {
        use coregate_runtime::tls::Verify;
        if !self.tls_verify {
            Verify::Off
        } else if self.ca_file.is_empty() {
            Verify::PublicRoots
        } else {
            Verify::CaFile(std::path::Path::new(&self.ca_file))
        }
    }

    /// The credential header to send, if this provider has one.
    pub fn credential_header(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let key = self.credential.as_ref()?;
        let value = self.auth_value.replace("{key}", key.expose());
        Some((self.auth_header.as_bytes().to_vec(), value.into_bytes()))
    }
}

/// A fallback names another provider, and following fallbacks never comes back.
fn validate_fallback(providers: &[ProviderConfig], i: usize) -> Result<(), String> {
    let mut seen = vec![i];
    let mut at = i;
    while !providers[at].fallback.is_empty() {
        let name = &providers[at].fallback;
        let Some(next) = providers.iter().position(|q| &q.name == name) else {
            return Err(format!("no provider named {name:?} is defined"));
        };
        if seen.contains(&next) {
            return Err(format!(
                "{:?} falls back, through {name:?}, to itself",
                providers[i].name
            ));
        }
        seen.push(next);
        at = next;
    }
    Ok(())
}

/// Provider `pidx` and the providers it falls back to, in order.
pub fn fallback_chain(providers: &[std::rc::Rc<providers::Provider>], pidx: usize) -> Vec<usize> {
    let mut chain = vec![pidx];
    while let Some(next) = chain
        .last()
        .and_then(|&p| providers.get(p))
        .filter(|p| !p.cfg.fallback.is_empty())
        .and_then(|p| providers.iter().position(|q| q.name == p.cfg.fallback))
    {
        if chain.contains(&next) {
            break;
        }
        chain.push(next);
    }
    chain
}

fn validate_tls(p: &ProviderConfig) -> Result<(), (&'static str, String)> {
    if let Some(name) = p.host_name().filter(|_| p.uses_tls()) {
        coregate_runtime::tls::server_name(name).map_err(|m| ("host", m))?;
    }
    if !p.ca_file.is_empty() {
        if !p.uses_tls() {
            return Err(("ca_file", "is set but no endpoint is https://".into()));
        }
        coregate_runtime::tls::client_config(p.verify()).map_err(|m| ("ca_file", m))?;
    }
    Ok(())
}

fn validate_credential(p: &ProviderConfig) -> Result<(), (&'static str, String)> {
    let is_token = |h: &str| h.parse::<http::HeaderName>().is_ok();
    if p.api_key.is_empty() {
        if !p.auth_header.is_empty() && p.preset.is_empty() {
            return Err(("api_key", "auth_header is set but api_key is not".into()));
        }
        return Ok(());
    }
    if p.auth_header.is_empty() || !is_token(&p.auth_header) {
        return Err((
            "auth_header",
            "api_key needs a valid auth_header (or a preset)".into(),
        ));
    }
    if !p.auth_value.contains("{key}") {
        return Err(("auth_value", "must contain {key} where the key goes".into()));
    }
    Ok(())
}

/// Applies presets and reads credentials: what parsing the file leaves to do before the
/// config is validated. Errors carry the dotted key.
pub fn prepare_providers(providers: &mut [ProviderConfig]) -> Result<(), (String, String)> {
    for (i, p) in providers.iter_mut().enumerate() {
        credentials::apply_preset(p).map_err(|m| (format!("providers[{i}].preset"), m))?;
    }
    Ok(())
}

/// Reads every provider's `api_key`; the error names the key, never the value.
pub fn load_credentials(providers: &mut [ProviderConfig]) -> Result<(), (String, String)> {
    for (i, p) in providers.iter_mut().enumerate() {
        if !p.api_key.is_empty() {
            p.credential = Some(
                credentials::load_secret(&p.api_key)
                    .map_err(|m| (format!("providers[{i}].api_key"), m))?,
            );
        }
    }
    Ok(())
}
