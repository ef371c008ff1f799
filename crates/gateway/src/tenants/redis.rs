//! Tenant rates shared across machines: `[limits] backend = "redis"`.
//!
//! Each tenant's bucket lives in Redis (a hash: tokens and the time they were counted), and
//! a shard never asks Redis per request: it *leases* tokens in batches, with one atomic
//! script call (a Lua script, so two shards or two nodes never take the same tokens, timed
//! by Redis's own clock so node clocks do not matter), and spends them locally. A request
//! only reads a `Cell`; a lease is a task of its own, started when the shard's tokens run
//! low. Each shard keeps its own connection (no cross-core hop), spoken with the
//! `redis-protocol` codec over the shard's own glommio socket.
//!
//! When Redis cannot be reached (connect, write or read failing or taking over 250 ms), the
//! shard says so in the log and `/stats` and falls back to the local limiter (its share of
//! this node's limit: the nodes are not coordinated meanwhile); it tries Redis again every
//! second and goes back to leases when it answers.

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
    /// `host:port` of the Redis shared by the nodes (with `backend = "redis"`).
    pub redis: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Local,
    Redis,
}

/// The lease: refill the bucket by Redis's clock, take up to `want` whole tokens.
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
return grant
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
}

/// A shard's side of the shared limits.
pub struct RedisLimits {
    addr: SocketAddr,
    conn: RefCell<Option<Stream>>,
    /// Redis answered the last lease (false: the local limiter decides).
    pub healthy: Cell<bool>,
    retry_at: Cell<Option<Instant>>,
    leases: Vec<Lease>,
    /// Lease calls that failed (Redis down or slow).
    pub failures: Cell<u64>,
}

/// What the shard's limiter does for a request of one tenant.
pub enum Decision {
    /// A leased token was spent.
    Admit,
    /// No leased token now (a lease is under way): 429.
    Wait,
    /// Redis is down: decide locally.
    Local,
}

impl RedisLimits {
    pub fn new(addr: SocketAddr, tenants: usize) -> Rc<RedisLimits> {
        Rc::new(RedisLimits {
            addr,
            conn: RefCell::new(None),
            healthy: Cell::new(true),
            retry_at: Cell::new(None),
            leases: (0..tenants).map(|_| Lease::default()).collect(),
            failures: Cell::new(0),
        })
    }

    /// Spends a leased token of `tenant`, starting a lease when they run low. `name`,
    /// `rate` and `burst` describe the tenant's shared bucket.
    pub fn take(self: &Rc<Self>, tenant: usize, name: &str, rate: f64, burst: f64) -> Decision {
        let Some(lease) = self.leases.get(tenant) else {
            return Decision::Local;
        };
        let batch = batch(rate);
        if lease.tokens.get() <= batch / 2 && !lease.in_flight.get() && self.may_try() {
            lease.in_flight.set(true);
            let me = self.clone();
            let key = format!("coregate:bucket:{name}");
            glommio::spawn_local(async move { me.lease(tenant, key, rate, burst, batch).await })
                .detach();
        }
        if !self.healthy.get() {
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
    fn may_try(&self) -> bool {
        self.healthy.get() || self.retry_at.get().is_none_or(|t| Instant::now() >= t)
    }

    async fn lease(self: Rc<Self>, tenant: usize, key: String, rate: f64, burst: f64, want: u64) {
        let result = glommio::timer::timeout(TIMEOUT, async {
            self.call(&key, rate, burst, want).await.map_err(Into::into)
        })
        .await;
        if let Some(lease) = self.leases.get(tenant) {
            lease.in_flight.set(false);
            match result {
                Ok(granted) => {
                    lease.tokens.set(lease.tokens.get() + granted);
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
        if self.healthy.replace(false) {
            coregate_runtime::log::warn(&format!(
                "limits: Redis at {} unreachable ({why}); each node limits alone until it \
                 answers",
                self.addr
            ));
        }
    }

    /// One EVAL of the lease script; the number of tokens granted.
    async fn call(&self, key: &str, rate: f64, burst: f64, want: u64) -> std::io::Result<u64> {
        // Taken out first: the borrow must not be held across the connect below.
        let existing = self.conn.borrow_mut().take();
        let conn = match existing {
            Some(c) => c,
            None => {
                let tcp = glommio::net::TcpStream::connect_timeout(self.addr, TIMEOUT).await?;
                let _ = tcp.set_nodelay(true);
                Stream::new(tcp)
            }
        };
        let (rate, burst, want) = (rate.to_string(), burst.to_string(), want.to_string());
        let mut out = Vec::new();
        let args = ["EVAL", LEASE_SCRIPT, "1", key, &rate, &burst, &want];
        encode_command(&mut out, &args)?;
        conn.write_all(&out).await?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 256];
        let reply = loop {
            if let Some((frame, _)) = decode(&buf).map_err(std::io::Error::other)? {
                break frame;
            }
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        *self.conn.borrow_mut() = Some(conn);
        match reply {
            OwnedFrame::Integer(n) => Ok(n.max(0) as u64),
            OwnedFrame::Error(e) => Err(std::io::Error::other(format!("Redis: {e}"))),
            other => Err(std::io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }
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

/// The shared limits of `cfg`, when its backend is Redis (its address was checked).
pub fn for_config(cfg: &crate::config::Config, tenants: usize) -> Option<Rc<RedisLimits>> {
    if cfg.limits.backend != Backend::Redis {
        return None;
    }
    let addr = crate::config::parse_addr(&cfg.limits.redis).ok()?;
    Some(RedisLimits::new(addr, tenants))
}
