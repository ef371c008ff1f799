//! A finished stage: the shards' windows merged into one row of stages.jsonl, with the
//! client's own limits and CPU judged alongside the server's numbers.

use super::options::Mode;
use super::plan::{StepRates, Verdict};
use super::record::{ErrorClass, Record};
use super::resources::round2;
use super::worker::ShardStage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A shard thread busier than this during a window means the client, not the server,
/// may have set the pace.
const CLIENT_CPU_SATURATED: f64 = 95.0;

#[derive(Debug, Clone, Serialize)]
pub struct ShardRow {
    pub shard: usize,
    pub core: usize,
    pub vus: usize,
    pub requests: u64,
    pub rps: f64,
    pub cpu_percent: f64,
}

/// One line of stages.jsonl (and one iteration of a breaking-point search).
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: usize,
    pub vus: usize,
    /// The measured window (the ramp is not in it).
    pub duration_secs: f64,
    pub ramp_secs: f64,
    pub total_requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    pub timeout_requests: u64,
    pub connection_refused: u64,
    pub errors: BTreeMap<&'static str, u64>,
    pub other_errnos: BTreeMap<String, u64>,
    pub statuses: BTreeMap<String, u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    pub rps: f64,
    pub error_rate: f64,
    /// Failures not caused by the client's own limits.
    pub server_error_rate: f64,
    pub client_limit_rate: f64,
    pub connections_opened: u64,
    pub open_connections: usize,
    /// Open loop: the asked rate, whether it was met, and sends that started late.
    pub target_rate: Option<f64>,
    pub rate_kept_up: Option<bool>,
    pub late_sends: u64,
    /// The busiest load shard's CPU % of one core during the window.
    pub client_cpu_percent: f64,
    pub client_cpu_us_per_request: f64,
    /// With --pid: the target's CPU time per request during the window.
    pub target_cpu_us_per_request: Option<f64>,
    /// Client limits hit in this stage: client_ports_exhausted, client_fd_limit, client_cpu.
    pub client_limits: Vec<&'static str>,
    pub verdict: Option<Verdict>,
    /// The window was cut short (Ctrl-C): reported, but neither judged nor counted in the
    /// findings.
    pub interrupted: bool,
    pub notes: Vec<String>,
    pub per_shard: Vec<ShardRow>,
    pub timestamp: String,
}

/// errno → count, keyed by the OS's text for the error (which includes the number).
pub fn errno_map(errnos: &BTreeMap<i32, u64>) -> BTreeMap<String, u64> {
    errnos
        .iter()
        .map(|(k, v)| (std::io::Error::from_raw_os_error(*k).to_string(), *v))
        .collect()
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64())
}

fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

