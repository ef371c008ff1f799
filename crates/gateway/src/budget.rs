//! How many client connections each shard may hold: what the fd limit leaves after a
//! reserve and the provider pools. `serve` applies it; `doctor` and the checks report it.

use crate::config::Config;
use crate::upstream::DEFAULT_POOL_MAX_TOTAL;

/// File descriptors kept back from the connection caps: executors' rings and eventfds,
/// listeners, the admin socket, logs.
const FD_RESERVE_BASE: u64 = 64;
const FD_RESERVE_PER_SHARD: u64 = 16;

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
    fds_per_shard(shards, nofile).saturating_sub(upstream_fds_per_shard(config))
}

/// The descriptors each shard has for client and provider connections: `nofile` after
/// the reserve, split evenly over the shards.
fn fds_per_shard(shards: usize, nofile: u64) -> u64 {
    let shards = shards.max(1) as u64;
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * shards;
    nofile.saturating_sub(reserve) / shards
}

/// Shrinks the pools of providers that kept the default `pool_max_total` when, at that
/// size, they would take more than half of what RLIMIT_NOFILE leaves each shard (the
/// default is sized for a raised limit; under `ulimit -n 1024` it took every descriptor and
/// `serve --upstream` could not start). Says so in the log; a value set in the config is
/// left as it is.
pub fn fit_default_pools(config: &mut Config, shards: usize, nofile: u64) {
    let per_shard = fds_per_shard(shards, nofile);
    let defaults: u64 = config
        .providers
        .iter()
        .filter(|p| p.pool_max_total == DEFAULT_POOL_MAX_TOTAL)
        .map(|p| p.endpoints.len() as u64)
        .sum();
    if defaults == 0 || upstream_fds_per_shard(config) <= per_shard / 2 {
        return;
    }
    let share = ((per_shard / 2) / defaults).max(1) as usize;
    for p in config
        .providers
        .iter_mut()
        .filter(|p| p.pool_max_total == DEFAULT_POOL_MAX_TOTAL)
    {
        p.pool_max_total = share;
        coregate_runtime::log::warn(&format!(
            "provider {}: pool_max_total lowered from its default {DEFAULT_POOL_MAX_TOTAL} to \
             {share} per endpoint per shard to fit RLIMIT_NOFILE = {nofile}; set it in the \
             config (or raise `ulimit -n`) to choose",
            p.name
        ));
    }
}

/// The per-shard client connection cap: the configured value, or [`per_shard_fit`].
pub fn connection_cap(config: &Config, shards: usize, nofile: u64) -> Result<usize, String> {
    let upstream = upstream_fds_per_shard(config);
    let fit = per_shard_fit(config, shards, nofile);
    if config.server.max_connections_per_shard > 0 {
        let want = u64::from(config.server.max_connections_per_shard);
        if want > fit {
            coregate_runtime::log::warn(&format!(
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
