//! Active health checks: an HTTP probe of every endpoint of a provider that configures
//! `health_check`, every `interval_ms`, off the shards.
//!
//! They run **once per process**, one thread per provider (blocking sockets, like the
//! resolver), and each verdict change is sent to every shard as a control message
//! ([`Control::EndpointHealth`]). Not per shard, because the endpoints are other people's
//! APIs, often metered and rate-limited: N shards probing would multiply the probes by the
//! core count for no more knowledge (the network path to a provider is the host's, not a
//! core's), and shards that probed on their own could disagree about one endpoint. What a
//! shard sees on its own requests still ejects an endpoint at once (passive health); the
//! probe adds what a shard cannot see: an endpoint that fails while it gets no traffic, and
//! one that recovered while ejected.
//!
//! An endpoint goes down after `unhealthy_threshold` failed probes in a row and up after
//! `healthy_threshold` good ones (a 2xx or 3xx within `timeout_ms`); it starts up, and its
//! first good probe is sent to the shards whatever they held (a reload starts a new prober).

use super::endpoint::{parse_endpoint, EndpointSpec};
use super::ProviderConfig;
use crate::resolver::ResolverGeneration;
use crate::shard::Control;
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// `[providers.health_check]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// The path probed with a GET.
    pub path: String,
    pub interval_ms: u64,
    /// For the whole probe: connect, TLS, request and response head.
    pub timeout_ms: u64,
    /// Good probes in a row that bring a down endpoint back.
    pub healthy_threshold: u32,
    /// Failed probes in a row that take an endpoint down.
    pub unhealthy_threshold: u32,
    /// Send the provider's credential header with the probe (for a health path that needs
    /// the key; a metered API may count the probes).
    pub send_credential: bool,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            send_credential: false,
        }
    }
}

impl HealthCheck {
    /// The error names the key under `health_check`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let path_ok = self.path.starts_with('/') && self.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return Err((
                "path",
                format!("{:?} must start with / and have no spaces", self.path),
            ));
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            return Err((
                "interval_ms",
                format!("{} is out of range (100..=3600000)", self.interval_ms),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err((
                "timeout_ms",
                format!("{} must be 1..=interval_ms", self.timeout_ms),
            ));
        }
        for (key, v) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if !(1..=100).contains(&v) {
                return Err((key, format!("{v} is out of range (1..=100)")));
            }
        }
        Ok(())
    }
}

/// One endpoint's probe state.
struct Probe {
    endpoint: usize,
    name: String,
    spec: EndpointSpec,
    up: bool,
    /// Probes in a row that disagree with `up`.
    against: u32,
    /// The shards have heard a verdict of this prober about the endpoint. Until then they
    /// may still hold a `down` from the prober of the config before a reload, so the first
    /// good probe is always sent.
    told: bool,
}

/// What every probe of one provider shares.
struct Prober {
    provider: usize,
    name: String,
    check: HealthCheck,
    /// The request, the same for every endpoint except its Host.
    credential: Option<(Vec<u8>, Vec<u8>)>,
    host: Option<String>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    tls_name: Option<String>,
}

/// Starts one thread per provider with a `health_check`; each ends when a reload replaced
/// its generation, or the shards are gone.
pub fn spawn(
    providers: &[ProviderConfig],
    shards: Vec<Sender<Control>>,
    generation: ResolverGeneration,
) {
    for (i, p) in providers.iter().enumerate() {
        let Some(check) = p.health_check.clone() else {
            continue;
        };
        let tls = match p.uses_tls() {
            true => match coregate_runtime::tls::client_config(p.verify()) {
                Ok(c) => Some(c),
                Err(e) => {
                    coregate_runtime::log::error(&format!(
                        "provider {}: health checks off: {e}",
                        p.name
                    ));
                    continue;
                }
            },
            false => None,
        };
        let prober = Prober {
            provider: i,
            name: p.name.clone(),
            credential: p.credential_header().filter(|_| check.send_credential),
            check,
            host: (!p.host.is_empty()).then(|| p.host.clone()),
            tls,
            tls_name: p.host_name().map(str::to_string),
        };
        let probes: Vec<Probe> = p
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(j, e)| {
                let spec = parse_endpoint(e).ok()?;
                Some(Probe {
                    endpoint: j,
                    name: e.clone(),
                    spec,
                    up: true,
                    against: 0,
                    told: false,
                })
            })
            .collect();
        let (shards, generation) = (shards.clone(), generation.clone());
        let spawned = std::thread::Builder::new()
            .name("coregate-health".into())
            .spawn(move || run(prober, probes, shards, generation));
        if let Err(e) = spawned {
            coregate_runtime::log::error(&format!("provider {}: health checks off: {e}", p.name));
        }
    }
}

