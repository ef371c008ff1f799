//! Host-name resolution, off the shards.
//!
//! Resolution is blocking (getaddrinfo), so no shard ever does it. The server resolves
//! every endpoint once before the shards start (a name that does not resolve is a start-up
//! error naming its key); then this module's thread resolves names again every provider's
//! `resolve_interval_ms` and sends each shard a [`Control::Addresses`] message when a set
//! changed. A failed re-resolution keeps the last good set, is logged and is counted.
//! getaddrinfo gives no TTL, so the interval is the refresh period (see docs/providers.md).

use crate::shard::Control;
use crate::upstream::endpoint::{parse_endpoint, EndpointSpec};
use crate::upstream::ProviderConfig;
use crossbeam_channel::Sender;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where every endpoint resolved: `[provider][endpoint]`.
pub type Addresses = Vec<Vec<Vec<SocketAddr>>>;

/// Resolves every endpoint now; the error carries the endpoint's dotted key.
pub fn resolve_all(providers: &[ProviderConfig]) -> Result<Addresses, (String, String)> {
    providers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.endpoints
                .iter()
                .enumerate()
                .map(|(j, e)| {
                    let key = || format!("providers[{i}].endpoints[{j}]");
                    parse_endpoint(e)
                        .and_then(|spec| spec.resolve())
                        .map_err(|m| (key(), m))
                })
                .collect()
        })
        .collect()
}

/// One host-name endpoint the thread keeps resolving.
struct Watched {
    provider: usize,
    endpoint: usize,
    name: String,
    spec: EndpointSpec,
    interval: Duration,
    due: Instant,
    current: Vec<SocketAddr>,
}

/// Which config generation a resolver thread serves, and the process's current one: the
/// thread ends when a reload moved on (a new thread took over).
pub type ResolverGeneration = (u64, Arc<AtomicU64>);

/// Starts the resolver thread if any endpoint is a host name. `shards` are the shards'
/// control channels; the thread ends when they are gone or when a reload replaced it.
pub fn spawn(
    providers: &[ProviderConfig],
    initial: &Addresses,
    shards: Vec<Sender<Control>>,
    generation: ResolverGeneration,
) -> std::io::Result<()> {
    let mut watched = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        for (j, e) in p.endpoints.iter().enumerate() {
            let Ok(spec) = parse_endpoint(e) else {
                continue;
            };
            if spec.ip.is_some() {
                continue;
            }
            let interval = Duration::from_millis(p.resolve_interval_ms);
            watched.push(Watched {
                provider: i,
                endpoint: j,
                name: p.name.clone(),
                spec,
                interval,
                due: Instant::now() + interval,
                current: initial
                    .get(i)
                    .and_then(|a| a.get(j))
                    .cloned()
                    .unwrap_or_default(),
            });
        }
    }
    if watched.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("coregate-resolver".into())
        .spawn(move || run(watched, shards, generation))?;
    Ok(())
}

fn run(mut watched: Vec<Watched>, shards: Vec<Sender<Control>>, generation: ResolverGeneration) {
    let (mine, current) = generation;
    loop {
        let next = watched
            .iter()
            .map(|w| w.due)
            .min()
            .unwrap_or_else(Instant::now);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        if current.load(Ordering::SeqCst) != mine {
            return;
        }
        let now = Instant::now();
        for w in watched.iter_mut().filter(|w| w.due <= now) {
            w.due = now + w.interval;
            if !refresh(w, &shards, mine) {
                return;
            }
        }
    }
}

/// Resolves one name again and tells the shards if its set changed. Returns false when
/// the shards are gone.
fn refresh(w: &mut Watched, shards: &[Sender<Control>], generation: u64) -> bool {
    let (provider, endpoint) = (w.provider, w.endpoint);
    let message = match w.spec.resolve() {
        Ok(addrs) if addrs == w.current => return true,
        Ok(addrs) => {
            coregate_runtime::log::info(&format!(
                "provider {}: {} now resolves to {addrs:?} (was {:?})",
                w.name, w.spec.host, w.current
            ));
            w.current = addrs.clone();
            Control::Addresses {
                generation,
                provider,
                endpoint,
                addrs,
            }
        }
        Err(e) => {
            coregate_runtime::log::warn(&format!(
                "provider {}: re-resolving failed, keeping {:?}: {e}",
                w.name, w.current
            ));
            Control::ResolveFailed { provider }
        }
    };
    let mut alive = false;
    for (id, s) in shards.iter().enumerate() {
        // A failure is counted once (by shard 0); every shard takes a new set.
        if matches!(message, Control::ResolveFailed { .. }) && id > 0 {
            continue;
        }
        alive |= s.send(message.clone()).is_ok();
    }
    alive
}
