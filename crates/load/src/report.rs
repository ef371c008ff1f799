//! What a run found: the breaking point (or how far the search got and why it stopped),
//! summary.json, and the human report.md.

use super::limits::ClientCaps;
use super::options::{LoadConfig, Mode};
use super::plan::{Profile, Verdict};
use super::record::Record;
use super::stage::StageRow;
use serde_json::{json, Value};
use std::fmt::Write;

/// Error rate above which a scale or single stage is not counted as stable.
const DEFAULT_STABLE_THRESHOLD: f64 = 0.05;

#[derive(Debug, Clone)]
pub struct Findings {
    pub breaking_point_vus: Option<usize>,
    /// "12500 VUs", or "none found up to N VUs" with the reason the search stopped.
    pub breaking_point: String,
    pub max_stable_vus: Option<usize>,
    pub max_rps: f64,
    pub max_rps_vus: usize,
    /// The dominant failure at the breaking point (or over the run), or "none".
    pub failure_mode: String,
    pub client_limits_hit: Vec<&'static str>,
}

pub fn findings(profile: &Profile, rows: &[StageRow], overall: &Record) -> Findings {
    let threshold = match profile {
        Profile::BreakingPoint { threshold, .. } => *threshold,
        _ => DEFAULT_STABLE_THRESHOLD,
    };
    // An interrupted window measured too little to judge or to count.
    let rows: Vec<StageRow> = rows.iter().filter(|r| !r.interrupted).cloned().collect();
    let rows = rows.as_slice();
    let stable = |r: &StageRow| {
        r.verdict.unwrap_or(Verdict::Stable) == Verdict::Stable
            && r.rates().server_error_rate < threshold.max(f64::MIN_POSITIVE)
            && r.client_limit_rate == 0.0
    };
    let max_stable_vus = rows.iter().filter(|r| stable(r)).map(|r| r.vus).max();

    let peak = rows
        .iter()
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
        .map(|r| (r.rps, r.vus))
        .unwrap_or((0.0, 0));
    let mut client_limits_hit: Vec<&'static str> = rows
        .iter()
        .flat_map(|r| r.client_limits.iter().copied())
        .collect();
    client_limits_hit.sort_unstable();
    client_limits_hit.dedup();
    let tested = rows.iter().map(|r| r.vus).max().unwrap_or(0);
    let breaking = rows.iter().find(|r| r.verdict == Some(Verdict::Breaking));
    let client_stop = rows
        .iter()
        .find(|r| r.verdict == Some(Verdict::ClientLimit));
    let dominant = |r: &StageRow| {
        r.errors
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.to_string())
            .unwrap_or_else(|| "none".into())
    };
    let overall_mode = overall
        .dominant_error()
        .map_or_else(|| "none".to_string(), |c| c.name().to_string());
    let (breaking_point_vus, breaking_point, failure_mode) = match (profile, breaking, client_stop)
    {
        (Profile::BreakingPoint { .. }, Some(r), _) => {
            (Some(r.vus), format!("{} VUs", r.vus), dominant(r))
        }
        (Profile::BreakingPoint { .. }, None, Some(r)) => (
            None,
            format!(
                "none found up to {tested} VUs: the client's own limits failed {:.1}% of requests \
                 at {} VUs ({})",
                r.client_limit_rate * 100.0,
                r.vus,
                r.client_limits.join(", ")
            ),
            format!("client limit: {}", r.client_limits.join(", ")),
        ),
        (Profile::BreakingPoint { .. }, None, None) => {
            (None, format!("none found up to {tested} VUs"), overall_mode)
        }
        _ => (
            None,
            format!("not searched ({} profile)", profile.name()),
            overall_mode,
        ),
    };
    Findings {
        breaking_point_vus,
        breaking_point,
        max_stable_vus,
        max_rps: peak.0,
        max_rps_vus: peak.1,
        failure_mode,
        client_limits_hit,
    }
}

pub struct RunInfo<'a> {
    pub cfg: &'a LoadConfig,
    pub caps: &'a ClientCaps,
    pub rows: &'a [StageRow],
    pub overall: &'a Record,
    pub findings: &'a Findings,
    pub started_at: String,
    pub finished_at: String,
    pub interrupted: bool,
    /// Complete responses received in the run, ramps and cool-downs included (the stages
    /// count only their measured windows).
    pub all_responses: u64,
}

fn mode_json(mode: Mode) -> Value {
    match mode {
        Mode::Closed { think } => json!({"kind": "closed", "think_ms": think.as_secs_f64() * 1e3}),
        Mode::Open { rate } => json!({"kind": "open", "rate": rate}),
    }
}

