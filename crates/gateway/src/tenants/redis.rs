//! Tenant rates shared across machines: `[limits] backend = "redis"`.
//!
//! Each tenant's bucket lives in Redis (a hash: tokens and the time they were counted), and
//! a shard never asks Redis per request: it *leases* tokens in batches, with one atomic
//! script call (a Lua script, so two shards or two nodes never take the same tokens, timed
//! by Redis's own clock so node clocks do not matter), and spends them locally. A request
//! only reads a `Cell`; a lease is a task of its own, started when the shard's tokens run
//! low. Each shard keeps its own connection (no cross-core hop), spoken with the
//! `redis-protocol` codec over the shard's own glommio socket. The script goes by its
//! digest (`EVALSHA`), sent whole (`EVAL`) only when Redis answers `NOSCRIPT`.
//!
//! Until a tenant's first lease on a shard comes back (at start and after a reload), the
//! local limiter decides its requests rather than refusing them. When the shared bucket
//! cannot fill the next batch, no lease is asked before it would have refilled one, so a
//! tenant over its limit costs about one call per batch period, not one per request.
//!
//! When Redis cannot be reached (connect, write or read failing or taking over 250 ms), the
//! shard says so in the log and `/stats` and falls back to the local limiter (its share of
//! this node's limit: the nodes are not coordinated meanwhile); it tries Redis again at
//! most once a second, when a request of a tenant with a rate arrives, and goes back to
//! leases when it answers.

use super::redis_target::RedisTarget;
use coregate_runtime::wire::Stream;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// `[limits]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub backend: Backend,
    /// `host:port` of the Redis shared by the nodes (with `backend = "redis"`): an IP
    /// literal or a DNS name, resolved at load and again after a connection failure.
    pub redis: String,
    /// Redis's password (`AUTH`), as `env:NAME` or `file:/path`; empty: none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub redis_password: String,
    /// Where `redis` resolved at load (never serialized).
    #[serde(skip)]
    pub redis_addrs: Vec<SocketAddr>,
    /// The password `redis_password` points to, read at load (never serialized or printed).
    #[serde(skip)]
    pub redis_secret: Option<crate::upstream::credentials::Secret>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

/// The lease: refill the bucket by Redis's clock, take up to `want` whole tokens; returns
/// the grant and the whole tokens left.
const LEASE_SCRIPT: &str = r#"
local rate, burst, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(b[1]), tonumber(b[2])
if tokens == nil or ts == nil then tokens, ts = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local grant = math.max(0, math.min(want, math.floor(tokens)))
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - grant), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / math.max(rate, 0.001)) + 60000)
return {grant, math.floor(tokens - grant)}
"#;

/// How long a Redis exchange may take before the shard falls back to local limits.
const TIMEOUT: Duration = Duration::from_millis(250);
/// How often Redis is tried again while it is down.
const RETRY: Duration = Duration::from_secs(1);

/// One tenant's leased tokens on one shard.
#[derive(Default)]
struct Lease {
    tokens: Cell<u64>,
    in_flight: Cell<bool>,
    /// A lease has come back since this state was made (process start or reload): until
    /// then the local limiter decides, rather than refusing while the first lease is out.
    answered: Cell<bool>,
    /// After a short grant, no new lease before this: the shared bucket is dry, and asking
    /// again at once would cost an EVAL per request.
    not_before: Cell<Option<Instant>>,
}

/// A shard's side of the shared limits.
pub struct RedisLimits {
    target: RedisTarget,
    /// The addresses the next connection tries, in turn.
    addrs: RefCell<Vec<SocketAddr>>,
    /// A resolution of the name under way on a thread of its own (after a failure).
    resolving: RefCell<Option<crossbeam_channel::Receiver<Vec<SocketAddr>>>>,
    conn: RefCell<Option<Stream>>,
    /// Redis answered the last lease (false: the local limiter decides).
    pub healthy: Cell<bool>,
    retry_at: Cell<Option<Instant>>,
    leases: Vec<Lease>,
    /// Lease calls that failed (Redis down or slow).
    pub failures: Cell<u64>,
    /// The lease script's digest, for `EVALSHA`.
    script_sha: String,
}

/// What the shard's limiter does for a request of one tenant.
pub enum Decision {
    /// A leased token was spent.
    Admit,
    /// No leased token now (a lease is under way, or the shared bucket is dry): 429.
    Wait,
    /// Redis is down: decide locally.
    Local,
}

