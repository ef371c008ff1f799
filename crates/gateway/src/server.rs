//! Process orchestration for `coregate serve`: raise limits, start the aggregator, the admin
//! listener, the embedded mock provider and one shard per core; reload on SIGHUP; drain on
//! SIGTERM/SIGINT.
//!
//! This is the only code that sees every shard, and it only starts, signals and joins them.

use crate::config::Config;
use crate::generation::NewConfig;
use crate::reload::{ConfigSource, Reloader, StatSlots};
use crate::route::RouteConfig;
use crate::shard::{Control, ShardExit, ShardSpec};
use crate::stats::aggregate::Aggregator;
use crate::upstream::ProviderConfig;
use coregate_runtime::host::raise_nofile_limit;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Runs the gateway until a signal drains it. Returns an error message for start-up
/// failures (bad config, bad core list, port in use, executor failure).
pub fn serve(source: ConfigSource) -> Result<(), String> {
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
    // Held until the process exits: the kernel releases them with it.
    let _claims = claim_listen_addresses(&config)?;
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
    if !config.admin.listen.is_empty() {
        let listener = crate::admin::bind(&config.admin.listen)?;
        std::thread::Builder::new()
            .name("coregate-admin".into())
            .spawn(move || crate::admin::serve(listener, query_tx))
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    }

    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let (ready_tx, ready_rx) = unbounded();
    let (exit_tx, exit_rx) = unbounded();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut threads = Vec::new();
    let first = Arc::new(NewConfig {
        number: 1,
        config: config.clone(),
        addresses: addresses.clone(),
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
    let resolver = Arc::new(AtomicU64::new(1));
    crate::resolver::spawn(
        &config.providers,
        &addresses,
        controls.clone(),
        (1, resolver.clone()),
    )
    .map_err(|e| format!("cannot start the resolver thread: {e}"))?;
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

    let draining = Arc::new(AtomicBool::new(false));
    let drain_flag = draining.clone();
    let mut reloader = Reloader {
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
    };
    std::thread::Builder::new()
        .name("coregate-signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    // Reloads stop once the drain began: the shards are on their way out.
                    match drain_flag.load(Ordering::SeqCst) {
                        false => reloader.reload(),
                        true => coregate_runtime::log::warn("SIGHUP while draining: ignored"),
                    }
                    continue;
                }
                stops += 1;
                if stops == 1 {
                    coregate_runtime::log::info(&format!("signal {sig}: draining"));
                    drain_flag.store(true, Ordering::SeqCst);
                    let _ = drain_notice.send(crate::stats::aggregate::Query::Draining);
                    stop_all(&controls);
                } else {
                    coregate_runtime::log::warn(
                        "second signal: exiting without waiting for the drain",
                    );
                    // The operator asked twice: leave now, whatever the shards are doing.
                    #[allow(clippy::exit)]
                    std::process::exit(130);
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    wait_for_shards(threads, &exit_rx, &draining)?;
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

/// Claims each data-plane address for this process, so that a second coregate started on
/// the same address by mistake fails as nginx would (EADDRINUSE) instead of silently taking
/// half the connections: SO_REUSEPORT, which every shard needs, lets any process of the
/// same user bind the port again. The claim is an abstract Unix socket named after the
/// address: no file to clean up, released when the process dies, and scoped to the network
/// namespace like the address itself.
fn claim_listen_addresses(
    config: &Config,
) -> Result<Vec<std::os::unix::net::UnixListener>, String> {
    use std::os::linux::net::SocketAddrExt;
    let s = &config.server;
    if s.allow_shared_listen {
        return Ok(Vec::new());
    }
    let mut claims = Vec::new();
    for (key, addr) in [
        ("server.listen", &s.listen),
        ("server.tls_listen", &s.tls_listen),
    ] {
        if addr.is_empty() {
            continue;
        }
        // Keyed by the address as bound (`localhost:80` is `127.0.0.1:80`); a wildcard and
        // a specific address on one port are different keys, as they are to bind(2).
        let bound = crate::config::parse_addr(addr)?;
        let name = format!("coregate-listen {bound}");
        let claim = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| std::os::unix::net::UnixListener::bind_addr(&a));
        match claim {
            Ok(l) => claims.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "{key}: another coregate already serves {addr}; a second one would \
                     silently take part of its connections (SO_REUSEPORT). Stop it first, \
                     or set server.allow_shared_listen = true for a takeover"
                ))
            }
            Err(e) => coregate_runtime::log::warn(&format!(
                "cannot claim {addr} for this process ({e}); a second coregate on it would \
                 not be refused"
            )),
        }
    }
    Ok(claims)
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
