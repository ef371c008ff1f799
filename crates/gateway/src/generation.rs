//! Config generations: what one config gives a shard, and switching to the next one.
//!
//! A shard serves every new request from its current [`Generation`]: routes, providers
//! (with their pools) and the TLS listener's certificates. A request takes an `Rc` of the
//! generation when its route is looked up and holds it to the end of its exchange, or of
//! its tunnel, so a reload never changes anything under a request in flight: it finishes
//! on the config it started with, while new requests use the new one. An old generation
//! is dropped when the last request holding it ends.
//!
//! The new config arrives as a [`NewConfig`], built and checked on the main thread (parsed,
//! validated, names resolved, certificate and CA files read); the shard only builds its own
//! single-threaded state from it.

use crate::config::Config;
use crate::resolver::Addresses;
use crate::route::RouteTable;
use crate::shard::{HttpTimeouts, Shard};
use crate::tenants::limits::ShardLimits;
use crate::tenants::TenantTable;
use crate::upstream::providers::{ProviderInputs, Providers};
use coregate_http1::request::Limits;
use coregate_runtime::tls::ServerCerts;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// One config as a shard serves it.
pub struct Generation {
    /// 1 for the config the process started with, then one more per reload.
    pub number: u64,
    pub routes: RouteTable,
    pub providers: Providers,
    /// The TLS listener's server config (its certificates), when there is one.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may use which route, and their limits.
    pub tenants: TenantTable,
}

/// A config ready for the shards, built on the main thread.
pub struct NewConfig {
    pub number: u64,
    pub config: Config,
    /// Where each provider endpoint resolved, `[provider][endpoint]`.
    pub addresses: Addresses,
    /// Each provider's TLS client config (`upstream::providers::client_tls`): the CA files
    /// were read once, here, so that every shard switches to the same roots.
    pub client_tls: Vec<Option<crate::upstream::providers::ClientTls>>,
    pub tls: Option<ServerCerts>,
    /// Each provider's stats slot (stable across reloads for a provider name).
    pub slots: Vec<usize>,
    /// How many stats slots there are (providers ever configured).
    pub slot_count: usize,
}

impl std::fmt::Debug for NewConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewConfig(generation {})", self.number)
    }
}

impl NewConfig {
    /// The shard's generation for this config; `old` lends the providers it carries over.
    pub fn build(
        &self,
        connection_cap: usize,
        old: Option<&Generation>,
    ) -> Result<Generation, String> {
        let cfg = &self.config;
        let inputs = ProviderInputs {
            cfgs: &cfg.providers,
            tls: &self.client_tls,
            addresses: &self.addresses,
            slots: &self.slots,
            connection_cap,
        };
        let providers = Providers::rebuild(old.map(|g| &g.providers), &inputs)
            .map_err(|e| format!("providers: {e}"))?;
        let server_tls = match &self.tls {
            Some(certs) => Some(certs.shard_config()?),
            None => None,
        };
        let table = RouteTable::new(&cfg.routes, &cfg.provider_names());
        // In the route table's order (longest prefix first), which is how requests name
        // their route.
        let routes: Vec<(String, String)> = (0..)
            .map_while(|i| table.get(i))
            .map(|r| {
                let provider = cfg.providers.get(r.provider).map(|p| p.name.clone());
                (r.name.to_string(), provider.unwrap_or_default())
            })
            .collect();
        Ok(Generation {
            number: self.number,
            routes: table,
            providers,
            server_tls,
            tenants: TenantTable::new(&cfg.auth, &cfg.tenants, &routes),
        })
    }

    /// The parser limits of `[http]`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_head_bytes: self.config.http.max_head_bytes,
            max_headers: self.config.http.max_headers,
        }
    }

    /// The client timeouts of `[http]`.
    pub fn timeouts(&self) -> HttpTimeouts {
        let http = &self.config.http;
        HttpTimeouts {
            head_timeout: Duration::from_millis(http.head_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            first_byte_timeout: Duration::from_millis(http.first_byte_timeout_ms),
            body_read_timeout: Duration::from_millis(http.body_read_timeout_ms),
        }
    }
}

/// Switches `shard` to `new`. On failure the shard keeps its generation, and the failure
/// is logged and counted (the main thread built the same state before sending it, so this
/// is not expected).
pub fn switch(shard: &Shard, new: &NewConfig, connection_cap: usize) {
    let old = shard.config();
    let next = match new.build(connection_cap, Some(&old)) {
        Ok(g) => Rc::new(g),
        Err(e) => {
            coregate_runtime::log::error(&format!(
                "shard {}: cannot switch to config generation {}: {e}; keeping generation {}",
                shard.id, new.number, old.number
            ));
            shard.stats.borrow_mut().counters.reload_failures += 1;
            return;
        }
    };
    old.providers.retire_all_but(&next.providers);
    shard.limits.set(new.limits());
    shard.http.set(new.timeouts());
    shard
        .drain_timeout
        .set(Duration::from_millis(new.config.server.drain_timeout_ms));
    {
        let mut stats = shard.stats.borrow_mut();
        stats.counters.config_generation = new.number;
        if stats.providers.len() < new.slot_count {
            stats
                .providers
                .resize_with(new.slot_count, Default::default);
        }
        next.providers.register_endpoints(&mut stats.providers);
    }
    shard.budget_until.borrow_mut().clear();
    let redis = crate::tenants::redis::for_config(&new.config, next.tenants.names.len());
    // The failure count is a Prometheus counter: it goes on across generations.
    if let (Some(old), Some(r)) = (shard.redis_limits.borrow().as_ref(), &redis) {
        r.failures.set(old.failures.get());
    }
    *shard.redis_limits.borrow_mut() = redis;
    *shard.tenant_limits.borrow_mut() = Rc::new(ShardLimits::new(
        next.tenants.names.len(),
        shard.shard_count,
    ));
    *shard.current.borrow_mut() = next;
}
