//! `coregate load` flags, and their translation into a checked [`LoadConfig`].
//!
//! Everything a run needs is validated here, before any thread starts: a bad flag is an
//! error that names the flag, never a panic halfway through a stage.

use super::plan::Profile;
use super::target::{RequestTemplate, Target};
use clap::Args;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `coregate load` (see docs/load.md).
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Target URLs (`http://host:port/path`, or `ws://` for WebSocket messages); virtual
    /// users are spread over them round-robin.
    #[arg(required = true)]
    pub urls: Vec<String>,
    /// Cores to run one load shard on each, e.g. `0-1` (default: all online cores).
    #[arg(long, default_value = "all")]
    pub cores: String,
    /// Single run: this many virtual users (connections) [default: 10].
    #[arg(long)]
    pub vus: Option<usize>,
    /// Open loop: requests per second over all VUs; latency is measured from the intended
    /// send time (coordinated omission corrected).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Closed loop: pause between a response and the VU's next request (e.g. `10ms`)
    /// [default: 0s]; an open loop (--rate) sets its own pace.
    #[arg(long)]
    pub think: Option<String>,
    /// Request method (default GET, or POST when a body is given).
    #[arg(short = 'X', long)]
    pub method: Option<String>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Request body, inline.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body, read from a file once at start.
    #[arg(long)]
    pub body_file: Option<PathBuf>,
    /// Local source addresses for connections: `127.0.0.2-127.0.0.60` or a comma list.
    /// Each (source, destination) pair has its own ephemeral port range.
    #[arg(long)]
    pub source: Option<String>,
    /// New connections per second over all shards while a stage ramps up (0: all at once).
    #[arg(long, default_value_t = super::DEFAULT_CONNECT_RATE)]
    pub connect_rate: u32,
    /// A request fails as a timeout when no response byte arrives for this long.
    #[arg(long, default_value = "10s")]
    pub timeout: String,
    /// A connection attempt fails as a connect timeout after this long.
    #[arg(long, default_value = "5s")]
    pub connect_timeout: String,
    /// `single` (uses --duration), `scale` (--stages), or `breaking-point` (--start/--step).
    #[arg(long, default_value = "single")]
    pub profile: String,
    /// Single run: length of the measured window [default: 10s].
    #[arg(long)]
    pub duration: Option<String>,
    /// Scale profile: VUs of each stage [default: 10,100,500,1000,2000,5000,10000].
    #[arg(long)]
    pub stages: Option<String>,
    /// Scale profile: measured window of each stage [default: 60s].
    #[arg(long)]
    pub stage_duration: Option<String>,
    /// Breaking point: VUs of the first iteration [default: 1000].
    #[arg(long)]
    pub start: Option<usize>,
    /// Breaking point: VUs added per iteration [default: 500].
    #[arg(long)]
    pub step: Option<usize>,
    /// Breaking point: stop here (default: what the client's fds and ports allow).
    #[arg(long)]
    pub max_vus: Option<usize>,
    /// Breaking point: measured window of each iteration [default: 30s].
    #[arg(long)]
    pub iteration: Option<String>,
    /// Breaking point: pause between iterations (connections stay open, idle)
    /// [default: 10s].
    #[arg(long)]
    pub cooldown: Option<String>,
    /// Breaking point: an iteration with at least this error rate breaks [default: 5%].
    #[arg(long)]
    pub error_threshold: Option<String>,
    /// Write the artifacts (stages.jsonl, summary.json, report.md, charts, ...) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Fraction of requests logged to requests.jsonl (e.g. `1%`; sampled, not per request).
    #[arg(long, default_value = "1%")]
    pub log_requests: String,
    /// Sample this process (the target) each second into resources.jsonl.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

/// Closed or open loop.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Closed {
        think: Duration,
    },
    /// Requests per second over all VUs of the run.
    Open {
        rate: f64,
    },
}

/// A validated load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub targets: Vec<Target>,
    pub request: RequestTemplate,
    pub cores: Vec<usize>,
    pub mode: Mode,
    pub sources: Vec<IpAddr>,
    pub connect_rate: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub profile: Profile,
    pub out: Option<PathBuf>,
    /// Every n-th request is logged (0: none).
    pub log_every: u64,
    pub pid: Option<i32>,
    pub progress_tty: bool,
    pub command_line: String,
}

