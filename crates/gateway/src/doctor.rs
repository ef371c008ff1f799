//! `coregate doctor`: checks the host against what the config will ask of it.
//!
//! One line per check — ok / warn / fail — with the command that fixes each warning.
//! `serve` runs the same checks at start and logs the warnings.

use crate::config::Config;
use coregate_runtime::host::{is_root, port_range, read_trim, rlimit, IO_MEMORY_PER_SHARD};
use std::fmt;

/// glommio refuses to start below this RLIMIT_MEMLOCK.
const GLOMMIO_MIN_MEMLOCK: u64 = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct Check {
    pub level: Level,
    pub name: &'static str,
    pub message: String,
    /// The command that fixes a warning or failure.
    pub fix: Option<String>,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "fail",
        };
        write!(f, "{tag}  {:<14} {}", self.name, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

fn check(level: Level, name: &'static str, message: String, fix: Option<String>) -> Check {
    Check {
        level,
        name,
        message,
        fix,
    }
}

/// Runs every check for `config` on this host.
pub fn run_checks(config: &Config) -> Vec<Check> {
    let online = coregate_runtime::cores::online_cores();
    let cores = coregate_runtime::cores::parse_core_list(&config.server.cores, &online);
    let shards = cores.as_ref().map(|c| c.len()).unwrap_or(1).max(1);
    let mut out = vec![kernel_check(), io_uring_check(), socket_reads_check()];
    out.push(nofile_check(config, shards));
    out.push(memlock_check(shards));
    out.push(somaxconn_check(config));
    out.push(migrate_req_check());
    out.push(port_range_check(config, shards));
    out.push(listen_port_check(config));
    out.push(match &cores {
        Ok(c) => check(
            Level::Ok,
            "cores",
            format!("{} shard(s) on cores {c:?} (online: {online:?})", c.len()),
            None,
        ),
        Err(e) => check(
            Level::Fail,
            "cores",
            e.clone(),
            Some("pick cores from `nproc --all` / lscpu".into()),
        ),
    });
    if let Ok(c) = &cores {
        out.push(isolation_check(c));
        out.push(governor_check(c));
    }
    out
}

fn kernel_check() -> Check {
    let release = read_trim("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (5, 8) {
        check(
            Level::Ok,
            "kernel",
            format!("{release} (glommio needs >= 5.8)"),
            None,
        )
    } else {
        check(
            Level::Fail,
            "kernel",
            format!("{release}: glommio needs Linux >= 5.8"),
            Some("upgrade the kernel".into()),
        )
    }
}

fn io_uring_check() -> Check {
    let disabled =
        read_trim("/proc/sys/kernel/io_uring_disabled").and_then(|v| v.parse::<u32>().ok());
    let fix = Some("sysctl -w kernel.io_uring_disabled=0".to_string());
    match disabled {
        Some(2) => {
            return check(
                Level::Fail,
                "io_uring",
                "disabled (kernel.io_uring_disabled=2)".into(),
                fix,
            )
        }
        Some(1) if !is_root() => {
            return check(
                Level::Warn,
                "io_uring",
                "restricted to the io_uring_group (kernel.io_uring_disabled=1)".into(),
                fix,
            )
        }
        _ => {}
    }
    // Probe: set up (and close) a 1-entry ring.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads/writes a params struct of 120 bytes; we own the buffer.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return check(
            Level::Fail,
            "io_uring",
            format!("io_uring_setup failed: {e}"),
            fix,
        );
    }
    // SAFETY: fd is the ring descriptor just returned to us.
    unsafe { libc::close(fd as i32) };
    check(Level::Ok, "io_uring", "available".into(), None)
}

const SOCKET_READS: &str = "socket_reads";

