//! Provider endpoints as the config spells them: `host:port`, `http://host[:port]` or
//! `https://host[:port]`, where host is a DNS name or an IP literal (`[::1]` for IPv6).
//!
//! Resolution is blocking (getaddrinfo, so `/etc/hosts` and nsswitch apply as they do for
//! every other program on the host) and therefore never runs on a shard: the server
//! resolves every name once before the shards start, and the resolver thread
//! (`crate::resolver`) again every `resolve_interval_ms`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// One parsed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `https://`: TLS to the provider.
    pub tls: bool,
    /// The host as written, without brackets.
    pub host: String,
    pub port: u16,
    /// Set when the host is an IP literal: no resolution needed.
    pub ip: Option<IpAddr>,
}

impl EndpointSpec {
    /// `host[:port]` for a Host header: the port is left out when it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = match self.ip {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The addresses to connect to, now (blocking for a DNS name).
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        if let Some(ip) = self.ip {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let mut addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {:?}: {e}", self.host))?
            .collect();
        // A stable order, so that an unchanged answer in another order is no change.
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return Err(format!("{:?} resolved to no address", self.host));
        }
        Ok(addrs)
    }
}

/// Parses an endpoint; the error says what is wrong with it.
pub fn parse_endpoint(s: &str) -> Result<EndpointSpec, String> {
    let (tls, rest, default_port) = if let Some(r) = s.strip_prefix("https://") {
        (true, r, Some(443))
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r, Some(80))
    } else if s.contains("://") {
        return Err(format!("{s:?}: the scheme must be http:// or https://"));
    } else {
        (false, s, None)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(format!(
            "{s:?}: an endpoint is scheme://host:port only (paths belong in a route's rewrite)"
        ));
    }
    let (host, port) = split_host_port(rest).ok_or_else(|| {
        format!("{s:?} is not host:port, http://host[:port] or https://host[:port]")
    })?;
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: port is not a number 1-65535"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("{s:?}: needs a port (host:port)")),
    };
    let ip = host.parse::<IpAddr>().ok();
    if ip.is_none() && !is_dns_name(host) {
        return Err(format!("{s:?}: {host:?} is not a host name or IP address"));
    }
    Ok(EndpointSpec {
        tls,
        host: host.to_string(),
        port,
        ip,
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(super) fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(r) = s.strip_prefix('[') {
        let (host, after) = r.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address without brackets is ambiguous: refuse it.
        Some((h, _)) if h.contains(':') => None,
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_an_operator_writes() {
        let e = parse_endpoint("https://api.openai.com").unwrap();
        assert!(e.tls && e.port == 443 && e.ip.is_none());
        assert_eq!(e.authority(), "api.openai.com");
        let e = parse_endpoint("http://localhost:9000/").unwrap();
        assert!(!e.tls && e.port == 9000);
        assert_eq!(e.authority(), "localhost:9000");
        let e = parse_endpoint("127.0.0.1:8080").unwrap();
        assert_eq!(e.ip, Some(IpAddr::from([127, 0, 0, 1])));
        let e = parse_endpoint("https://[::1]:8443").unwrap();
        assert_eq!(e.authority(), "[::1]:8443");
        assert_eq!(e.resolve().unwrap(), vec!["[::1]:8443".parse().unwrap()]);
    }

    #[test]
    fn a_host_setting_gives_its_name_without_port_or_brackets() {
        let name = |host: &str| {
            let p = super::super::ProviderConfig {
                host: host.into(),
                ..Default::default()
            };
            p.host_name().map(str::to_string)
        };
        assert_eq!(
            name("api.example.test:443").as_deref(),
            Some("api.example.test")
        );
        assert_eq!(
            name("api.example.test").as_deref(),
            Some("api.example.test")
        );
        assert_eq!(name("[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(name("[::1]").as_deref(), Some("::1"));
        assert_eq!(name(""), None);
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for bad in [
            "api.openai.com",
            "ftp://x:1",
            "https://x/v1",
            "https://u@x",
            "::1:80",
            "x:0",
            "x:99999",
            "bad_name:80",
            "https://",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
