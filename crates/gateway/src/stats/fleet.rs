//! Fleet-wide usage totals in Redis (with `[limits] backend = "redis"`): every node adds its
//! tenants' usage to one hash per tenant per UTC day, so any tool reads the fleet's totals
//! with `HGETALL coregate:usage:TENANT:YYYY-MM-DD` (fields `requests`, `audio_ms`,
//! `tts_chars`, `bytes_up`, `bytes_down`, `ws_sessions`; kept 35 days).
//!
//! The aggregator hands each interval's increments to a thread of its own, which alone talks
//! to Redis (blocking, 250 ms timeouts, one pipelined round trip per interval): neither a
//! shard nor the aggregator ever waits for Redis. Increments that could not be written are
//! kept (merged) and sent with the next interval's, so a Redis outage loses nothing unless the
//! process ends meanwhile.

use crate::tenants::redis::encode_command;
use crate::tenants::redis_target::RedisTarget;
use crossbeam_channel::{Receiver, Sender};
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

fn run(mut target: RedisTarget, rx: Receiver<Increments>) {
    let mut pending = Increments::new();
    let mut conn: Option<TcpStream> = None;
    while let Ok(more) = rx.recv() {
        for (tenant, fields) in more {
            let row = pending.entry(tenant).or_default();
            for (f, n) in fields {
                *row.entry(f).or_default() += n;
            }
        }
        match write(&target, &mut conn, &pending) {
            Ok(()) => pending.clear(),
            Err(e) => {
                conn = None;
                coregate_runtime::log::warn(&format!(
                    "usage: cannot add the fleet totals in Redis at {} ({e}); kept for the \
                     next interval",
                    target.name
                ));
                // This thread may block: a DNS name is resolved again at once.
                if target.is_dns_name() {
                    if let Ok(addrs) = crate::tenants::redis_target::resolve(&target.name) {
                        target.addrs = addrs;
                    }
                }
            }
        }
    }
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

/// Sends every increment in one pipeline and reads the replies.
fn write(
    target: &RedisTarget,
    conn: &mut Option<TcpStream>,
    pending: &Increments,
) -> std::io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    if conn.is_none() {
        *conn = Some(connect(target)?);
    }
    let Some(s) = conn.as_mut() else {
        return Ok(());
    };
    let day = utc_day();
    let mut out = Vec::new();
    let mut commands = 0;
    for (tenant, fields) in pending {
        let key = format!("coregate:usage:{tenant}:{day}");
        for (field, n) in fields.iter().filter(|(_, n)| **n > 0) {
            encode_command(&mut out, &["HINCRBY", &key, field, &n.to_string()])?;
            commands += 1;
        }
        let ttl = (KEEP_DAYS * 86_400).to_string();
        encode_command(&mut out, &["EXPIRE", &key, &ttl])?;
        commands += 1;
    }
    s.write_all(&out)?;
    read_replies(s, commands)
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
