//! Once-a-second samples of the target process (`--pid`) and of the generator itself,
//! read from /proc on a plain thread of their own — never on a load shard.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::time::{Duration, Instant};

/// One line of resources.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct ResourceSample {
    pub timestamp_ms: u64,
    /// Target process and its descendants: CPU % of one core over the last second (200 = two
    /// cores busy); memory, fds and threads are summed over the tree too.
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

/// Fields 3.. of /proc/PID/stat (after the command name, which may contain spaces).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of a process (`self` or a pid), in seconds, and its thread count.
pub fn cpu_seconds(pid: &str) -> Option<(f64, u64)> {
    let f = stat_fields(pid)?;
    // f[0] is field 3 (state): utime is field 14, stime 15, num_threads 20.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    Some(((utime + stime) as f64 / clock_ticks(), threads))
}

/// `pid` and its live descendants (nginx's workers are children of the master we are given).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut parent = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(p) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // f[1] is field 4, the parent pid.
            if let Some(pp) =
                stat_fields(&p.to_string()).and_then(|f| f.get(1)?.parse::<i32>().ok())
            {
                parent.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds and threads summed over `pid`'s process tree.
pub fn tree_cpu_seconds(pid: i32) -> Option<(f64, u64)> {
    let mut total = None::<(f64, u64)>;
    for p in process_tree(pid) {
        if let Some((c, t)) = cpu_seconds(&p.to_string()) {
            let (tc, tt) = total.unwrap_or((0.0, 0));
            total = Some((tc + c, tt + t));
        }
    }
    total
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
            let mut last = Instant::now();
            let mut last_target = pid.and_then(tree_cpu_seconds).map(|c| c.0);
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
                if let Some(p) = pid {
                    let tree = process_tree(p);
                    if let Some((cpu, threads)) = tree_cpu_seconds(p) {
                        sample.cpu_percent =
                            last_target.map(|l| round2((cpu - l) / elapsed * 100.0));
                        sample.threads = Some(threads);
                        last_target = Some(cpu);
                    }
                    sample.memory_mb = tree
                        .iter()
                        .filter_map(|&p| rss_mb(p))
                        .reduce(|a, b| a + b)
                        .map(round2);
                    sample.open_fds = tree
                        .iter()
                        .filter_map(|&p| open_fds(p))
                        .reduce(|a, b| a + b);
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

    #[test]
    fn sums_a_process_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let tree = super::process_tree(me);
        assert!(tree.contains(&(child.id() as i32)), "{tree:?}");
        let (_, threads) = super::tree_cpu_seconds(me).unwrap();
        assert!(threads >= 2);
        let _ = child.kill();
        let _ = child.wait();
    }
}