fn run(
    prober: Prober,
    mut probes: Vec<Probe>,
    shards: Vec<Sender<Control>>,
    generation: ResolverGeneration,
) {
    let (mine, current) = generation;
    let interval = Duration::from_millis(prober.check.interval_ms);
    loop {
        let started = Instant::now();
        for probe in probes.iter_mut() {
            if current.load(Ordering::SeqCst) != mine {
                return;
            }
            let result = prober.probe(&probe.spec);
            let Some(up) = judge(probe, &prober.check, result.is_ok()) else {
                continue;
            };
            let why = result.err().unwrap_or_else(|| "answered".into());
            let line = format!(
                "provider {:?}: endpoint {} is {} (health check: {why})",
                prober.name,
                probe.name,
                if up { "up" } else { "down" }
            );
            match up {
                true => coregate_runtime::log::info(&line),
                false => coregate_runtime::log::warn(&line),
            }
            let message = Control::EndpointHealth {
                generation: mine,
                provider: prober.provider,
                endpoint: probe.endpoint,
                up,
            };
            // Every shard is told (no short cut); none left means the process is ending.
            let told = shards
                .iter()
                .filter(|s| s.send(message.clone()).is_ok())
                .count();
            if told == 0 {
                return;
            }
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

/// Folds one probe's result in; returns the new verdict when it changed (or when it is the
/// first good one: see `Probe::told`).
fn judge(probe: &mut Probe, check: &HealthCheck, ok: bool) -> Option<bool> {
    if ok && !probe.told {
        probe.told = true;
        probe.against = 0;
        return Some(true);
    }
    if ok == probe.up {
        probe.against = 0;
        return None;
    }
    probe.against += 1;
    let needed = if probe.up {
        check.unhealthy_threshold
    } else {
        check.healthy_threshold
    };
    if probe.against < needed {
        return None;
    }
    probe.up = ok;
    probe.against = 0;
    probe.told = true;
    Some(ok)
}

impl Prober {
    /// One probe: Ok when the endpoint answered 2xx or 3xx in time; Err says why not.
    fn probe(&self, spec: &EndpointSpec) -> Result<(), String> {
        let timeout = Duration::from_millis(self.check.timeout_ms);
        let addr = *spec.resolve()?.first().ok_or("resolves to no address")?;
        let tcp =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_read_timeout(Some(timeout));
        let _ = tcp.set_write_timeout(Some(timeout));
        let request = self.request(spec);
        let head = match &self.tls {
            None => exchange(tcp, &request)?,
            Some(config) => {
                let name = self.tls_name.clone().unwrap_or_else(|| spec.host.clone());
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| format!("tls: {e}"))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| format!("tls: {e}"))?;
                exchange(rustls::StreamOwned::new(conn, tcp), &request)?
            }
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => match resp.code {
                Some(200..=399) => Ok(()),
                Some(code) => Err(format!("status {code}")),
                None => Err("no status".into()),
            },
            _ => Err("malformed response head".into()),
        }
    }

    fn request(&self, spec: &EndpointSpec) -> Vec<u8> {
        let host = self.host.clone().unwrap_or_else(|| spec.authority());
        let mut r = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: coregate-health-check\r\n",
            self.check.path
        )
        .into_bytes();
        if let Some((name, value)) = &self.credential {
            r.extend_from_slice(name);
            r.extend_from_slice(b": ");
            r.extend_from_slice(value);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"Connection: close\r\n\r\n");
        r
    }
}

/// Sends `request` and reads until the end of the response head (at most 16 KiB).
fn exchange(mut stream: impl Read + Write, request: &[u8]) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err("response head over 16 KiB".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("closed before a response head".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe {
            endpoint: 0,
            name: "e".into(),
            spec: parse_endpoint("127.0.0.1:1").unwrap(),
            up: true,
            against: 0,
            told: true,
        }
    }

    #[test]
    fn the_first_good_probe_is_announced_even_when_nothing_changed() {
        let check = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            ..Default::default()
        };
        // A reload's new prober: the shards may still think the endpoint is down.
        let mut p = Probe {
            told: false,
            ..probe()
        };
        assert_eq!(judge(&mut p, &check, true), Some(true));
        assert_eq!(judge(&mut p, &check, true), None);
        // A first failure is judged by the thresholds, as before.
        let mut p = Probe {
            told: false,
            ..probe()
        };
        assert_eq!(judge(&mut p, &check, false), None);
        assert_eq!(judge(&mut p, &check, false), Some(false));
        assert_eq!(judge(&mut p, &check, true), None);
        assert_eq!(judge(&mut p, &check, true), Some(true));
    }

    #[test]
    fn thresholds_decide_both_ways_and_a_disagreement_resets() {
        let check = HealthCheck {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            ..Default::default()
        };
        let mut p = probe();
        assert_eq!(judge(&mut p, &check, false), None);
        assert_eq!(judge(&mut p, &check, false), None);
        // One good probe in between starts the count again.
        assert_eq!(judge(&mut p, &check, true), None);
        assert_eq!(judge(&mut p, &check, false), None);
        assert_eq!(judge(&mut p, &check, false), None);
        assert_eq!(judge(&mut p, &check, false), Some(false));
        assert_eq!(judge(&mut p, &check, true), None);
        assert_eq!(judge(&mut p, &check, true), Some(true));
    }

    #[test]
    fn validation_names_the_key() {
        let bad = HealthCheck {
            path: "health".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "path");
        let bad = HealthCheck {
            timeout_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "timeout_ms");
        assert!(HealthCheck::default().validate().is_ok());
    }
}
