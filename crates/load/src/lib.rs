//! `coregate load`: an honest, thread-per-core HTTP/1.1 load generator.
//!
//! It exists to tell a server's limits from a client's. One pinned glommio shard per core
//! ([`worker`]) drives its share of virtual users ([`vu`]), each a keep-alive connection
//! ([`client`]); the main thread (this module) walks a profile ([`plan`]), sends each
//! shard its share of a stage, merges the shards' windows ([`stage`]), and writes the
//! artifacts ([`artifacts`], [`report`], [`charts`]).
//!
//! What keeps it honest:
//! - before a run it computes what its own fds and ephemeral ports allow ([`limits`]) and
//!   says so; failures from those limits are their own error classes ([`record`]) and
//!   never count as the server's breaking point;
//! - connections are opened at a bounded pace (`--connect-rate`) and a stage is measured
//!   only after its ramp, so it measures steady state, not a SYN storm;
//! - RPS is counted over each stage's measured window only, per stage, never cumulative;
//! - open-loop latency is measured from the intended send time (coordinated omission);
//! - percentiles come from merged hdrhistograms (3 significant digits; exact min/max);
//! - each shard measures its own CPU time, so a saturated generator is reported;
//! - requests.jsonl is a sample kept in memory and written between stages, never a write
//!   per request.

pub mod artifacts;
pub mod charts;
pub mod client;
pub mod limits;
pub mod options;
pub mod plan;
pub mod progress;
pub mod record;
pub mod report;
pub mod resources;
pub mod stage;
pub mod target;
pub mod vu;
pub mod worker;
pub mod ws;

pub use options::LoadArgs;

use artifacts::Artifacts;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use plan::{Plan, Profile, Step};
use progress::Progress;
use record::Record;
use stage::StageRow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Command, Report, ShardStage, StageCommand};

/// New connections per second by default: even if the server accepted nothing for a whole
/// second, this many SYNs fit a 4096 listen backlog.
pub const DEFAULT_CONNECT_RATE: u32 = 4000;

/// Shard threads and their channels.
struct Shards {
    commands: Vec<Sender<Command>>,
    reports: Receiver<Report>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    fn start(cfg: &options::LoadConfig) -> Result<Shards, String> {
        let (report_tx, reports) = unbounded();
        let mut shards = Shards {
            commands: Vec::new(),
            reports,
            threads: Vec::new(),
        };
        for (i, &core) in cfg.cores.iter().enumerate() {
            let (tx, rx) = unbounded();
            let spec = worker::WorkerSpec {
                shard: i,
                core,
                shards: cfg.cores.len(),
                config: cfg.clone(),
                commands: rx,
                reports: report_tx.clone(),
            };
            shards.commands.push(tx);
            let handle =
                worker::spawn(spec).map_err(|e| format!("cannot start a load thread: {e}"))?;
            shards.threads.push(handle);
        }
        for _ in 0..cfg.cores.len() {
            match shards.reports.recv_timeout(Duration::from_secs(10)) {
                Ok(Report::Ready(Ok(()))) => {}
                Ok(Report::Ready(Err(e))) => return Err(e),
                Ok(_) => {}
                Err(_) => return Err("a load shard did not start within 10 s".into()),
            }
        }
        Ok(shards)
    }

    fn send(&self, cmd: &Command) {
        for tx in &self.commands {
            let _ = tx.send(cmd.clone());
        }
    }

    /// Stops the shards; returns the complete responses they received in the run.
    /// Shards get `timeout` to let their VUs finish; one that does not report by then is
    /// left behind (the process is about to exit).
    fn stop(self, timeout: Duration) -> u64 {
        self.send(&Command::Stop);
        let n = self.commands.len();
        // A shard that missed Stop still sees the channel disconnect.
        drop(self.commands);
        let deadline = Instant::now() + timeout + Duration::from_secs(5);
        let mut responses = 0;
        let mut finished = 0;
        while finished < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(Report::Finished { responses: r, .. }) => {
                    responses += r;
                    finished += 1;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
        responses
    }
}

/// Writes the resource samples taken so far, with the generator's open connections.
fn drain_resources(
    samples: &Receiver<resources::ResourceSample>,
    open_connections: u64,
    mut artifacts: Option<&mut Artifacts>,
) -> std::io::Result<()> {
    while let Ok(mut s) = samples.try_recv() {
        s.active_connections = open_connections;
        if let Some(a) = artifacts.as_deref_mut() {
            a.resource(&s)?;
        }
    }
    Ok(())
}

/// Splits `vus` over `n` shards as evenly as possible.
fn split(vus: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| vus / n + usize::from(i < vus % n)).collect()
}