impl RedisLimits {
    pub fn new(target: RedisTarget, tenants: usize) -> Rc<RedisLimits> {
        Rc::new(RedisLimits {
            addrs: RefCell::new(target.addrs.clone()),
            target,
            resolving: RefCell::new(None),
            conn: RefCell::new(None),
            healthy: Cell::new(true),
            retry_at: Cell::new(None),
            leases: (0..tenants).map(|_| Lease::default()).collect(),
            failures: Cell::new(0),
            script_sha: script_sha(),
        })
    }

    /// Spends a leased token of `tenant`, starting a lease when they run low. `name`,
    /// `rate` and `burst` describe the tenant's shared bucket.
    pub fn take(self: &Rc<Self>, tenant: usize, name: &str, rate: f64, burst: f64) -> Decision {
        let Some(lease) = self.leases.get(tenant) else {
            return Decision::Local;
        };
        let batch = batch(rate);
        let now = Instant::now();
        let backed_off = lease.not_before.get().is_some_and(|t| now < t);
        if lease.tokens.get() <= batch / 2
            && !lease.in_flight.get()
            && !backed_off
            && self.may_try(now)
        {
            lease.in_flight.set(true);
            let me = self.clone();
            let key = format!("coregate:bucket:{name}");
            glommio::spawn_local(async move { me.lease(tenant, key, rate, burst, batch).await })
                .detach();
        }
        if !self.healthy.get() || !lease.answered.get() {
            return Decision::Local;
        }
        match lease.tokens.get() {
            0 => Decision::Wait,
            n => {
                lease.tokens.set(n - 1);
                Decision::Admit
            }
        }
    }

    /// Whether Redis may be asked now (always while healthy; once per `RETRY` while down).
    fn may_try(&self, now: Instant) -> bool {
        self.healthy.get() || self.retry_at.get().is_none_or(|t| now >= t)
    }

    async fn lease(self: Rc<Self>, tenant: usize, key: String, rate: f64, burst: f64, want: u64) {
        let result = glommio::timer::timeout(TIMEOUT, async {
            self.call(&key, rate, burst, want).await.map_err(Into::into)
        })
        .await;
        if let Some(lease) = self.leases.get(tenant) {
            lease.in_flight.set(false);
            match result {
                Ok((granted, left)) => {
                    lease.tokens.set(lease.tokens.get() + granted);
                    lease.answered.set(true);
                    // The shared bucket cannot fill the next batch: no lease before it
                    // would have refilled one, or each request over the limit would cost a
                    // call that grants (next to) nothing.
                    let missing = want.saturating_sub(left) as f64;
                    let wait = Duration::from_secs_f64((missing / rate).min(1.0));
                    lease
                        .not_before
                        .set((missing > 0.0).then(|| Instant::now() + wait));
                    if !self.healthy.replace(true) {
                        coregate_runtime::log::info("limits: Redis answers again: shared limits");
                    }
                }
                Err(e) => self.down(&e.to_string()),
            }
        }
    }

    fn down(&self, why: &str) {
        self.conn.borrow_mut().take();
        self.failures.set(self.failures.get() + 1);
        self.retry_at.set(Some(Instant::now() + RETRY));
        self.resolve_again();
        if self.healthy.replace(false) {
            coregate_runtime::log::warn(&format!(
                "limits: Redis at {} unreachable ({why}); each node limits alone until it \
                 answers",
                self.target.name
            ));
        }
    }

    /// After a failure, resolves a DNS name again on a thread of its own (getaddrinfo
    /// blocks, and a shard never waits for it); the next connection after it answers
    /// uses the new addresses. A name that no longer resolves keeps the last ones.
    fn resolve_again(&self) {
        if !self.target.is_dns_name() || self.resolving.borrow().is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let name = self.target.name.clone();
        let started = std::thread::Builder::new()
            .name("coregate-redis-resolve".into())
            .spawn(move || {
                if let Ok(addrs) = super::redis_target::resolve(&name) {
                    let _ = tx.send(addrs);
                }
            });
        if started.is_ok() {
            *self.resolving.borrow_mut() = Some(rx);
        }
    }