/// Starts a short-lived executor, as a shard would, and reports its socket read path.
fn socket_reads_check() -> Check {
    use coregate_runtime::executor::{multishot_receives, pinned_executor, socket_reads};
    let probe = pinned_executor("doctor", None).map(|ex| ex.run(async { multishot_receives() }));
    match probe {
        Ok(true) => check(Level::Ok, SOCKET_READS, socket_reads(true).into(), None),
        Ok(false) if std::env::var_os("COREGATE_NO_MULTISHOT_RECV").is_some() => check(
            Level::Warn,
            SOCKET_READS,
            format!("{}: COREGATE_NO_MULTISHOT_RECV is set", socket_reads(false)),
            Some("unset COREGATE_NO_MULTISHOT_RECV".into()),
        ),
        Ok(false) => check(
            Level::Warn,
            SOCKET_READS,
            format!(
                "{}: no incremental provided-buffer rings in this kernel; each read costs \
                 a readiness poll, more CPU per request at thousands of connections",
                socket_reads(false)
            ),
            Some("Linux 6.12 or newer (IOU_PBUF_RING_INC)".into()),
        ),
        // The executor's own error ends in "run `coregate doctor`": this is the doctor,
        // and the io_uring and memlock lines say why it could not start.
        Err(_) => check(
            Level::Warn,
            SOCKET_READS,
            "not probed: an io_uring executor could not start (see io_uring, memlock)".into(),
            None,
        ),
    }
}

fn nofile_check(config: &Config, shards: usize) -> Check {
    let Some((soft, hard)) = rlimit(libc::RLIMIT_NOFILE) else {
        return check(
            Level::Warn,
            "nofile",
            "cannot read RLIMIT_NOFILE".into(),
            None,
        );
    };
    // serve raises the soft limit to the hard one.
    match crate::budget::connection_cap(config, shards, hard) {
        Ok(cap) => {
            let total = cap * shards;
            let fix = Some(format!(
                "raise the hard limit: LimitNOFILE=1048576 in the systemd unit (tuning/limits/), \
                 or `ulimit -Hn 1048576` as root before starting (now soft {soft}, hard {hard})"
            ));
            let configured = config.server.max_connections_per_shard as u64;
            let fit = crate::budget::per_shard_fit(config, shards, hard);
            if configured > fit {
                check(
                    Level::Warn,
                    "nofile",
                    format!("RLIMIT_NOFILE {hard} fits {fit} connections per shard, config asks {configured}"),
                    fix,
                )
            } else if total < 10_000 {
                check(
                    Level::Warn,
                    "nofile",
                    format!("RLIMIT_NOFILE {hard} limits the gateway to {total} client connections ({cap} per shard)"),
                    fix,
                )
            } else {
                check(
                    Level::Ok,
                    "nofile",
                    format!("hard {hard}: {total} client connections ({cap} per shard)"),
                    None,
                )
            }
        }
        Err(e) => check(
            Level::Fail,
            "nofile",
            e,
            Some("ulimit -n 65536 (or LimitNOFILE= in the unit)".into()),
        ),
    }
}

fn memlock_check(shards: usize) -> Check {
    let Some((soft, _)) = rlimit(libc::RLIMIT_MEMLOCK) else {
        return check(
            Level::Warn,
            "memlock",
            "cannot read RLIMIT_MEMLOCK".into(),
            None,
        );
    };
    let fix = Some(
        "LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited` (see tuning/limits/)"
            .to_string(),
    );
    let want = (shards * IO_MEMORY_PER_SHARD) as u64;
    let show = |v: u64| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    if soft < GLOMMIO_MIN_MEMLOCK {
        check(
            Level::Fail,
            "memlock",
            format!(
                "RLIMIT_MEMLOCK {}: glommio needs at least 512 KiB",
                show(soft)
            ),
            fix,
        )
    } else if soft < want && !is_root() {
        check(
            Level::Warn,
            "memlock",
            format!("RLIMIT_MEMLOCK {} < {} KiB for {shards} shard(s): io_uring buffer registration will be skipped", show(soft), want / 1024),
            fix,
        )
    } else {
        check(
            Level::Ok,
            "memlock",
            format!("{} (needs {} KiB)", show(soft), want / 1024),
            None,
        )
    }
}

