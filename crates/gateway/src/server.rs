//! Process orchestration for `coregate serve`: raise limits, start the aggregator, the admin
//! listener, the embedded mock provider and one shard per core; reload on SIGHUP; drain on
//! SIGTERM/SIGINT.
//!
//! This is the only code that sees every shard, and it only starts, signals and joins them.

use crate::config::Config;
use crate::drain::{spawn_signal_thread, Drainer};
use crate::generation::NewConfig;
use crate::reload::{ConfigSource, Reloader, StatSlots};
use crate::route::RouteConfig;
use crate::shard::{Control, ShardExit, ShardSpec};
use crate::stats::aggregate::{Aggregator, Query};
use crate::upstream::ProviderConfig;
use coregate_runtime::host::raise_nofile_limit;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How much longer than its predecessor's drain timeout a successor waits for the
/// addresses and admin listener that predecessor holds.
const HANDOVER_MARGIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the gateway until a signal (or a successor, see [`crate::takeover`]) drains it.
/// With `takeover`, it starts beside a coregate serving the same addresses and, once
/// serving, has it drain. Returns an error message for start-up failures (bad config, bad
/// core list, port in use, executor failure).
pub fn serve(source: ConfigSource, takeover: bool) -> Result<(), String> {
    let mut config = source.load()?;
    let nofile = raise_nofile_limit();
    let cores = coregate_runtime::cores::parse_core_list(
        &config.server.cores,
        &coregate_runtime::cores::online_cores(),
    )
    .map_err(|e| format!("server.cores: {e}"))?;
    let mock = match config.wants_embedded_mock() {
        true => {
            let core = config.mock.core.or(cores.first().copied());
            embed_mock(&mut config, core)?;
            Some(config.mock.listen.clone())
        }
        false => None,
    };
    // Held until the process exits (or a successor takes over).
    let (claims, held) = crate::takeover::claim(&config, takeover)?;
    // How long a successor waits for what its predecessor holds until it drains.
    let handover =
        std::time::Duration::from_millis(config.server.drain_timeout_ms) + HANDOVER_MARGIN;
    crate::budget::fit_default_pools(&mut config, cores.len(), nofile);
    let max_connections = crate::budget::connection_cap(&config, cores.len(), nofile)?;
    let tls = match &config.server.tls {
        Some(t) => Some(crate::tls::load(t).map_err(|(key, m)| format!("{key}: {m}"))?),
        None => None,
    };
    let addresses = crate::resolver::resolve_all(&config.providers)
        .map_err(|(key, m)| format!("{key}: {m}"))?;
    for w in crate::doctor::startup_warnings(&config) {
        coregate_runtime::log::warn(&w);
    }
    for p in config
        .providers
        .iter()
        .filter(|p| !p.tls_verify && p.uses_tls())
    {
        coregate_runtime::log::warn(&format!(
            "provider {}: tls_verify = false: its certificate is not checked; anyone on the \
             path can read and change its traffic (for tests only)",
            p.name
        ));
    }

    let mut slots = StatSlots::default();
    let provider_slots = slots.assign(&config.providers);
    let provider_names = slots.names().to_vec();
    let (snap_tx, snap_rx) = bounded(1024 * cores.len());
    let (query_tx, query_rx) = unbounded();
    let drain_notice = query_tx.clone();
    let shard_count = cores.len();
    let stats_interval = std::time::Duration::from_millis(config.stats.interval_ms);
    std::thread::Builder::new()
        .name("coregate-stats".into())
        .spawn(move || {
            Aggregator::new(provider_names, stats_interval, shard_count).run(snap_rx, query_rx)
        })
        .map_err(|e| format!("cannot start the stats thread: {e}"))?;
    let admin_stop = Arc::new(AtomicBool::new(false));
    let admin_handle = Arc::new(Mutex::new(None));
    if !config.admin.listen.is_empty() {
        let wait = (!held.is_empty()).then_some(handover);
        let shared = (admin_stop.clone(), admin_handle.clone());
        start_admin(&config.admin, wait, query_tx, shared)?;
    }

    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let access_log = match config.access_log.enabled() {
        true => Some(crate::access_log::start(
            &config.access_log.path,
            "access_log.path",
        )?),
        false => None,
    };
    let usage_export = match config.usage.export.is_empty() {
        false => Some(crate::access_log::start(
            &config.usage.export,
            "usage.export",
        )?),
        true => None,
    };
    let (ready_tx, ready_rx) = unbounded();
    let (exit_tx, exit_rx) = unbounded();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut threads = Vec::new();
    let first = Arc::new(NewConfig {
        number: 1,
        config: config.clone(),
        addresses: addresses.clone(),
        client_tls: crate::upstream::providers::client_tls(&config.providers)?,
        tls: tls.clone(),
        slot_count: provider_slots.len(),
        slots: provider_slots,
    });
    for (id, &core) in cores.iter().enumerate() {
        let (ctl_tx, ctl_rx) = unbounded();
        controls.push(ctl_tx);
        let spec = ShardSpec {
            id,
            core,
            config: first.clone(),
            max_connections,
            snapshots: snap_tx.clone(),
            control: ctl_rx,
            ready: ready_tx.clone(),
            exited: exit_tx.clone(),
            access_log: access_log.as_ref().map(|w| w.lines.clone()),
            usage_export: usage_export.as_ref().map(|w| w.lines.clone()),
            shard_count: cores.len(),
        };
        threads
            .push(crate::shard::spawn(spec).map_err(|e| format!("cannot start shard {id}: {e}"))?);
    }
    drop(snap_tx);
    drop(ready_tx);
    drop(exit_tx);
    for _ in 0..cores.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop_all(&controls);
                return Err(e);
            }
            Err(_) => {
                stop_all(&controls);
                return Err("a shard exited during start-up".into());
            }
        }
    }
    let _ = drain_notice.send(Query::ShardControls(controls.clone()));
    let _ = drain_notice.send(Query::Tenants(crate::tenants::budget::of_config(&config)));
    if config.limits.backend == crate::tenants::redis::Backend::Redis {
        let fleet = crate::config::parse_addr(&config.limits.redis)
            .ok()
            .and_then(crate::stats::fleet::start);
        if let Some(tx) = fleet {
            let _ = drain_notice.send(Query::FleetUsage(tx));
        }
    }
    let resolver = Arc::new(AtomicU64::new(1));
    crate::resolver::spawn(
        &config.providers,
        &addresses,
        controls.clone(),
        (1, resolver.clone()),
    )
    .map_err(|e| format!("cannot start the resolver thread: {e}"))?;
    crate::upstream::active::spawn(&config.providers, controls.clone(), (1, resolver.clone()));
    coregate_runtime::log::info(&format!(
        "serving on {} with {} shard(s) on cores {cores:?}, up to {max_connections} \
         connections per shard; admin on {}",
        serving_on(&config),
        cores.len(),
        if config.admin.listen.is_empty() {
            "(disabled)"
        } else {
            &config.admin.listen
        },
    ));

    let mut drainer = Drainer::new(controls.clone(), drain_notice.clone());
    drainer.admin_stop = admin_stop;
    drainer.admin = admin_handle;
    drainer
        .delay_ms
        .store(config.server.drain_delay_ms, Ordering::SeqCst);
    let reloader = Reloader {
        source,
        running: config,
        generation: 1,
        slots,
        tls,
        mock,
        shard_count: cores.len(),
        nofile,
        connection_cap: max_connections,
        controls: controls.clone(),
        queries: drain_notice.clone(),
        resolver,
        drain_delay_ms: drainer.delay_ms.clone(),
    };
    let reopen: Vec<_> = access_log
        .into_iter()
        .chain(usage_export)
        .map(|w| w.control)
        .collect();
    spawn_signal_thread(signals, reloader, drainer.clone(), reopen)?;
    let successor = drainer.clone();
    let on_drain = move || successor.start("a new coregate took over the addresses", true);
    if !held.is_empty() {
        let migrate = crate::doctor::migrate_req_check();
        if migrate.level != crate::doctor::Level::Ok {
            coregate_runtime::log::warn(&format!("takeover: {}", migrate.message));
        }
        let pids = crate::takeover::ask_to_drain(&held);
        coregate_runtime::log::info(&format!(
            "takeover: coregate {pids:?} drains now; this process serves its addresses"
        ));
        crate::takeover::claim_when_free(held, handover, on_drain.clone());
    }
    crate::takeover::serve_claims(claims, on_drain);

    wait_for_shards(threads, &exit_rx, &drainer.started)?;
    coregate_runtime::log::info("drained; exiting");
    Ok(())
}