/// Longest duration any flag accepts (7 days): keeps every deadline computable.
const MAX_DURATION_SECS: f64 = 7.0 * 86_400.0;
/// Most VUs any profile may ask for (far above what one process can hold).
const MAX_VUS: usize = 10_000_000;

/// Parses `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(flag: &str, s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    match num.trim().parse::<f64>().map(|v| v * scale) {
        Ok(secs) if (0.0..=MAX_DURATION_SECS).contains(&secs) => {
            Duration::try_from_secs_f64(secs).map_err(|e| format!("{flag}: {s:?}: {e}"))
        }
        _ => Err(format!(
            "{flag}: {s:?} is not a duration between 0 and 7 days (use e.g. 30s, 500ms, 2m)"
        )),
    }
}

/// Parses `5%` or `0.05` into a fraction in 0..=1.
pub fn parse_fraction(flag: &str, s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.parse::<f64>(),
    };
    match v {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{flag}: {s:?} is not a fraction (use e.g. 5% or 0.05)"
        )),
    }
}

/// Parses `127.0.0.2-127.0.0.60` (IPv4 range) or `a,b,c`.
pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>, String> {
    let bad = |part: &str| format!("--source: {part:?} is not an IP address or IPv4 range");
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| bad(part))?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| bad(part))?;
            let (lo, hi) = (u32::from(a), u32::from(b));
            if lo > hi || hi - lo >= 65536 {
                return Err(format!("--source: range {part:?} is reversed or too large"));
            }
            out.extend((lo..=hi).map(|v| IpAddr::V4(v.into())));
        } else {
            out.push(part.parse().map_err(|_| bad(part))?);
        }
    }
    if out.is_empty() {
        return Err("--source: no addresses given".into());
    }
    Ok(out)
}

fn parse_vu_list(s: &str) -> Result<Vec<usize>, String> {
    let stages: Result<Vec<usize>, _> = s.split(',').map(|v| v.trim().parse::<usize>()).collect();
    match stages {
        Ok(v) if !v.is_empty() && v.iter().all(|&n| n > 0 && n <= MAX_VUS) => Ok(v),
        _ => Err(format!(
            "--stages: {s:?} is not a list of positive VU counts (e.g. 10,100,1000)"
        )),
    }
}