fn somaxconn_check(config: &Config) -> Check {
    let Some(max) = read_trim("/proc/sys/net/core/somaxconn").and_then(|v| v.parse::<u64>().ok())
    else {
        return check(
            Level::Warn,
            "somaxconn",
            "cannot read net.core.somaxconn".into(),
            None,
        );
    };
    let backlog = u64::from(config.server.backlog);
    if max < backlog {
        check(
            Level::Warn,
            "somaxconn",
            format!("net.core.somaxconn {max} caps server.backlog {backlog}"),
            Some(format!("sysctl -w net.core.somaxconn={backlog}")),
        )
    } else {
        check(
            Level::Ok,
            "somaxconn",
            format!("{max} >= backlog {backlog}"),
            None,
        )
    }
}

/// Whether connections queued on a closing listener move to another listener on the same
/// address (Linux 5.14+): what a `serve --takeover` upgrade needs to lose none.
pub fn migrate_req_check() -> Check {
    migrate_req_verdict(read_trim("/proc/sys/net/ipv4/tcp_migrate_req").as_deref())
}

/// [`migrate_req_check`] for the sysctl's value (`None`: the kernel has no such key).
fn migrate_req_verdict(value: Option<&str>) -> Check {
    match value {
        Some("1") => check(Level::Ok, MIGRATE_REQ, "1".into(), None),
        Some(v) => check(
            Level::Warn,
            MIGRATE_REQ,
            format!(
                "net.ipv4.tcp_migrate_req is {v}: in an upgrade (serve --takeover), \
                 connections still queued on the old process's listeners when it drains \
                 are reset"
            ),
            Some(
                "sysctl -w net.ipv4.tcp_migrate_req=1 (tuning/'s production profiles set it)"
                    .into(),
            ),
        ),
        None => check(
            Level::Warn,
            MIGRATE_REQ,
            "no net.ipv4.tcp_migrate_req (kernel before 5.14): an upgrade may reset \
             connections queued on the old process's listeners"
                .into(),
            None,
        ),
    }
}

const MIGRATE_REQ: &str = "migrate_req";

fn port_range_check(config: &Config, shards: usize) -> Check {
    let Some((lo, hi)) = port_range().map(|(lo, hi)| (u64::from(lo), u64::from(hi))) else {
        return check(
            Level::Warn,
            "port_range",
            "cannot read net.ipv4.ip_local_port_range".into(),
            None,
        );
    };
    let ports = hi.saturating_sub(lo) + 1;
    let worst = config
        .providers
        .iter()
        .map(|p| (p.name.as_str(), (p.pool_max_total * shards) as u64))
        .max_by_key(|(_, n)| *n);
    match worst {
        Some((name, need)) if need > ports => check(
            Level::Warn,
            "port_range",
            format!(
                "{ports} local ports < {need} connections provider {name:?} may open per endpoint"
            ),
            Some(
                "sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (or lower pool_max_total)"
                    .to_string(),
            ),
        ),
        Some((_, need)) => check(
            Level::Ok,
            "port_range",
            format!("{lo}-{hi} ({ports} ports) >= {need} per endpoint"),
            None,
        ),
        None => check(
            Level::Ok,
            "port_range",
            format!("{lo}-{hi} ({ports} ports)"),
            None,
        ),
    }
}