/// Waits until every shard has ended after a drain. A shard that panics, or ends while no
/// drain was asked for, fails the process at once: returning the error ends `main` with a
/// non-zero status while the other shards still run, so a supervisor restarts the whole
/// process instead of leaving it up with a core's share of connections unanswered (its
/// SO_REUSEPORT listener would be gone, but one that merely stopped would still queue).
fn wait_for_shards(
    threads: Vec<std::thread::JoinHandle<()>>,
    exits: &Receiver<ShardExit>,
    draining: &AtomicBool,
) -> Result<(), String> {
    for _ in 0..threads.len() {
        let Ok(exit) = exits.recv() else { break };
        if exit.panicked {
            return Err(format!(
                "shard {} panicked; exiting so that a supervisor restarts coregate",
                exit.id
            ));
        }
        if !draining.load(Ordering::SeqCst) {
            return Err(format!(
                "shard {} ended without a drain; exiting so that a supervisor restarts coregate",
                exit.id
            ));
        }
    }
    for t in threads {
        if t.join().is_err() {
            return Err("a shard thread panicked".into());
        }
    }
    Ok(())
}

/// The admin listener's thread. With `wait` (a takeover), the address may still be its
/// predecessor's for a moment: it is bound as soon as it is free.
fn start_admin(
    admin: &crate::config::AdminConfig,
    wait: Option<std::time::Duration>,
    queries: Sender<Query>,
    (stop, handle): (Arc<AtomicBool>, Arc<Mutex<Option<std::net::TcpListener>>>),
) -> Result<(), String> {
    let listener = match wait {
        None => Some(crate::admin::bind(&admin.listen)?),
        Some(_) => None,
    };
    let addr = admin.listen.clone();
    let token = admin.token_digest;
    std::thread::Builder::new()
        .name("coregate-admin".into())
        .spawn(move || {
            let listener = match (listener, wait) {
                (Some(l), _) => l,
                (None, wait) => {
                    match crate::admin::bind_when_free(&addr, wait.unwrap_or_default()) {
                        Ok(l) => l,
                        Err(e) => return coregate_runtime::log::error(&format!("takeover: {e}")),
                    }
                }
            };
            if let (Ok(mut h), Ok(dup)) = (handle.lock(), listener.try_clone()) {
                *h = Some(dup);
            }
            crate::admin::serve(listener, queries, stop, token)
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the admin thread: {e}"))
}

/// The data-plane listeners, for the start-up line.
fn serving_on(config: &Config) -> String {
    let s = &config.server;
    match (s.listen.is_empty(), s.tls_listen.is_empty()) {
        (false, true) => format!("http://{}", s.listen),
        (true, false) => format!("https://{}", s.tls_listen),
        _ => format!("http://{} and https://{}", s.listen, s.tls_listen),
    }
}

fn stop_all(controls: &[Sender<Control>]) {
    for c in controls {
        let _ = c.try_send(Control::Drain);
    }
}

/// Adds the embedded mock provider to `config` (provider `mock`, route `/v1/mock/` → `/`)
/// and starts it.
fn embed_mock(config: &mut Config, core: Option<usize>) -> Result<(), String> {
    let listen = config.mock.listen.clone();
    add_mock_route(config, &listen);
    config
        .validate("<embedded mock>")
        .map_err(|e| e.to_string())?;
    coregate_mock::start_embedded(&listen, core)
}

/// The embedded mock's provider (`mock`, at `listen`) and route (`/v1/mock/` → `/`),
/// unless the config has its own provider of that name.
pub(crate) fn add_mock_route(config: &mut Config, listen: &str) {
    if config.providers.iter().any(|p| p.name == "mock") {
        return;
    }
    config.providers.push(ProviderConfig {
        name: "mock".into(),
        endpoints: vec![listen.to_string()],
        ..ProviderConfig::default()
    });
    config.routes.push(RouteConfig {
        prefix: "/v1/mock/".into(),
        provider: "mock".into(),
        rewrite: Some("/".into()),
        ..RouteConfig::default()
    });
}
