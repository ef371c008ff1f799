//! Once-a-second samples of the target process (`--pid`) and of the generator itself,
//! read from /proc on a plain thread of their own — never on a load shard.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One line of resources.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceSample {
    pub timestamp_ms: u64,
    /// Target process: CPU % of one core over the last second (200 = two cores busy).
    pub cpu_percent: Option<f64>,
    pub memory_mb: Option<f64>,
    pub open_fds: Option<u64>,
    pub threads: Option<u64>,
    /// Connections the generator holds open to the target(s) (filled in by the main thread).
    pub active_connections: u64,
    /// The generator's own CPU % over the last second.
    pub client_cpu_percent: f64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (`self` or a pid), in seconds, and its thread count.
pub fn cpu_seconds(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15, num_threads 20.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    Some(((utime + stime) as f64 / clock_ticks(), threads))
}

fn rss_mb(pid: i32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn open_fds(pid: i32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Samples every second until `stop` is dropped or signalled.
pub fn spawn_sampler(
    pid: Option<i32>,
    samples: Sender<ResourceSample>,
    stop: Receiver<()>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("coregate-load-resources".into())
        .spawn(move || {
            let pid_s = pid.map(|p| p.to_string());
            let mut last = Instant::now();
            let mut last_target = pid_s.as_deref().and_then(cpu_seconds).map(|c| c.0);
            let mut last_self = cpu_seconds("self").map(|c| c.0).unwrap_or(0.0);
            loop {
                match stop.recv_timeout(Duration::from_secs(1)) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let elapsed = last.elapsed().as_secs_f64().max(1e-3);
                last = Instant::now();
                let me = cpu_seconds("self").map(|c| c.0).unwrap_or(last_self);
                let mut sample = ResourceSample {
                    timestamp_ms: super::worker::unix_us() / 1000,
                    cpu_percent: None,
                    memory_mb: None,
                    open_fds: None,
                    threads: None,
                    active_connections: 0,
                    client_cpu_percent: round2((me - last_self) / elapsed * 100.0),
                };
                last_self = me;
                if let (Some(p), Some(ps)) = (pid, pid_s.as_deref()) {
                    if let Some((cpu, threads)) = cpu_seconds(ps) {
                        sample.cpu_percent =
                            last_target.map(|l| round2((cpu - l) / elapsed * 100.0));
                        sample.threads = Some(threads);
                        last_target = Some(cpu);
                    }
                    sample.memory_mb = rss_mb(p).map(round2);
                    sample.open_fds = open_fds(p);
                }
                if samples.send(sample).is_err() {
                    return;
                }
            }
        })
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let (cpu, threads) = super::cpu_seconds("self").unwrap();
        assert!(cpu >= 0.0 && threads >= 1);
        let pid = std::process::id() as i32;
        assert!(super::rss_mb(pid).unwrap() > 0.0);
        assert!(super::open_fds(pid).unwrap() >= 3);
    }
}
