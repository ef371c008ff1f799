//! Reloading the config on SIGHUP, without dropping a connection.
//!
//! Everything that can fail happens here, on the main thread, before any shard hears of it:
//! the file is read and validated as `coregate check` does it (same errors), host names are
//! resolved, certificate and key files are read, and each provider is built once as a trial.
//! Only a config that passed all of that goes to the shards, as one [`Control::Reload`]
//! message each; a shard then builds its own state from it ([`crate::generation`]). A
//! refused config leaves the running one in place, and is logged and counted.
//!
//! Settings bound to sockets and threads (listen addresses, cores, the admin listener, the
//! embedded mock, the stats interval, the connection cap, the access log and the usage
//! export) cannot change at run time: a reload that changes them applies everything else,
//! keeps their old values and logs each one as needing a restart. `env:` keys cannot change
//! either (the environment is the one the process started with): each reload names them.

use crate::config::Config;
use crate::generation::NewConfig;
use crate::shard::Control;
use crate::stats::aggregate::{Query, ReloadEvent};
use crate::upstream::providers::{client_tls, ProviderInputs, Providers};
use crate::upstream::ProviderConfig;
use coregate_runtime::tls::ServerCerts;
use crossbeam_channel::Sender;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the config comes from: the file of `--config` (none for the embedded default)
/// and the command-line flags that override it, applied again on every reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub cores: Option<String>,
    pub listen: Option<String>,
    pub admin: Option<String>,
    /// `--upstream`: one provider `upstream` routed at `/`.
    pub upstream: Option<String>,
}

