//! The client's own limits, checked before a run: how many connections its file
//! descriptors and ephemeral ports allow, so a run can say up front what caps it — and
//! so a client limit is never reported as the server's breaking point.

use super::options::LoadConfig;
use serde::Serialize;
use std::collections::BTreeSet;

/// Descriptors the generator needs besides its connections (stdio, io_uring rings,
/// artifact files, /proc reads), plus a few per shard.
const FD_RESERVE: u64 = 48;
const FD_RESERVE_PER_SHARD: u64 = 8;

#[derive(Debug, Clone, Serialize)]
pub struct ClientCaps {
    /// RLIMIT_NOFILE after raising the soft limit to the hard one.
    pub nofile: u64,
    /// Connections the descriptors allow.
    pub fd_cap: u64,
    pub port_range: (u32, u32),
    /// Distinct (source address, destination) pairs; each has the whole port range.
    pub port_pairs: u64,
    /// Connections the ephemeral ports allow.
    pub port_cap: u64,
    /// min(fd_cap, port_cap).
    pub client_cap: u64,
    /// Which of the two is smaller: "RLIMIT_NOFILE" or "ephemeral ports".
    pub binding: &'static str,
}

/// The ephemeral port range (the kernel's default when it cannot be read).
pub fn port_range() -> (u32, u32) {
    coregate_runtime::host::port_range().unwrap_or((32768, 60999))
}

pub fn client_caps(cfg: &LoadConfig, nofile: u64) -> ClientCaps {
    let fd_cap = nofile.saturating_sub(FD_RESERVE + FD_RESERVE_PER_SHARD * cfg.cores.len() as u64);
    let (lo, hi) = port_range();
    let ports = u64::from(hi.saturating_sub(lo)) + 1;
    let destinations: BTreeSet<_> = cfg.targets.iter().map(|t| t.addr).collect();
    let sources = cfg.sources.len().max(1) as u64;
    let port_pairs = sources * destinations.len().max(1) as u64;
    let port_cap = ports * port_pairs;
    let (client_cap, binding) = if fd_cap <= port_cap {
        (fd_cap, "RLIMIT_NOFILE")
    } else {
        (port_cap, "ephemeral ports")
    };
    ClientCaps {
        nofile,
        fd_cap,
        port_range: (lo, hi),
        port_pairs,
        port_cap,
        client_cap,
        binding,
    }
}

/// Lines printed before the run: what the client can hold, and whether `peak_vus` fits.
pub fn describe(caps: &ClientCaps, peak_vus: usize, sources_given: bool) -> Vec<String> {
    let mut out = vec![format!(
        "client limits: RLIMIT_NOFILE {} allows {} connections; ports {}-{} x {} \
         (source, destination) pair(s) allow {}",
        caps.nofile,
        caps.fd_cap,
        caps.port_range.0,
        caps.port_range.1,
        caps.port_pairs,
        caps.port_cap
    )];
    if peak_vus as u64 > caps.client_cap {
        let fix = if caps.binding == "RLIMIT_NOFILE" {
            "raise the hard limit (`ulimit -Hn`, LimitNOFILE=) or run more generator processes"
        } else if sources_given {
            "add source addresses to --source"
        } else {
            "spread connections over source addresses with --source 127.0.0.2-127.0.0.60"
        };
        out.push(format!(
            "warning: this run asks for up to {peak_vus} VUs but the client can hold {} \
             ({} is the limit). Steps above that measure the client, not the server; \
             their failures are reported as client limits. To go further: {fix}",
            caps.client_cap, caps.binding
        ));
    } else {
        out.push(format!(
            "this run asks for up to {peak_vus} VUs: within the client's limits (cap {}, set by {})",
            caps.client_cap, caps.binding
        ));
    }
    out
}