impl LoadArgs {
    /// Refuses a flag that belongs to another profile than the one chosen: ignoring it would
    /// run something other than what was asked for (`--stages` on a single run).
    fn refuse_flags_of_other_profiles(&self) -> Result<(), String> {
        let single = [
            ("--vus", self.vus.is_some()),
            ("--duration", self.duration.is_some()),
        ];
        let scale = [
            ("--stages", self.stages.is_some()),
            ("--stage-duration", self.stage_duration.is_some()),
        ];
        let breaking = [
            ("--start", self.start.is_some()),
            ("--step", self.step.is_some()),
            ("--max-vus", self.max_vus.is_some()),
            ("--iteration", self.iteration.is_some()),
            ("--cooldown", self.cooldown.is_some()),
            ("--error-threshold", self.error_threshold.is_some()),
        ];
        let foreign: Vec<&str> = match self.profile.as_str() {
            "single" => [&scale[..], &breaking[..]].concat(),
            "scale" => [&single[..], &breaking[..]].concat(),
            "breaking-point" => [&single[..], &scale[..]].concat(),
            _ => Vec::new(),
        }
        .into_iter()
        .filter(|(_, given)| *given)
        .map(|(flag, _)| flag)
        .collect();
        if foreign.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} do not apply to --profile {} (see `coregate load --help`)",
            foreign.join(", "),
            self.profile
        ))
    }

    /// Checks every flag; `online` is the list of cores this process may use.
    pub fn into_config(self, online: &[usize], tty: bool) -> Result<LoadConfig, String> {
        let cores = coregate_runtime::cores::parse_core_list(&self.cores, online)
            .map_err(|e| format!("--cores: {e}"))?;
        let targets = self
            .urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => Some(b.clone().into_bytes()),
            (None, Some(path)) => Some(
                std::fs::read(path).map_err(|e| format!("--body-file {}: {e}", path.display()))?,
            ),
            (None, None) => None,
        };
        let request = RequestTemplate::new(self.method.as_deref(), &self.headers, body)?;
        self.refuse_flags_of_other_profiles()?;
        let think = parse_duration("--think", self.think.as_deref().unwrap_or("0s"))?;
        let mode = match self.rate {
            Some(_) if self.think.is_some() => {
                return Err(
                    "--think paces a closed loop; with --rate (an open loop) the rate \
                            sets the pace"
                        .into(),
                )
            }
            Some(r) if r.is_finite() && (0.001..=1e9).contains(&r) => Mode::Open { rate: r },
            Some(r) => return Err(format!("--rate: {r} must be between 0.001 and 1e9")),
            None => Mode::Closed { think },
        };
        let sources = match &self.source {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        let or = |v: &Option<String>, default: &'static str| v.clone().unwrap_or(default.into());
        let profile = match self.profile.as_str() {
            "single" if self.vus.unwrap_or(10) > MAX_VUS => {
                return Err(format!("--vus must be at most {MAX_VUS}"))
            }
            "single" => Profile::Single {
                vus: self.vus.unwrap_or(10).max(1),
                duration: parse_duration("--duration", &or(&self.duration, "10s"))?,
            },
            "scale" => Profile::Scale {
                stages: parse_vu_list(&or(&self.stages, "10,100,500,1000,2000,5000,10000"))?,
                stage_duration: parse_duration(
                    "--stage-duration",
                    &or(&self.stage_duration, "60s"),
                )?,
            },
            "breaking-point" => {
                let (start, step) = (self.start.unwrap_or(1000), self.step.unwrap_or(500));
                if start == 0 || step == 0 {
                    return Err("--start and --step must be at least 1".into());
                }
                if start > MAX_VUS || step > MAX_VUS || self.max_vus > Some(MAX_VUS) {
                    return Err(format!(
                        "--start, --step and --max-vus must be at most {MAX_VUS}"
                    ));
                }
                Profile::BreakingPoint {
                    start,
                    step,
                    max: self.max_vus,
                    iteration: parse_duration("--iteration", &or(&self.iteration, "30s"))?,
                    cooldown: parse_duration("--cooldown", &or(&self.cooldown, "10s"))?,
                    threshold: parse_fraction(
                        "--error-threshold",
                        &or(&self.error_threshold, "5%"),
                    )?,
                }
            }
            other => {
                return Err(format!(
                    "--profile: {other:?} is not one of single, scale, breaking-point"
                ))
            }
        };
        let log_fraction = parse_fraction("--log-requests", &self.log_requests)?;
        let log_every = if log_fraction > 0.0 {
            (1.0 / log_fraction).round().max(1.0) as u64
        } else {
            0
        };
        let timeout = parse_duration("--timeout", &self.timeout)?;
        let connect_timeout = parse_duration("--connect-timeout", &self.connect_timeout)?;
        if timeout.is_zero() || connect_timeout.is_zero() {
            return Err("--timeout and --connect-timeout must be above zero".into());
        }
        Ok(LoadConfig {
            targets,
            request,
            cores,
            mode,
            sources,
            connect_rate: self.connect_rate,
            timeout,
            connect_timeout,
            profile,
            out: self.out,
            log_every,
            pid: self.pid,
            progress_tty: tty && !self.no_progress,
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_fractions() {
        assert_eq!(parse_duration("x", "30s").unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_duration("x", "250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration("x", "2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("x", "3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("--iteration", "soon")
            .unwrap_err()
            .contains("--iteration"));
        assert_eq!(parse_fraction("x", "5%").unwrap(), 0.05);
        assert_eq!(parse_fraction("x", "0.25").unwrap(), 0.25);
        assert!(parse_fraction("x", "150%").is_err());
    }

    #[test]
    fn source_ranges() {
        let v = parse_sources("127.0.0.2-127.0.0.4,127.0.1.1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[2].to_string(), "127.0.0.4");
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
        assert_eq!(parse_vu_list("10, 100").unwrap(), vec![10, 100]);
        assert!(parse_vu_list("10,0").is_err());
    }
}
