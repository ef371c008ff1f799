//! Where the shared Redis is (`[limits] redis`, `redis_password`): the address resolved
//! when the config loads (a name that does not resolve is a config error naming the key),
//! resolved again after a connection failure, and the password sent with `AUTH` on every new
//! connection. The password is read from `env:` or `file:` like a provider key, and never
//! printed (`check` shows where it comes from).

use super::redis::{Backend, LimitsConfig};
use crate::upstream::credentials::{load_secret, Secret};
use std::net::{SocketAddr, ToSocketAddrs};

/// Checks the form of `host:port` (an IP literal, `[v6]:port`, or a DNS name).
pub fn check_form(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{s:?} is not host:port (e.g. redis.internal:6379 or 10.0.0.5:6379)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || host.contains(':') || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// Every address `host:port` stands for now (blocking: never on a shard's executor).
pub fn resolve(s: &str) -> Result<Vec<SocketAddr>, String> {
    check_form(s)?;
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("{s:?} does not resolve: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{s:?} resolves to no address"));
    }
    Ok(addrs)
}

/// Resolves `limits.redis` and reads `limits.redis_password`, with the Redis backend;
/// errors carry the dotted key.
pub fn prepare(limits: &mut LimitsConfig) -> Result<(), (String, String)> {
    if limits.backend != Backend::Redis {
        return Ok(());
    }
    limits.redis_addrs = resolve(&limits.redis).map_err(|m| ("limits.redis".into(), m))?;
    if !limits.redis_password.is_empty() {
        let secret = load_secret(&limits.redis_password)
            .map_err(|m| ("limits.redis_password".to_string(), m))?;
        limits.redis_secret = Some(secret);
    }
    Ok(())
}

/// Where a node's Redis connections go, shared by the shards' leases and the fleet
/// totals' writer.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    /// `host:port` as configured, for logs and for resolving again.
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub password: Option<Secret>,
}

impl RedisTarget {
    pub fn of(limits: &LimitsConfig) -> Option<RedisTarget> {
        (limits.backend == Backend::Redis && !limits.redis_addrs.is_empty()).then(|| RedisTarget {
            name: limits.redis.clone(),
            addrs: limits.redis_addrs.clone(),
            password: limits.redis_secret.clone(),
        })
    }

    /// Whether `name` is a DNS name (worth resolving again after a failure).
    pub fn is_dns_name(&self) -> bool {
        self.name.parse::<SocketAddr>().is_err()
    }

    /// `AUTH PASSWORD`, when there is a password.
    pub fn auth_command(&self) -> Option<[&str; 2]> {
        self.password.as_ref().map(|p| ["AUTH", p.expose()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_takes_ip_literals_and_dns_names_with_a_port() {
        assert!(check_form("10.0.0.5:6379").is_ok());
        assert!(check_form("[::1]:6379").is_ok());
        assert!(check_form("redis.internal:6379").is_ok());
        assert!(check_form("redis.internal").is_err());
        assert!(check_form(":6379").is_err());
        assert!(check_form("redis:port").is_err());
        assert!(check_form("::1:6379").is_err());
        assert_eq!(
            resolve("127.0.0.1:7").unwrap(),
            vec!["127.0.0.1:7".parse().unwrap()]
        );
        assert!(resolve("no-such-host.invalid:6379").is_err());
    }
}
