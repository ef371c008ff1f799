//! Process orchestration for `coregate serve`: raise limits, start the aggregator, the admin
//! listener, the embedded mock provider and one shard per core; drain on SIGTERM/SIGINT.
//!
//! This is the only code that sees every shard, and it only starts, signals and joins them.

use crate::config::Config;
use crate::shard::{Control, ShardSpec};
use crate::stats::aggregate::Aggregator;
use crossbeam_channel::{bounded, unbounded, Sender};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// File descriptors kept back from the connection caps: executors' rings and eventfds,
/// listeners, the admin socket, logs.
const FD_RESERVE_BASE: u64 = 64;
const FD_RESERVE_PER_SHARD: u64 = 16;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Provider connections one shard may open (all endpoints at their caps).
pub fn upstream_fds_per_shard(config: &Config) -> u64 {
    config
        .providers
        .iter()
        .map(|p| (p.endpoints.len() * p.pool_max_total) as u64)
        .sum()
}

/// Client connections per shard that `nofile` descriptors leave after the reserve and the
/// provider pools, split evenly over the shards.
pub fn per_shard_fit(config: &Config, shards: usize, nofile: u64) -> u64 {
    let shards = shards.max(1) as u64;
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * shards;
    (nofile.saturating_sub(reserve) / shards).saturating_sub(upstream_fds_per_shard(config))
}

/// The per-shard client connection cap: the configured value, or [`per_shard_fit`].
pub fn connection_cap(config: &Config, shards: usize, nofile: u64) -> Result<usize, String> {
    let upstream = upstream_fds_per_shard(config);
    let fit = per_shard_fit(config, shards, nofile);
    if config.server.max_connections_per_shard > 0 {
        let want = u64::from(config.server.max_connections_per_shard);
        if want > fit {
            crate::log::warn(&format!(
                "server.max_connections_per_shard = {want} needs more file descriptors than \
                 RLIMIT_NOFILE = {nofile} allows ({fit} per shard after {upstream} provider \
                 connections); the fd limit, not coregate, will refuse connections past that"
            ));
        }
        return Ok(want as usize);
    }
    if fit < 16 {
        return Err(format!(
            "RLIMIT_NOFILE = {nofile} leaves {fit} client connections per shard after the \
             provider pools ({upstream} per shard); raise `ulimit -n` or lower \
             providers[].pool_max_total"
        ));
    }
    Ok(fit as usize)
}

/// Runs the gateway until a signal drains it. Returns an error message for start-up
/// failures (bad core list, port in use, executor failure).
pub fn serve(mut config: Config) -> Result<(), String> {
    let nofile = raise_nofile_limit();
    let cores = crate::cores::parse_core_list(&config.server.cores, &crate::cores::online_cores())
        .map_err(|e| format!("server.cores: {e}"))?;
    if config.wants_embedded_mock() {
        crate::mock::embed(&mut config)?;
    }
    let max_connections = connection_cap(&config, cores.len(), nofile)?;
    for w in crate::doctor::startup_warnings(&config) {
        crate::log::warn(&w);
    }

    let provider_names = config.providers.iter().map(|p| p.name.clone()).collect();
    let (snap_tx, snap_rx) = bounded(1024 * cores.len());
    let (query_tx, query_rx) = unbounded();
    std::thread::Builder::new()
        .name("coregate-stats".into())
        .spawn(move || Aggregator::new(provider_names).run(snap_rx, query_rx))
        .map_err(|e| format!("cannot start the stats thread: {e}"))?;
    if !config.admin.listen.is_empty() {
        let listener = crate::admin::bind(&config.admin.listen)?;
        std::thread::Builder::new()
            .name("coregate-admin".into())
            .spawn(move || crate::admin::serve(listener, query_tx))
            .map_err(|e| format!("cannot start the admin thread: {e}"))?;
    }

    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let (ready_tx, ready_rx) = unbounded();
    let mut controls: Vec<Sender<Control>> = Vec::new();
    let mut threads = Vec::new();
    for (id, &core) in cores.iter().enumerate() {
        let (ctl_tx, ctl_rx) = bounded(4);
        controls.push(ctl_tx);
        let spec = ShardSpec {
            id,
            core,
            config: config.clone(),
            max_connections,
            snapshots: snap_tx.clone(),
            control: ctl_rx,
            ready: ready_tx.clone(),
        };
        threads
            .push(crate::shard::spawn(spec).map_err(|e| format!("cannot start shard {id}: {e}"))?);
    }
    drop(snap_tx);
    drop(ready_tx);
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
    crate::log::info(&format!(
        "serving on {} with {} shard(s) on cores {cores:?}, up to {max_connections} \
         connections per shard; admin on {}",
        config.server.listen,
        cores.len(),
        if config.admin.listen.is_empty() {
            "(disabled)"
        } else {
            &config.admin.listen
        },
    ));

    std::thread::Builder::new()
        .name("coregate-signals".into())
        .spawn(move || {
            let mut forever = signals.forever();
            if let Some(sig) = forever.next() {
                crate::log::info(&format!("signal {sig}: draining"));
                stop_all(&controls);
            }
            if forever.next().is_some() {
                crate::log::warn("second signal: exiting without waiting for the drain");
                std::process::exit(130);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;

    let mut failed = false;
    for t in threads {
        failed |= t.join().is_err();
    }
    if failed {
        return Err("a shard thread panicked".into());
    }
    crate::log::info("drained; exiting");
    Ok(())
}

fn stop_all(controls: &[Sender<Control>]) {
    for c in controls {
        let _ = c.try_send(Control::Drain);
    }
}
