//! The run's artifacts under `--out DIR`: stages.jsonl, iterations.jsonl, requests.jsonl,
//! resources.jsonl (appended as the run goes, so an interrupted run keeps what it
//! measured), then summary.json, report.md and the SVG charts at the end.

use super::record::Sample;
use super::resources::ResourceSample;
use super::stage::StageRow;
use serde::Serialize;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct Artifacts {
    pub dir: PathBuf,
    stages: BufWriter<File>,
    iterations: Option<BufWriter<File>>,
    requests: BufWriter<File>,
    resources: BufWriter<File>,
}

fn create(dir: &Path, name: &str) -> Result<BufWriter<File>, String> {
    let path = dir.join(name);
    File::create(&path)
        .map(BufWriter::new)
        .map_err(|e| format!("--out: cannot create {}: {e}", path.display()))
}

fn line<T: Serialize>(w: &mut BufWriter<File>, v: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v)?;
    w.write_all(b"\n")
}

impl Artifacts {
    pub fn create(dir: &Path, breaking_point: bool) -> Result<Artifacts, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("--out: cannot create {}: {e}", dir.display()))?;
        Ok(Artifacts {
            dir: dir.to_path_buf(),
            stages: create(dir, "stages.jsonl")?,
            iterations: if breaking_point {
                Some(create(dir, "iterations.jsonl")?)
            } else {
                None
            },
            requests: create(dir, "requests.jsonl")?,
            resources: create(dir, "resources.jsonl")?,
        })
    }

    /// Appends a finished stage and its sampled requests.
    pub fn stage(&mut self, row: &StageRow, samples: &[Sample]) -> std::io::Result<()> {
        line(&mut self.stages, row)?;
        self.stages.flush()?;
        if let Some(w) = self.iterations.as_mut() {
            line(w, &iteration(row))?;
            w.flush()?;
        }
        for s in samples {
            line(
                &mut self.requests,
                &json!({
                    "timestamp_us": s.unix_us,
                    "latency_us": s.latency_us,
                    "success": s.error.is_none(),
                    "status": s.status,
                    "stage": row.stage,
                    "concurrent": row.vus,
                    "request_id": s.request_id,
                    "error": s.error.map(|e| e.name()),
                }),
            )?;
        }
        self.requests.flush()
    }

    pub fn resource(&mut self, s: &ResourceSample) -> std::io::Result<()> {
        line(&mut self.resources, s)?;
        self.resources.flush()
    }

    pub fn write(&self, name: &str, contents: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// One line of iterations.jsonl (the breaking-point search's view of a stage).
pub fn iteration(row: &StageRow) -> Value {
    json!({
        "iteration": row.stage,
        "vus": row.vus,
        "duration_secs": row.duration_secs,
        "total_requests": row.total_requests,
        "successful_requests": row.successful_requests,
        "failed_requests": row.failed_requests,
        "connection_refused": row.connection_refused,
        "error_rate": row.error_rate,
        "server_error_rate": row.server_error_rate,
        "client_limit_rate": row.client_limit_rate,
        "rps": row.rps,
        "p50_ms": row.p50_ms,
        "p90_ms": row.p90_ms,
        "p99_ms": row.p99_ms,
        "max_ms": row.max_ms,
        "verdict": row.verdict,
        "timestamp": row.timestamp,
    })
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp.
pub fn rfc3339(unix_secs: u64) -> String {
    let rem = unix_secs % 86_400;
    let (y, m, d) = coregate_http1::reply::civil_from_days((unix_secs / 86_400) as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn rfc3339_now() -> String {
    rfc3339(super::worker::unix_us() / 1_000_000)
}

/// Hardware, kernel, sysctls and rlimits, for summary.json.
pub fn host_info() -> Value {
    let read = coregate_runtime::host::read_trim;
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let mem_gb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
    });
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        });
    let sysctls: serde_json::Map<String, Value> = [
        "net.core.somaxconn",
        "net.ipv4.tcp_max_syn_backlog",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_tw_reuse",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_syncookies",
        "net.core.netdev_max_backlog",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "fs.file-max",
        "fs.nr_open",
        "kernel.io_uring_disabled",
    ]
    .iter()
    .map(|k| {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        (
            k.to_string(),
            read(&path).map(Value::from).unwrap_or(Value::Null),
        )
    })
    .collect();
    let limit = |r| {
        coregate_runtime::host::rlimit(r)
            .map(|(soft, hard)| json!({"soft": soft, "hard": hard}))
            .unwrap_or(Value::Null)
    };
    json!({
        "hardware_info": {
            "cpu_model": cpu_model,
            "cpus_online": coregate_runtime::cores::online_cores().len(),
            "memory_gb": mem_gb,
            "kernel": read("/proc/sys/kernel/osrelease"),
            "os": os,
        },
        "sysctls": sysctls,
        "rlimits": {
            "nofile": limit(libc::RLIMIT_NOFILE),
            "memlock": limit(libc::RLIMIT_MEMLOCK),
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_000_000), "2026-11-30T00:53:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
