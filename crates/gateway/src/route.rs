//! The route table: which requests the gateway answers itself and which go to a provider.
//!
//! Each shard owns its own copy, built once from the config; lookups are a linear scan over
//! a handful of prefixes (longest prefix wins), cheaper than any shared structure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Path prefix to match (must start with `/`).
    pub prefix: String,
    /// Match only requests for this Host (case-insensitive, port ignored); empty = any host.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
    /// Name of the `[[providers]]` entry to forward to.
    pub provider: String,
    /// Remove the prefix from the forwarded path (`/stt/v1/x` → `/v1/x`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the prefix with this path instead (takes precedence over `strip_prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Headers added to (or replacing those of) the forwarded request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed from the forwarded request (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// Protocols a client may switch to through this route (`Upgrade`, RFC 9110 §7.8);
    /// others are stripped and the request goes on as an ordinary one. `h2c` is never
    /// allowed: it would hand the client's connection to the provider past every rule.
    #[serde(default = "default_upgrade_protocols")]
    pub upgrade_protocols: Vec<String>,
}

fn default_upgrade_protocols() -> Vec<String> {
    vec!["websocket".to_string()]
}

impl Default for RouteConfig {
    fn default() -> RouteConfig {
        RouteConfig {
            prefix: String::new(),
            host: String::new(),
            provider: String::new(),
            strip_prefix: false,
            rewrite: None,
            add_headers: BTreeMap::new(),
            remove_headers: Vec::new(),
            upgrade_protocols: default_upgrade_protocols(),
        }
    }
}