impl StageRow {
    /// Merges the shards' windows. `target_cpu_s` is the target's CPU seconds during the
    /// window (with --pid).
    pub fn merge(
        index: usize,
        vus: usize,
        mode: Mode,
        shards: Vec<ShardStage>,
        target_cpu_s: Option<f64>,
    ) -> (StageRow, Record) {
        let mut record = Record::new();
        let mut per_shard = Vec::new();
        let mut rps = 0.0;
        let mut window = Duration::ZERO;
        let mut ramp = Duration::ZERO;
        let mut cpu = Duration::ZERO;
        let mut open = 0;
        let mut interrupted = false;
        for s in shards {
            interrupted |= s.interrupted;
            let secs = s.window.as_secs_f64().max(1e-6);
            let total = s.record.total();
            // RPS counts complete responses: a refused connect is a failure, not a request
            // served (against a closed port the rate was the rate of refusals).
            let completed = s.record.responses();
            rps += completed as f64 / secs;
            window = window.max(s.window);
            ramp = ramp.max(s.ramp);
            cpu += s.cpu;
            open += s.open_connections;
            per_shard.push(ShardRow {
                shard: s.shard,
                core: s.core,
                vus: s.vus,
                requests: total,
                rps: round2(completed as f64 / secs),
                cpu_percent: round2(s.cpu.as_secs_f64() / secs * 100.0),
            });
            record.merge(s.record);
        }
        per_shard.sort_by_key(|s| s.shard);
        let total = record.total();
        let failed = record.failed();
        let client = record.client_limit_failures();
        let rate = |n: u64| {
            if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            }
        };
        let client_cpu = per_shard.iter().map(|s| s.cpu_percent).fold(0.0, f64::max);
        let mut client_limits = Vec::new();
        if record.count(ErrorClass::ClientPorts) > 0 {
            client_limits.push(ErrorClass::ClientPorts.name());
        }
        if record.count(ErrorClass::ClientFds) > 0 {
            client_limits.push(ErrorClass::ClientFds.name());
        }
        if client_cpu >= CLIENT_CPU_SATURATED {
            client_limits.push("client_cpu");
        }
        let mut notes = Vec::new();
        let (target_rate, rate_kept_up) = match mode {
            Mode::Open { rate } => {
                let kept = rps >= rate * 0.95;
                if !kept {
                    let needed = (rate * record.mean_ms() / 1000.0).ceil();
                    notes.push(format!(
                        "the target could not keep up with {rate} req/s: {:.0} req/s achieved \
                         (at the measured mean latency the rate needs about {needed} VUs; \
                         there were {vus})",
                        rps
                    ));
                }
                (Some(rate), Some(kept))
            }
            Mode::Closed { .. } => (None, None),
        };
        if client_limits.contains(&"client_cpu") {
            notes.push(format!(
                "a load shard was {client_cpu:.0}% busy: the generator may have set the pace; \
                 give it more cores (--cores)"
            ));
        }
        let row = StageRow {
            stage: index,
            vus,
            duration_secs: ms(window),
            ramp_secs: ms(ramp),
            total_requests: total,
            successful_requests: record.ok,
            failed_requests: failed,
            timeout_requests: record.count(ErrorClass::Timeout)
                + record.count(ErrorClass::ConnectTimeout),
            connection_refused: record.count(ErrorClass::ConnectRefused),
            errors: record.error_map(),
            other_errnos: errno_map(&record.other_errnos),
            statuses: record
                .statuses
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            p50_ms: r3(record.quantile_ms(0.5)),
            p90_ms: r3(record.quantile_ms(0.9)),
            p99_ms: r3(record.quantile_ms(0.99)),
            p999_ms: r3(record.quantile_ms(0.999)),
            min_ms: r3(record.min_ms()),
            max_ms: r3(record.quantile_ms(1.0)),
            mean_ms: r3(record.mean_ms()),
            rps: round2(rps),
            error_rate: r3(rate(failed) * 100.0) / 100.0,
            server_error_rate: r3(rate(failed - client) * 100.0) / 100.0,
            client_limit_rate: r3(rate(client) * 100.0) / 100.0,
            connections_opened: record.connections_opened,
            open_connections: open,
            target_rate,
            rate_kept_up,
            late_sends: record.late_sends,
            client_cpu_percent: client_cpu,
            client_cpu_us_per_request: if total == 0 {
                0.0
            } else {
                round2(cpu.as_secs_f64() * 1e6 / total as f64)
            },
            target_cpu_us_per_request: target_cpu_s
                .filter(|_| total > 0)
                .map(|s| round2(s * 1e6 / total as f64)),
            client_limits,
            verdict: None,
            interrupted,
            notes,
            per_shard,
            timestamp: super::artifacts::rfc3339_now(),
        };
        (row, record)
    }

    pub fn rates(&self) -> StepRates {
        // A whole window without one completed request or failure: the server is stuck
        // (every request outlived the window), which is a failure, not a stable stage.
        let stuck = self.total_requests == 0 && self.vus > 0;
        StepRates {
            server_error_rate: if stuck { 1.0 } else { self.server_error_rate },
            client_limit_rate: self.client_limit_rate,
        }
    }

    /// The one-line summary printed when a stage ends.
    pub fn line(&self) -> String {
        let errors = if self.errors.is_empty() {
            "no errors".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut line = format!(
            "stage {} vus {}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, \
             {} requests, {errors} ({:.2}%), ramp {:.1}s, client cpu {:.0}%",
            self.stage,
            self.vus,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.total_requests,
            self.error_rate * 100.0,
            self.ramp_secs,
            self.client_cpu_percent
        );
        if let Some(v) = self.verdict {
            line.push_str(&format!(
                " -> {}",
                serde_json::to_string(&v).unwrap_or_default()
            ));
        }
        line
    }
}