fn isolation_check(cores: &[usize]) -> Check {
    let isolated = read_trim("/sys/devices/system/cpu/isolated").unwrap_or_default();
    let set = coregate_runtime::cores::parse_core_list(&isolated, &(0..4096).collect::<Vec<_>>())
        .unwrap_or_default();
    let not: Vec<usize> = cores.iter().copied().filter(|c| !set.contains(c)).collect();
    let message = if set.is_empty() {
        "no core is isolated (isolcpus or a cpuset): other tasks may share the shards' cores, \
         fine unless latency-critical (docs/tuning.md)"
            .to_string()
    } else if not.is_empty() {
        format!("the shards' cores {cores:?} are isolated")
    } else {
        format!(
            "cores {not:?} of the shards are not isolated (isolated: {isolated}); other tasks \
             may run there"
        )
    };
    check(Level::Ok, "isolation", message, None)
}

/// Listen ports inside the ephemeral range can be taken by any outgoing connection first
/// (the high-concurrency tuning profile widens that range over the usual service ports).
fn listen_port_check(config: &Config) -> Check {
    let Some((lo, hi)) = port_range() else {
        return check(Level::Ok, "listen_ports", "port range unknown".into(), None);
    };
    let mut inside = Vec::new();
    for (key, addr) in config.listen_addresses() {
        if let Ok(a) = crate::config::parse_addr(addr) {
            if (lo..=hi).contains(&u32::from(a.port())) {
                inside.push(format!("{key} {}", a.port()));
            }
        }
    }
    if inside.is_empty() {
        return check(
            Level::Ok,
            "listen_ports",
            format!("no listen port inside the ephemeral range {lo}-{hi}"),
            None,
        );
    }
    check(
        Level::Warn,
        "listen_ports",
        format!(
            "{} inside the ephemeral port range {lo}-{hi}: an outgoing connection can take it \
             before coregate starts",
            inside.join(", ")
        ),
        Some(format!(
            "use ports below {lo}, or reserve them: sysctl -w net.ipv4.ip_local_reserved_ports=PORTS"
        )),
    )
}

fn governor_check(cores: &[usize]) -> Check {
    let mut slow = Vec::new();
    let mut seen = false;
    for c in cores {
        if let Some(g) = read_trim(&format!(
            "/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
        )) {
            seen = true;
            if g != "performance" {
                slow.push(format!("cpu{c}={g}"));
            }
        }
    }
    if !seen {
        check(
            Level::Ok,
            "governor",
            "not visible here (virtual machine or no cpufreq)".into(),
            None,
        )
    } else if slow.is_empty() {
        check(Level::Ok, "governor", "performance".into(), None)
    } else {
        check(
            Level::Warn,
            "governor",
            format!("not 'performance': {}", slow.join(", ")),
            Some("cpupower frequency-set -g performance".into()),
        )
    }
}

/// Warnings and failures, one line each, for `serve` to log at start.
pub fn startup_warnings(config: &Config) -> Vec<String> {
    run_checks(config)
        .into_iter()
        // Only an upgrade needs it; `serve --takeover` checks it then.
        .filter(|c| c.level != Level::Ok && c.name != MIGRATE_REQ)
        .map(|c| match c.fix {
            Some(fix) => format!("doctor: {}: {} (fix: {fix})", c.name, c.message),
            None => format!("doctor: {}: {}", c.name, c.message),
        })
        .collect()
}

/// Prints the checks; returns the exit status: 0 all ok, 1 a warning, 2 a failure.
pub fn report(config: &Config) -> i32 {
    let checks = run_checks(config);
    for c in &checks {
        println!("{c}");
    }
    match checks.iter().map(|c| c.level).max() {
        Some(Level::Fail) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_req_messages_read_as_one_sentence() {
        for value in [Some("1"), Some("0"), None] {
            let c = migrate_req_verdict(value);
            assert!(!c.message.contains("  "), "{value:?}: {:?}", c.message);
            assert!(c.fix.as_deref().is_none_or(|f| !f.contains("  ")));
        }
        assert_eq!(migrate_req_verdict(Some("1")).level, Level::Ok);
        assert_eq!(migrate_req_verdict(Some("0")).level, Level::Warn);
        assert_eq!(migrate_req_verdict(None).level, Level::Warn);
    }
}