fn is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

/// Runs `coregate load`. Failures to start are errors; failures of requests are data.
pub fn run(args: LoadArgs) -> Result<(), String> {
    let cfg = args.into_config(&coregate_runtime::cores::online_cores(), is_tty())?;
    let nofile = coregate_runtime::host::raise_nofile_limit();
    let caps = limits::client_caps(&cfg, nofile);
    let peak = cfg.profile.peak_vus(caps.client_cap as usize);
    let mut progress = Progress::new(cfg.progress_tty, cfg.cores.len());
    for line in limits::describe(&caps, peak, !cfg.sources.is_empty()) {
        progress.println(&line);
    }
    let is_bp = matches!(cfg.profile, Profile::BreakingPoint { .. });
    let mut artifacts = match &cfg.out {
        Some(dir) => Some(Artifacts::create(dir, is_bp)?),
        None => None,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // The first signal ends the run gracefully; a second one exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone());
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }
    let started_at = artifacts::rfc3339_now();
    let shards = Shards::start(&cfg)?;
    let (sample_tx, samples) = unbounded();
    let (stop_sampler, sampler_stop) = unbounded::<()>();
    let sampler = resources::spawn_sampler(cfg.pid, sample_tx, sampler_stop)
        .map_err(|e| format!("cannot start the resource sampler: {e}"))?;

    let mut run = Running {
        cfg: &cfg,
        shards: &shards,
        progress: &mut progress,
        artifacts: artifacts.as_mut(),
        samples: &samples,
        interrupted: &interrupted,
        vus_now: 0,
    };
    let mut plan = Plan::new(cfg.profile.clone(), caps.client_cap as usize);
    let mut rows = Vec::new();
    let mut overall = Record::new();
    let mut verdict = None;
    let mut failure = None;
    while let Some(step) = plan.next(verdict) {
        if interrupted.load(Ordering::Relaxed) {
            break;
        }
        let (mut row, mut record) = match run.stage(&step) {
            Ok(r) => r,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let v = if row.interrupted {
            row.notes
                .push("interrupted: the measured window was cut short; not judged".into());
            plan::Verdict::Stable
        } else {
            plan.judge(row.rates())
        };
        if is_bp && !row.interrupted {
            row.verdict = Some(v);
        }
        run.progress.println(&row.line());
        if let Some(a) = run.artifacts.as_mut() {
            a.stage(&row, &record.samples)
                .map_err(|e| format!("cannot write artifacts: {e}"))?;
        }
        record.samples = Vec::new();
        overall.merge(record);
        rows.push(row);
        verdict = Some(v);
    }
    let all_responses = shards.stop(cfg.timeout + cfg.connect_timeout);
    drop(stop_sampler);
    let _ = sampler.join();
    // The samples taken after the last stage; a write error here has nothing left to stop.
    let _ = drain_resources(&samples, progress.open_connections(), artifacts.as_mut());
    let was_interrupted = interrupted.load(Ordering::Relaxed);

    let findings = report::findings(&cfg.profile, &rows, &overall);
    progress.println(&format!(
        "breaking point: {}; max stable VUs: {}; max RPS: {:.0} at {} VUs; failure mode: {}; \
         client limits hit: {}",
        findings.breaking_point,
        findings
            .max_stable_vus
            .map_or("none".into(), |v| v.to_string()),
        findings.max_rps,
        findings.max_rps_vus,
        findings.failure_mode,
        if findings.client_limits_hit.is_empty() {
            "none".into()
        } else {
            findings.client_limits_hit.join(", ")
        }
    ));
    if let Some(a) = &artifacts {
        let info = report::RunInfo {
            cfg: &cfg,
            caps: &caps,
            rows: &rows,
            overall: &overall,
            findings: &findings,
            started_at,
            finished_at: artifacts::rfc3339_now(),
            interrupted: was_interrupted,
            all_responses,
        };
        let summary = serde_json::to_string_pretty(&report::summary_json(&info))
            .map_err(|e| format!("summary.json: {e}"))?;
        a.write("summary.json", &summary)?;
        a.write("report.md", &report::report_md(&info))?;
        charts::write(&a.dir, &rows, cfg.profile.name())?;
        progress.println(&format!("artifacts in {}", a.dir.display()));
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The main thread's side of a run in progress.
struct Running<'a> {
    cfg: &'a options::LoadConfig,
    shards: &'a Shards,
    progress: &'a mut Progress,
    artifacts: Option<&'a mut Artifacts>,
    samples: &'a Receiver<resources::ResourceSample>,
    interrupted: &'a AtomicBool,
    vus_now: usize,
}

impl Running<'_> {
    /// Runs one step on every shard and merges the result.
    fn stage(&mut self, step: &Step) -> Result<(StageRow, Record), String> {
        let n = self.shards.commands.len();
        let connect_rate = f64::from(self.cfg.connect_rate) / n as f64;
        for (tx, vus) in self.shards.commands.iter().zip(split(step.vus, n)) {
            let _ = tx.send(Command::Stage(StageCommand {
                index: step.index,
                vus,
                total_vus: step.vus,
                duration: step.duration,
                cooldown: step.cooldown,
                connect_rate,
            }));
        }
        self.progress
            .stage(format!("stage {} ({} VUs)", step.index, step.vus));
        // A watchdog, not a measurement: glommio timers have hung on some VMs.
        let new_vus = step.vus.saturating_sub(self.vus_now) as f64;
        let ramp = if self.cfg.connect_rate == 0 {
            0.0
        } else {
            new_vus / f64::from(self.cfg.connect_rate)
        };
        let deadline = Instant::now()
            + step.cooldown
            + Duration::from_secs_f64(ramp)
            + self.cfg.connect_timeout
            + step.duration
            + self.cfg.timeout
            + Duration::from_secs(30);
        self.vus_now = step.vus;
        let pid = self.cfg.pid;
        let mut target_cpu_start = None;
        let mut done: Vec<ShardStage> = Vec::new();
        let mut ended = false;
        while done.len() < n {
            match self.shards.reports.recv_timeout(Duration::from_millis(200)) {
                Ok(Report::Progress {
                    shard,
                    done: d,
                    failed,
                    open_connections,
                    p99_us,
                }) => self
                    .progress
                    .update(shard, d, failed, open_connections, p99_us),
                Ok(Report::WindowStart { .. }) => {
                    if target_cpu_start.is_none() {
                        target_cpu_start = pid.and_then(resources::tree_cpu_seconds);
                    }
                }
                Ok(Report::StageDone(s)) => done.push(*s),
                Ok(Report::Ready(_) | Report::Finished { .. }) | Err(RecvTimeoutError::Timeout) => {
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the load shards exited unexpectedly".into())
                }
            }
            drain_resources(
                self.samples,
                self.progress.open_connections(),
                self.artifacts.as_deref_mut(),
            )
            .map_err(|e| format!("cannot write resources.jsonl: {e}"))?;
            self.progress.tick();
            if !ended && self.interrupted.load(Ordering::Relaxed) {
                ended = true;
                self.shards.send(&Command::EndStage);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "stage {}: {} of {n} load shards did not report in time; stopping",
                    step.index,
                    n - done.len()
                ));
            }
        }
        let target_cpu = match (pid.and_then(resources::tree_cpu_seconds), target_cpu_start) {
            (Some(end), Some(start)) => Some(end.0 - start.0),
            _ => None,
        };
        Ok(StageRow::merge(
            step.index,
            step.vus,
            self.cfg.mode,
            done,
            target_cpu,
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_evenly() {
        assert_eq!(super::split(5, 2), vec![3, 2]);
        assert_eq!(super::split(1, 3), vec![1, 0, 0]);
        assert_eq!(super::split(18000, 2), vec![9000, 9000]);
    }
}
