//! Fleet-wide usage totals in Redis (with `[limits] backend = "redis"`): every node adds its
//! tenants' usage to one hash per tenant per UTC day, so any tool reads the fleet's totals
//! with `HGETALL coregate:usage:TENANT:YYYY-MM-DD` (fields `requests`, `audio_ms`,
//! `tts_chars`, `bytes_up`, `bytes_down`, `ws_sessions`; kept 35 days).
//!
//! The aggregator hands each interval's increments to a thread of its own, which alone talks
//! to Redis (blocking, 250 ms timeouts, one script call per batch): neither a shard nor the
//! aggregator ever waits for Redis. Each batch has an id (this process's node id and a
//! sequence number), and one Lua script applies its increments only if `SET id NX EX 86400`
//! succeeds: a batch whose answer was lost (a timeout, a connection cut after Redis applied
//! it) is sent again as it was, under the same id, and counted once. Increments that arrive
//! meanwhile wait for the next batch, so a Redis outage loses nothing unless the process
//! ends meanwhile.

use crate::tenants::redis::encode_command;
use crate::tenants::redis_target::RedisTarget;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::types::OwnedFrame;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One tenant's increments: (field, amount).
pub type Increments = BTreeMap<String, BTreeMap<&'static str, u64>>;

const TIMEOUT: Duration = Duration::from_millis(250);
const KEEP_DAYS: u64 = 35;

/// Starts the writer thread; the aggregator sends it each interval's increments.
pub fn start(target: RedisTarget) -> Option<Sender<Increments>> {
    let (tx, rx) = crossbeam_channel::bounded::<Increments>(64);
    std::thread::Builder::new()
        .name("coregate-fleet-usage".into())
        .spawn(move || run(target, rx))
        .ok()?;
    Some(tx)
}

/// Applies a batch once: `KEYS[1]` is the batch id, `KEYS[2..]` the usage hashes;
/// `ARGV`: the id's TTL, the hashes' TTL, then per hash its field count and field/amount
/// pairs. Returns 1 when applied, 0 when this batch was applied before.
const BATCH_SCRIPT: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local i = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', KEYS[k], ARGV[2])
end
return 1
"#;

/// How long Redis remembers a batch id (a batch retried later would count again).
const BATCH_ID_TTL_S: u64 = 86_400;

/// One interval's increments (or several, after a failure), fixed once formed so that a
/// retry sends exactly what the lost attempt did.
struct Batch {
    id: String,
    day: String,
    increments: Increments,
}

/// How soon a batch that Redis did not take is sent again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

fn run(mut target: RedisTarget, rx: Receiver<Increments>) {
    let node = node_id();
    let mut sequence = 0u64;
    let (mut waiting, mut batch) = (Increments::new(), None::<Batch>);
    let mut conn: Option<TcpStream> = None;
    loop {
        // A failed batch is tried again within RETRY_EVERY, traffic or not; the last try
        // is made when the process ends (the channel closes).
        let last = match rx.recv_timeout(RETRY_EVERY) {
            Ok(more) => {
                merge(&mut waiting, more);
                false
            }
            Err(RecvTimeoutError::Timeout) if batch.is_none() => continue,
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // The batch in hand (one that failed) goes first, as it was; then the waiting ones.
        for _ in 0..2 {
            if batch.is_none() && !waiting.is_empty() {
                sequence += 1;
                batch = Some(Batch {
                    id: format!("coregate:batch:{node}:{sequence}"),
                    day: utc_day(),
                    increments: std::mem::take(&mut waiting),
                });
            }
            let Some(b) = &batch else { break };
            match write(&target, &mut conn, b) {
                Ok(()) => batch = None,
                Err(e) => {
                    conn = None;
                    coregate_runtime::log::warn(&format!(
                        "usage: cannot add the fleet totals in Redis at {} ({e}); the batch is \
                         sent again within {RETRY_EVERY:?}",
                        target.name
                    ));
                    // This thread may block: a DNS name is resolved again at once.
                    if target.is_dns_name() {
                        if let Ok(addrs) = crate::tenants::redis_target::resolve(&target.name) {
                            target.addrs = addrs;
                        }
                    }
                    break;
                }
            }
        }
        if last {
            return;
        }
    }
}

fn merge(into: &mut Increments, more: Increments) {
    for (tenant, fields) in more {
        let row = into.entry(tenant).or_default();
        for (f, n) in fields {
            *row.entry(f).or_default() += n;
        }
    }
}

/// This process among the fleet's: host name, process id and start time, so that two
/// nodes (or a restarted one) never share batch ids.
fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}:{}:{started}", host.trim(), std::process::id())
}

/// A new connection: each address in turn, then `AUTH` when there is a password.
fn connect(target: &RedisTarget) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no address");
    for addr in &target.addrs {
        match TcpStream::connect_timeout(addr, TIMEOUT) {
            Ok(mut s) => {
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                if let Some(auth) = target.auth_command() {
                    let mut out = Vec::new();
                    encode_command(&mut out, &auth)?;
                    s.write_all(&out)?;
                    read_replies(&mut s, 1)?;
                }
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Applies `batch` with one script call (applied once, whatever the retries).
fn write(target: &RedisTarget, conn: &mut Option<TcpStream>, batch: &Batch) -> std::io::Result<()> {
    if conn.is_none() {
        *conn = Some(connect(target)?);
    }
    let Some(s) = conn.as_mut() else {
        return Ok(());
    };
    let mut keys = vec![batch.id.clone()];
    let mut argv = vec![BATCH_ID_TTL_S.to_string(), (KEEP_DAYS * 86_400).to_string()];
    for (tenant, fields) in &batch.increments {
        let fields: Vec<_> = fields.iter().filter(|(_, n)| **n > 0).collect();
        keys.push(format!("coregate:usage:{tenant}:{}", batch.day));
        argv.push(fields.len().to_string());
        for (field, n) in fields {
            argv.push((*field).to_string());
            argv.push(n.to_string());
        }
    }
    let count = keys.len().to_string();
    let mut args: Vec<&str> = vec!["EVAL", BATCH_SCRIPT, &count];
    args.extend(keys.iter().map(String::as_str));
    args.extend(argv.iter().map(String::as_str));
    let mut out = Vec::new();
    encode_command(&mut out, &args)?;
    s.write_all(&out)?;
    read_replies(s, 1)
}

/// Reads `commands` replies; an error reply fails the whole.
fn read_replies(s: &mut TcpStream, commands: usize) -> std::io::Result<()> {
    let (mut buf, mut chunk, mut replies) = (Vec::new(), [0u8; 4096], 0);
    while replies < commands {
        match decode(&buf).map_err(std::io::Error::other)? {
            Some((OwnedFrame::Error(e), _)) => return Err(std::io::Error::other(e)),
            Some((_, used)) => {
                buf.drain(..used);
                replies += 1;
            }
            None => {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    Ok(())
}

/// Today's UTC date, `YYYY-MM-DD`.
fn utc_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = coregate_http1::reply::civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}