impl ConfigSource {
    /// Reads and validates the config with the overrides applied.
    pub fn load(&self) -> Result<Config, String> {
        let mut cfg = match &self.path {
            Some(p) => Config::load(p).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(c) = &self.cores {
            cfg.server.cores = c.clone();
        }
        if let Some(l) = &self.listen {
            cfg.server.listen = l.clone();
        }
        if let Some(a) = &self.admin {
            cfg.admin.listen = a.clone();
        }
        if let Some(u) = &self.upstream {
            cfg.providers.push(ProviderConfig {
                name: "upstream".into(),
                endpoints: vec![u.clone()],
                ..Default::default()
            });
            cfg.routes.push(crate::route::RouteConfig {
                prefix: "/".into(),
                provider: "upstream".into(),
                ..Default::default()
            });
        }
        cfg.validate("<command line>").map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

/// Provider stats slots by name. A provider keeps its slot across reloads (its counters go
/// on from where they were); a new name takes the next slot; a removed provider's slot keeps
/// its counters and its gauges read zero.
#[derive(Debug, Default, Clone)]
pub struct StatSlots {
    names: Vec<String>,
}

impl StatSlots {
    /// The slot of each of `providers`, adding slots for new names.
    pub fn assign(&mut self, providers: &[ProviderConfig]) -> Vec<usize> {
        providers
            .iter()
            .map(|p| match self.names.iter().position(|n| *n == p.name) {
                Some(i) => i,
                None => {
                    self.names.push(p.name.clone());
                    self.names.len() - 1
                }
            })
            .collect()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Everything about the running process a reload must respect.
pub struct Reloader {
    pub source: ConfigSource,
    /// The config the shards run now (with the embedded mock's route, if any).
    pub running: Config,
    pub generation: u64,
    pub slots: StatSlots,
    /// The certificates the TLS listener serves now: a reload keeps their ticket key, so
    /// clients resume their sessions across it.
    pub tls: Option<ServerCerts>,
    /// Where the embedded mock provider listens, when it runs.
    pub mock: Option<String>,
    pub shard_count: usize,
    pub nofile: u64,
    pub connection_cap: usize,
    pub controls: Vec<Sender<Control>>,
    pub queries: Sender<Query>,
    /// The resolver thread's generation: an older resolver thread stops when it changes.
    pub resolver: Arc<AtomicU64>,
    /// `server.drain_delay_ms` as the drain reads it when it starts.
    pub drain_delay_ms: Arc<AtomicU64>,
}

impl Reloader {
    /// Re-reads the config and hands it to the shards; logs and reports the outcome.
    pub fn reload(&mut self) {
        let event = match self.prepare() {
            Ok((new, restart)) => {
                let number = new.number;
                self.apply(new);
                coregate_runtime::log::info(&format!("reload: serving config generation {number}"));
                for key in &restart {
                    coregate_runtime::log::warn(&format!(
                        "reload: {key} changed but only takes effect after a restart; \
                         keeping the running value"
                    ));
                }
                if let Some(line) = env_keys_line(&self.running) {
                    coregate_runtime::log::info(&line);
                }
                ReloadEvent::Applied { number, restart }
            }
            Err(e) => {
                coregate_runtime::log::error(&format!(
                    "reload refused, still serving config generation {}: {e}",
                    self.generation
                ));
                ReloadEvent::Refused(e)
            }
        };
        let _ = self.queries.send(Query::Reloaded(event));
    }

    /// Builds the next config and everything the shards will need from it; also returns
    /// the restart-only settings it would have changed.
    fn prepare(&mut self) -> Result<(NewConfig, Vec<String>), String> {
        let mut cfg = self.source.load()?;
        let restart = restart_only_changes(&self.running, &cfg);
        keep_restart_only(&mut cfg, &self.running);
        if let Some(listen) = &self.mock {
            if cfg.wants_embedded_mock() {
                crate::server::add_mock_route(&mut cfg, listen);
                cfg.validate("<embedded mock>").map_err(|e| e.to_string())?;
            }
        }
        crate::budget::fit_default_pools(&mut cfg, self.shard_count, self.nofile);
        let tls = match &cfg.server.tls {
            Some(t) => {
                let certs = crate::tls::load(t).map_err(|(key, m)| format!("{key}: {m}"))?;
                Some(match &self.tls {
                    Some(old) => certs.with_ticketer_of(old),
                    None => certs,
                })
            }
            None => None,
        };
        if let Some(t) = &tls {
            t.shard_config().map_err(|e| format!("server.tls: {e}"))?;
        }
        let addresses = crate::resolver::resolve_all(&cfg.providers)
            .map_err(|(key, m)| format!("{key}: {m}"))?;
        let mut slots = self.slots.clone();
        let provider_slots = slots.assign(&cfg.providers);
        let client_tls = client_tls(&cfg.providers).map_err(|e| format!("providers: {e}"))?;
        // A trial build of every provider, thrown away.
        Providers::new(&ProviderInputs {
            cfgs: &cfg.providers,
            tls: &client_tls,
            addresses: &addresses,
            slots: &provider_slots,
            connection_cap: self.connection_cap,
        })
        .map_err(|e| format!("providers: {e}"))?;
        self.slots = slots;
        let new = NewConfig {
            number: self.generation + 1,
            config: cfg,
            addresses,
            client_tls,
            tls,
            slots: provider_slots,
            slot_count: self.slots.names().len(),
        };
        Ok((new, restart))
    }

    /// Sends `new` to every shard and restarts the resolver thread for its providers.
    fn apply(&mut self, new: NewConfig) {
        let _ = self
            .queries
            .send(Query::ProviderNames(self.slots.names().to_vec()));
        let tenants = crate::tenants::for_aggregator(&new.config);
        let _ = self.queries.send(Query::Tenants(new.number, tenants));
        self.generation = new.number;
        self.resolver.store(new.number, Ordering::SeqCst);
        if let Err(e) = crate::resolver::spawn(
            &new.config.providers,
            &new.addresses,
            self.controls.clone(),
            (new.number, self.resolver.clone()),
        ) {
            coregate_runtime::log::error(&format!(
                "reload: cannot start the resolver thread ({e}); host names are not \
                 re-resolved until the next reload"
            ));
        }
        crate::upstream::active::spawn(
            &new.config.providers,
            self.controls.clone(),
            (new.number, self.resolver.clone()),
        );
        self.drain_delay_ms
            .store(new.config.server.drain_delay_ms, Ordering::SeqCst);
        self.running = new.config.clone();
        self.tls = new.tls.clone();
        let new = Arc::new(new);
        for c in &self.controls {
            let _ = c.send(Control::Reload(new.clone()));
        }
    }
}

/// The reload's note on `env:` keys, when the config has any: a process's environment is
/// fixed at its start, so a reload reads the same values again, and a rotated `env:` key
/// needs a restart (or a `file:` key, which a reload reads anew). Names the providers and
/// tenants and their variables, never a value.
fn env_keys_line(config: &Config) -> Option<String> {
    let env = |source: &str| source.strip_prefix("env:").map(str::to_string);
    let providers = config
        .providers
        .iter()
        .filter_map(|p| env(&p.api_key).map(|v| format!("provider {} ({v})", p.name)));
    let tenants = config.tenants.iter().flat_map(|t| {
        t.keys
            .iter()
            .filter_map(|k| env(k).map(|v| format!("tenant {} ({v})", t.name)))
    });
    let named: Vec<String> = providers.chain(tenants).collect();
    (!named.is_empty()).then(|| {
        format!(
            "reload: env: keys keep the value the process started with (a new value needs a \
             restart; file: keys are read again): {}",
            named.join(", ")
        )
    })
}

/// A setting by its key, with how to read it from a config (as text, to compare).
type Setting = (&'static str, fn(&Config) -> String);

/// The settings a reload cannot change.
fn restart_only() -> Vec<Setting> {
    vec![
        ("server.listen", |c| c.server.listen.clone()),
        ("server.tls_listen", |c| c.server.tls_listen.clone()),
        ("server.cores", |c| c.server.cores.clone()),
        ("server.backlog", |c| c.server.backlog.to_string()),
        ("server.max_connections_per_shard", |c| {
            c.server.max_connections_per_shard.to_string()
        }),
        ("server.allow_shared_listen", |c| {
            c.server.allow_shared_listen.to_string()
        }),
        ("server.tls (on or off)", |c| {
            c.server.tls.is_some().to_string()
        }),
        ("admin", |c| format!("{:?}", c.admin)),
        ("mock", |c| format!("{:?}", c.mock)),
        ("stats.interval_ms", |c| c.stats.interval_ms.to_string()),
        ("access_log", |c| format!("{:?}", c.access_log)),
        ("usage.export", |c| c.usage.export.clone()),
        // The fleet-usage writer holds the Redis target and password it started with.
        ("limits", |c| format!("{:?}", c.limits)),
    ]
}

/// The restart-only settings that differ between `running` and `new`.
pub fn restart_only_changes(running: &Config, new: &Config) -> Vec<String> {
    restart_only()
        .into_iter()
        .filter(|(_, get)| get(running) != get(new))
        .map(|(key, _)| key.to_string())
        .collect()
}

/// Gives `new` the running values of the restart-only settings, so that what the shards
/// get describes what they really serve. (`restart_only_changes` is computed before.)
fn keep_restart_only(new: &mut Config, running: &Config) {
    let s = &running.server;
    new.server.listen = s.listen.clone();
    new.server.tls_listen = s.tls_listen.clone();
    new.server.cores = s.cores.clone();
    new.server.backlog = s.backlog;
    new.server.max_connections_per_shard = s.max_connections_per_shard;
    new.server.allow_shared_listen = s.allow_shared_listen;
    if s.tls.is_none() {
        new.server.tls = None;
    } else if new.server.tls.is_none() {
        new.server.tls = s.tls.clone();
    }
    new.admin = running.admin.clone();
    new.mock = running.mock.clone();
    new.stats = running.stats.clone();
    new.access_log = running.access_log.clone();
    new.usage = running.usage.clone();
    new.limits = running.limits.clone();
}
