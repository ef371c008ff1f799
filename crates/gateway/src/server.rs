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
    let start = prepare(&source, takeover)?;
    let mut slots = StatSlots::default();
    let provider_slots = slots.assign(&start.config.providers);
    let (snap_tx, snap_rx) = bounded(1024 * start.cores.len());
    let (query_tx, query_rx) = unbounded();
    start_stats(&start, slots.names().to_vec(), snap_rx, query_rx)?;
    let admin = AdminShared::default();
    if !start.config.admin.listen.is_empty() {
        let wait = (!start.held.is_empty()).then_some(start.handover);
        start_admin(&start.config.admin, wait, query_tx.clone(), admin.clone())?;
    }
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let logs = Logs::open(&start.config)?;
    let first = Arc::new(NewConfig {
        number: 1,
        config: start.config.clone(),
        addresses: start.addresses.clone(),
        client_tls: crate::upstream::providers::client_tls(&start.config.providers)?,
        tls: start.tls.clone(),
        slot_count: provider_slots.len(),
        slots: provider_slots,
    });
    let shards = start_shards(&start, first, snap_tx, &logs)?;
    let resolver = start_helpers(&start, &shards.controls, &query_tx)?;
    log_serving(&start);

    let mut drainer = Drainer::new(shards.controls.clone(), query_tx.clone());
    (drainer.admin_stop, drainer.admin) = admin;
    drainer
        .delay_ms
        .store(start.config.server.drain_delay_ms, Ordering::SeqCst);
    let reloader = Reloader {
        source,
        running: start.config,
        generation: 1,
        slots,
        tls: start.tls,
        mock: start.mock,
        shard_count: start.cores.len(),
        nofile: start.nofile,
        connection_cap: start.max_connections,
        controls: shards.controls.clone(),
        queries: query_tx,
        resolver,
        drain_delay_ms: drainer.delay_ms.clone(),
    };
    spawn_signal_thread(signals, reloader, drainer.clone(), logs.reopeners())?;
    take_over(start.claims, start.held, start.handover, &drainer);
    wait_for_shards(shards.threads, &shards.exits, &drainer.started)?;
    coregate_runtime::log::info("drained; exiting");
    Ok(())
}

/// What start-up settles before any thread starts.
struct Start {
    /// The config, with the embedded mock's route and pools fitted to the fd limit.
    config: Config,
    nofile: u64,
    cores: Vec<usize>,
    /// Where the embedded mock provider listens, when it runs.
    mock: Option<String>,
    /// This process's claims on the data-plane addresses, and those a predecessor holds.
    claims: Vec<std::os::unix::net::UnixListener>,
    held: Vec<String>,
    /// How long a successor waits for what its predecessor holds until it drains.
    handover: std::time::Duration,
    max_connections: usize,
    tls: Option<coregate_runtime::tls::ServerCerts>,
    addresses: crate::resolver::Addresses,
}

/// Loads and checks everything the shards will need: config, limits, cores, the embedded
/// mock, the address claims, certificates and provider addresses; logs the warnings.
fn prepare(source: &ConfigSource, takeover: bool) -> Result<Start, String> {
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
    log_startup_warnings(&config);
    Ok(Start {
        config,
        nofile,
        cores,
        mock,
        claims,
        held,
        handover,
        max_connections,
        tls,
        addresses,
    })
}