pub fn summary_json(run: &RunInfo) -> Value {
    let f = run.findings;
    let o = run.overall;
    let mut v = json!({
        "tool": "coregate load",
        "version": env!("CARGO_PKG_VERSION"),
        "command": run.cfg.command_line,
        "profile": run.cfg.profile.name(),
        "mode": mode_json(run.cfg.mode),
        "targets": run.cfg.targets.iter().map(|t| t.url.clone()).collect::<Vec<_>>(),
        "method": run.cfg.request.method,
        "cores": run.cfg.cores,
        "sources": run.cfg.sources.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "connect_rate": run.cfg.connect_rate,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "interrupted": run.interrupted,
        "breaking_point_vus": f.breaking_point_vus,
        "breaking_point": f.breaking_point,
        "max_stable_vus": f.max_stable_vus,
        "max_rps": f.max_rps,
        "max_rps_vus": f.max_rps_vus,
        "failure_mode": f.failure_mode,
        "all_responses": run.all_responses,
        "total_requests": o.total(),
        "successful_requests": o.ok,
        "failed_requests": o.failed(),
        "errors": o.error_map(),
        "other_errnos": super::stage::errno_map(&o.other_errnos),
        "p50_ms": o.quantile_ms(0.5),
        "p99_ms": o.quantile_ms(0.99),
        "p999_ms": o.quantile_ms(0.999),
        "max_ms": o.quantile_ms(1.0),
        "client_limits": {
            "hit": f.client_limits_hit,
            "caps": run.caps,
        },
        "stages": run.rows,
    });
    if matches!(run.cfg.profile, Profile::BreakingPoint { .. }) {
        v["iterations"] = run.rows.iter().map(super::artifacts::iteration).collect();
    }
    if let (Value::Object(m), Value::Object(host)) = (&mut v, super::artifacts::host_info()) {
        m.extend(host);
    }
    v
}

pub fn report_md(run: &RunInfo) -> String {
    let f = run.findings;
    let cfg = run.cfg;
    let mut s = String::new();
    let _ = writeln!(s, "# coregate load report\n");
    let _ = writeln!(s, "- command: `{}`", cfg.command_line);
    let _ = writeln!(
        s,
        "- profile: {}, mode: {}, targets: {}",
        cfg.profile.name(),
        mode_json(cfg.mode),
        cfg.targets
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "- generator cores: {:?}, source addresses: {}, connect rate: {}/s",
        cfg.cores,
        cfg.sources.len().max(1),
        cfg.connect_rate
    );
    let _ = writeln!(
        s,
        "- {} to {}{}",
        run.started_at,
        run.finished_at,
        if run.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- client caps: {} connections (fds {}, ports {}; {} binds)\n",
        run.caps.client_cap, run.caps.fd_cap, run.caps.port_cap, run.caps.binding
    );
    let _ = writeln!(s, "## Findings\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| breaking point | {} |", f.breaking_point);
    let _ = writeln!(
        s,
        "| max stable VUs | {} |",
        f.max_stable_vus.map_or("none".into(), |v| v.to_string())
    );
    let _ = writeln!(
        s,
        "| max RPS | {:.0} (at {} VUs) |",
        f.max_rps, f.max_rps_vus
    );
    let _ = writeln!(s, "| failure mode | {} |", f.failure_mode);
    let _ = writeln!(
        s,
        "| client limits hit | {} |\n",
        if f.client_limits_hit.is_empty() {
            "none".to_string()
        } else {
            f.client_limits_hit.join(", ")
        }
    );
    let _ = writeln!(s, "## Stages\n");
    let _ = writeln!(
        s,
        "| stage | VUs | RPS | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | requests | errors | error % | client CPU % | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in run.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {:.2} | {:.0} | {} |",
            r.stage,
            r.vus,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.total_requests,
            r.failed_requests,
            r.error_rate * 100.0,
            r.client_cpu_percent,
            r.verdict
                .map(|v| serde_json::to_string(&v).unwrap_or_default().replace('"', ""))
                .unwrap_or_else(|| "-".into())
        );
    }
    let errors: Vec<_> = run.rows.iter().filter(|r| !r.errors.is_empty()).collect();
    if !errors.is_empty() {
        let _ = writeln!(
            s,
            "\n## Errors by class\n\n| stage | VUs | errors |\n|---|---|---|"
        );
        for r in errors {
            let list: Vec<String> = r.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(s, "| {} | {} | {} |", r.stage, r.vus, list.join(", "));
        }
    }
    let notes: Vec<_> = run
        .rows
        .iter()
        .flat_map(|r| r.notes.iter().map(move |n| (r.stage, n)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for (stage, n) in notes {
            let _ = writeln!(s, "- stage {stage}: {n}");
        }
    }
    let _ = writeln!(
        s,
        "\n## Charts\n\n![RPS vs VUs](rps_vs_vus.svg)\n\n![Latency vs VUs](latency_vs_vus.svg)"
    );
    s
}