/// Checks routes against the provider names; errors carry the dotted key.
pub fn validate_routes(routes: &[RouteConfig], providers: &[&str]) -> Result<(), (String, String)> {
    for (i, r) in routes.iter().enumerate() {
        let key = |k: &str| format!("routes[{i}].{k}");
        if !r.prefix.starts_with('/') {
            return Err((key("prefix"), format!("{:?} must start with '/'", r.prefix)));
        }
        if !providers.contains(&r.provider.as_str()) {
            return Err((
                key("provider"),
                format!("no provider named {:?} is defined", r.provider),
            ));
        }
        if let Some(rw) = &r.rewrite {
            if !rw.starts_with('/') {
                return Err((key("rewrite"), format!("{rw:?} must start with '/'")));
            }
        }
        if r.strip_prefix && r.rewrite.is_some() {
            return Err((
                key("strip_prefix"),
                "strip_prefix and rewrite both replace the prefix: keep one (strip_prefix = \
                 true is rewrite = \"\")"
                    .into(),
            ));
        }
        if let Some(j) = routes[..i]
            .iter()
            .position(|q| q.prefix == r.prefix && q.host.eq_ignore_ascii_case(&r.host))
        {
            return Err((
                key("prefix"),
                format!(
                    "routes[{j}] has the same prefix {:?} and host {:?}: only one of them \
                     could ever match",
                    r.prefix, r.host
                ),
            ));
        }
        check_added_headers(&r.add_headers).map_err(|m| (key("add_headers"), m))?;
        for name in &r.remove_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    key("remove_headers"),
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        for p in &r.upgrade_protocols {
            if p.eq_ignore_ascii_case("h2c") {
                return Err((
                    key("upgrade_protocols"),
                    "\"h2c\" cannot be tunnelled: the client would speak HTTP/2 to the provider \
                     past the gateway's routes and header rules (h2c smuggling)"
                        .to_string(),
                ));
            }
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err((
                    key("upgrade_protocols"),
                    format!("{p:?} is not a protocol name"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks an `add_headers` table: valid names and values, and none of the fields the
/// gateway writes itself. A second `Host` makes providers answer 400; `Content-Length`,
/// `Transfer-Encoding` or a hop-by-hop field would contradict the framing and connection
/// handling the gateway sends, and requests would hang or be refused.
pub fn check_added_headers(headers: &BTreeMap<String, String>) -> Result<(), String> {
    const OWN: [&str; 11] = [
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "http2-settings",
        "via",
    ];
    for (name, value) in headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("{name:?} is not a header name"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!("value of {name:?} is not valid"));
        }
        if name.eq_ignore_ascii_case("host") {
            return Err(
                "\"Host\" cannot be added (the provider would get two): set `host` \
                        on the provider instead"
                    .into(),
            );
        }
        if OWN.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return Err(format!(
                "{name:?} is written by the gateway itself (framing and connection fields \
                 follow each request); it cannot be added"
            ));
        }
    }
    Ok(())
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `GET /` and `GET /health`: answered by the shard itself.
    Health,
    /// Forward with route `n` of the table.
    Route(usize),
    NotFound,
}

/// A compiled route: provider resolved to its index, header names lower-cased.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: Vec<u8>,
    /// The prefix as the config writes it (for tenants' allow-lists, usage and logs).
    pub name: std::rc::Rc<str>,
    pub host: Vec<u8>,
    pub provider: usize,
    /// What replaces the prefix in the forwarded path (`None` = keep the path as is).
    pub replace_prefix: Option<Vec<u8>>,
    pub add_headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Lower-cased names to drop, including those replaced by `add_headers`.
    pub remove_headers: Vec<Vec<u8>>,
    /// Lower-cased protocol names a client may upgrade to.
    pub upgrade_protocols: Vec<Vec<u8>>,
}

impl Route {
    /// Whether a protocol from an `Upgrade` field (`name` or `name/version`) may be
    /// switched to on this route.
    pub fn allows_upgrade(&self, protocol: &[u8]) -> bool {
        let name = protocol.split(|&b| b == b'/').next().unwrap_or(protocol);
        self.upgrade_protocols
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles `routes`; a route's provider is its index in `providers` (the names, in
    /// the order of the shard's provider list).
    pub fn new(routes: &[RouteConfig], providers: &[&str]) -> RouteTable {
        let mut compiled: Vec<Route> = routes
            .iter()
            .filter_map(|r| {
                let provider = providers.iter().position(|p| *p == r.provider)?;
                let replace_prefix = match (&r.rewrite, r.strip_prefix) {
                    (Some(rw), _) => Some(rw.as_bytes().to_vec()),
                    (None, true) => Some(Vec::new()),
                    (None, false) => None,
                };
                let add_headers: Vec<(Vec<u8>, Vec<u8>)> = r
                    .add_headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                    .collect();
                let mut remove_headers: Vec<Vec<u8>> = r
                    .remove_headers
                    .iter()
                    .map(|h| h.to_ascii_lowercase().into_bytes())
                    .collect();
                remove_headers.extend(add_headers.iter().map(|(k, _)| k.to_ascii_lowercase()));
                Some(Route {
                    prefix: r.prefix.as_bytes().to_vec(),
                    name: r.prefix.as_str().into(),
                    host: r.host.to_ascii_lowercase().into_bytes(),
                    provider,
                    replace_prefix,
                    add_headers,
                    remove_headers,
                    upgrade_protocols: r
                        .upgrade_protocols
                        .iter()
                        .map(|p| p.to_ascii_lowercase().into_bytes())
                        .collect(),
                })
            })
            .collect();
        // Longest prefix first; host-specific before host-agnostic at equal length.
        compiled.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_empty().cmp(&a.host.is_empty()).reverse())
        });
        RouteTable { routes: compiled }
    }

    pub fn get(&self, i: usize) -> Option<&Route> {
        self.routes.get(i)
    }

    /// Finds the target for a request. `path` may carry a query; `host` may carry a port.
    pub fn lookup(&self, host: &[u8], path: &[u8]) -> Target {
        let path_only = match path.iter().position(|&b| b == b'?') {
            Some(q) => &path[..q],
            None => path,
        };
        if path_only == b"/" || path_only == b"/health" || path_only.is_empty() {
            return Target::Health;
        }
        let host_only = strip_port(host);
        for (i, r) in self.routes.iter().enumerate() {
            if !r.host.is_empty() && !host_only.eq_ignore_ascii_case(&r.host) {
                continue;
            }
            if path_only.starts_with(&r.prefix) {
                return Target::Route(i);
            }
        }
        Target::NotFound
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(c) => &host[..c],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str) -> &str {
        name
    }

    #[test]
    fn longest_prefix_and_host() {
        let providers = vec![provider("a"), provider("b")];
        let routes = vec![
            RouteConfig {
                prefix: "/v1/".into(),
                provider: "a".into(),
                ..Default::default()
            },
            RouteConfig {
                prefix: "/v1/tts/".into(),
                provider: "b".into(),
                ..Default::default()
            },
            RouteConfig {
                prefix: "/v1/".into(),
                host: "special.example".into(),
                provider: "b".into(),
                ..Default::default()
            },
        ];
        validate_routes(&routes, &providers).unwrap();
        let t = RouteTable::new(&routes, &providers);
        let prov = |host: &str, path: &str| match t.lookup(host.as_bytes(), path.as_bytes()) {
            Target::Route(i) => Some(t.get(i).unwrap().provider),
            _ => None,
        };
        assert_eq!(prov("x", "/v1/tts/speak"), Some(1));
        assert_eq!(prov("x", "/v1/stt"), Some(0));
        assert_eq!(prov("Special.Example:8080", "/v1/stt"), Some(1));
        assert_eq!(prov("x", "/v2"), None);
        assert_eq!(t.lookup(b"x", b"/?a=1"), Target::Health);
        assert_eq!(t.lookup(b"x", b"/health"), Target::Health);
    }

    #[test]
    fn validation_names_keys() {
        let providers = vec![provider("a")];
        let bad = vec![RouteConfig {
            prefix: "v1".into(),
            provider: "a".into(),
            ..Default::default()
        }];
        assert_eq!(
            validate_routes(&bad, &providers).unwrap_err().0,
            "routes[0].prefix"
        );
        let bad = vec![RouteConfig {
            prefix: "/".into(),
            provider: "zz".into(),
            ..Default::default()
        }];
        assert_eq!(
            validate_routes(&bad, &providers).unwrap_err().0,
            "routes[0].provider"
        );
    }
}