fn log_startup_warnings(config: &Config) {
    for w in crate::doctor::startup_warnings(config) {
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
}

/// Starts the aggregator's thread.
fn start_stats(
    start: &Start,
    provider_names: Vec<String>,
    snapshots: Receiver<crate::stats::Snapshot>,
    queries: Receiver<Query>,
) -> Result<(), String> {
    let shard_count = start.cores.len();
    let interval = std::time::Duration::from_millis(start.config.stats.interval_ms);
    std::thread::Builder::new()
        .name("coregate-stats".into())
        .spawn(move || {
            Aggregator::new(provider_names, interval, shard_count).run(snapshots, queries)
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the stats thread: {e}"))
}

/// The access log and the usage export writers, those the config asks for.
struct Logs {
    access: Option<crate::access_log::Writer>,
    usage: Option<crate::access_log::Writer>,
}

impl Logs {
    fn open(config: &Config) -> Result<Logs, String> {
        let start = |path: &str, key: &str| match path.is_empty() {
            true => Ok(None),
            false => crate::access_log::start(path, key).map(Some),
        };
        let access = start(&config.access_log.path, "access_log.path")?;
        let usage = start(&config.usage.export, "usage.export")?;
        Ok(Logs { access, usage })
    }

    /// Where SIGUSR1's "reopen" goes.
    fn reopeners(&self) -> Vec<Sender<crate::access_log::Message>> {
        self.access
            .iter()
            .chain(&self.usage)
            .map(|w| w.control.clone())
            .collect()
    }
}

/// The running shards, as the main thread holds them.
struct Shards {
    controls: Vec<Sender<Control>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    exits: Receiver<ShardExit>,
}

/// Starts one shard per core and waits until each has bound its listeners (or stops them
/// all and fails with the first error).
fn start_shards(
    start: &Start,
    first: Arc<NewConfig>,
    snapshots: Sender<crate::stats::Snapshot>,
    logs: &Logs,
) -> Result<Shards, String> {
    let (ready_tx, ready_rx) = unbounded();
    let (exit_tx, exits) = unbounded();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut threads = Vec::new();
    for (id, &core) in start.cores.iter().enumerate() {
        let (ctl_tx, ctl_rx) = unbounded();
        controls.push(ctl_tx);
        let spec = ShardSpec {
            id,
            core,
            config: first.clone(),
            max_connections: start.max_connections,
            snapshots: snapshots.clone(),
            control: ctl_rx,
            ready: ready_tx.clone(),
            exited: exit_tx.clone(),
            access_log: logs.access.as_ref().map(|w| w.lines.clone()),
            usage_export: logs.usage.as_ref().map(|w| w.lines.clone()),
            shard_count: start.cores.len(),
        };
        threads
            .push(crate::shard::spawn(spec).map_err(|e| format!("cannot start shard {id}: {e}"))?);
    }
    drop(ready_tx);
    for _ in 0..start.cores.len() {
        let failed = match ready_rx.recv() {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => "a shard exited during start-up".into(),
        };
        stop_all(&controls);
        return Err(failed);
    }
    Ok(Shards {
        controls,
        threads,
        exits,
    })
}

/// Tells the aggregator about the shards and tenants, and starts the threads that feed the
/// shards: the fleet usage writer (Redis limits), the resolver and the active health
/// checks. Returns the resolver's generation, which a reload advances.
fn start_helpers(
    start: &Start,
    controls: &[Sender<Control>],
    queries: &Sender<Query>,
) -> Result<Arc<AtomicU64>, String> {
    let config = &start.config;
    let _ = queries.send(Query::ShardControls(controls.to_vec()));
    let _ = queries.send(Query::Tenants(1, crate::tenants::for_aggregator(config)));
    if config.limits.backend == crate::tenants::redis::Backend::Redis {
        let fleet = crate::tenants::redis_target::RedisTarget::of(&config.limits)
            .and_then(crate::stats::fleet::start);
        if let Some(tx) = fleet {
            let _ = queries.send(Query::FleetUsage(tx));
        }
    }
    let resolver = Arc::new(AtomicU64::new(1));
    crate::resolver::spawn(
        &config.providers,
        &start.addresses,
        controls.to_vec(),
        (1, resolver.clone()),
    )
    .map_err(|e| format!("cannot start the resolver thread: {e}"))?;
    crate::upstream::active::spawn(&config.providers, controls.to_vec(), (1, resolver.clone()));
    Ok(resolver)
}

fn log_serving(start: &Start) {
    let config = &start.config;
    coregate_runtime::log::info(&format!(
        "serving on {} with {} shard(s) on cores {:?}, up to {} connections per shard; \
         admin on {}",
        serving_on(config),
        start.cores.len(),
        start.cores,
        start.max_connections,
        if config.admin.listen.is_empty() {
            "(disabled)"
        } else {
            &config.admin.listen
        },
    ));
}

/// Answers a successor's takeover request from now on, and, when a predecessor holds the
/// addresses (`serve --takeover`), asks it to drain and takes its claims once freed.
fn take_over(
    claims: Vec<std::os::unix::net::UnixListener>,
    held: Vec<String>,
    handover: std::time::Duration,
    drainer: &Drainer,
) {
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

/// What the admin thread shares with the drain: the flag that stops it and a handle on its
/// listener (both for a successor that takes the admin address over).
type AdminShared = (Arc<AtomicBool>, Arc<Mutex<Option<std::net::TcpListener>>>);

/// The admin listener's thread. With `wait` (a takeover), the address may still be its
/// predecessor's for a moment: it is bound as soon as it is free.
fn start_admin(
    admin: &crate::config::AdminConfig,
    wait: Option<std::time::Duration>,
    queries: Sender<Query>,
    (stop, handle): AdminShared,
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