    /// Takes the addresses of a finished resolution, if one came back.
    fn take_resolved(&self) {
        let mut resolving = self.resolving.borrow_mut();
        let Some(rx) = resolving.as_ref() else {
            return;
        };
        match rx.try_recv() {
            Ok(addrs) => {
                *self.addrs.borrow_mut() = addrs;
                *resolving = None;
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => *resolving = None,
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
    }

    /// A new connection: each address in turn, then `AUTH` when there is a password.
    async fn connect(&self) -> std::io::Result<Stream> {
        self.take_resolved();
        let addrs = self.addrs.borrow().clone();
        let mut last = std::io::Error::other("no address");
        for addr in addrs {
            match glommio::net::TcpStream::connect_timeout(addr, TIMEOUT).await {
                Ok(tcp) => {
                    let _ = tcp.set_nodelay(true);
                    let conn = Stream::new(tcp);
                    if let Some(auth) = self.target.auth_command() {
                        let reply = exchange(&conn, &[&auth[..]]).await?;
                        if let OwnedFrame::Error(e) = reply {
                            return Err(std::io::Error::other(format!("AUTH: {e}")));
                        }
                    }
                    return Ok(conn);
                }
                Err(e) => last = e.into(),
            }
        }
        Err(last)
    }

    /// One lease call; the number of tokens granted. The script goes by its digest
    /// (`EVALSHA`); only when Redis does not have it yet (a new or restarted Redis:
    /// `NOSCRIPT`) is the whole script sent, with `EVAL`, which also loads it.
    async fn call(
        &self,
        key: &str,
        rate: f64,
        burst: f64,
        want: u64,
    ) -> std::io::Result<(u64, u64)> {
        // Taken out first: the borrow must not be held across the connect below.
        let existing = self.conn.borrow_mut().take();
        let conn = match existing {
            Some(c) => c,
            None => self.connect().await?,
        };
        let (rate, burst, want) = (rate.to_string(), burst.to_string(), want.to_string());
        let args = [key, &rate, &burst, &want];
        let mut reply = exchange(&conn, &[&["EVALSHA", &self.script_sha, "1"], &args[..]]).await?;
        if matches!(&reply, OwnedFrame::Error(e) if e.starts_with("NOSCRIPT")) {
            reply = exchange(&conn, &[&["EVAL", LEASE_SCRIPT, "1"], &args[..]]).await?;
        }
        *self.conn.borrow_mut() = Some(conn);
        let count = |f: Option<&OwnedFrame>| match f {
            Some(OwnedFrame::Integer(n)) => Some((*n).max(0) as u64),
            _ => None,
        };
        match reply {
            OwnedFrame::Array(a) if a.len() == 2 => match (count(a.first()), count(a.get(1))) {
                (Some(granted), Some(left)) => Ok((granted, left)),
                _ => Err(std::io::Error::other(format!("unexpected reply {a:?}"))),
            },
            OwnedFrame::Error(e) => Err(std::io::Error::other(format!("Redis: {e}"))),
            other => Err(std::io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }
}

/// Sends one command (its arguments in parts) and reads its reply.
async fn exchange(conn: &Stream, parts: &[&[&str]]) -> std::io::Result<OwnedFrame> {
    let args: Vec<&str> = parts.concat();
    let mut out = Vec::new();
    encode_command(&mut out, &args)?;
    conn.write_all(&out).await?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    loop {
        if let Some((frame, _)) = decode(&buf).map_err(std::io::Error::other)? {
            return Ok(frame);
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The lease script's SHA-1 in hex, as `EVALSHA` names it.
fn script_sha() -> String {
    let d = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        LEASE_SCRIPT.as_bytes(),
    );
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Appends a Redis command (an array of bulk strings) to `out`: the one encoder of the
/// shard leases and the fleet usage totals.
pub fn encode_command(out: &mut Vec<u8>, args: &[&str]) -> std::io::Result<()> {
    let frame = OwnedFrame::Array(
        args.iter()
            .map(|a| OwnedFrame::BulkString(a.as_bytes().to_vec()))
            .collect(),
    );
    let at = out.len();
    out.resize(at + frame.encode_len(false), 0);
    encode(&mut out[at..], &frame, false).map_err(std::io::Error::other)?;
    Ok(())
}

/// Tokens leased at a time: about 50 ms of the rate, at least one.
fn batch(rate: f64) -> u64 {
    (rate * 0.05).ceil().max(1.0) as u64
}

/// The shared limits of `cfg`, when its backend is Redis (its address was resolved at load).
pub fn for_config(cfg: &crate::config::Config, tenants: usize) -> Option<Rc<RedisLimits>> {
    let target = RedisTarget::of(&cfg.limits)?;
    Some(RedisLimits::new(target, tenants))
}
