//! Tenants: who a caller is (a gateway key), what it may use, and how much.
//!
//! `[auth] mode = "keys"` makes every proxied request name its tenant with a key: in
//! `Authorization: Bearer KEY`, `x-api-key: KEY`, a `Sec-WebSocket-Protocol` entry
//! `coregate-key.KEY` (browsers cannot set headers on a WebSocket), or an `access_token=KEY`
//! query parameter. Whichever carried it is removed before the request goes on. Keys are
//! configured as `env:NAME`, `file:/path` or `sha256:HEX`; only their SHA-256 digests are
//! kept, and a presented key is looked up by its digest, so no comparison ever runs over the
//! secret itself (a timing difference can tell nothing about it). A missing or unknown key
//! is a 401, a route the tenant may not use a 403; `mode = "off"` (the default) lets every
//! request through as before.
//!
//! Limits are in [`limits`]: per tenant, per shard, with shares rebalanced by the
//! aggregator.

pub mod budget;
pub mod limits;
pub mod redis;
pub mod redis_target;

use coregate_http1::request::{HeaderRange, RequestHead};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `[auth]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No keys: every request is let through, with no tenant (the embedded default).
    #[default]
    Off,
    Keys,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantConfig {
    pub name: String,
    /// `env:NAME`, `file:/path` or `sha256:HEX` (64 hex digits): never the key itself.
    pub keys: Vec<String>,
    /// Route prefixes it may use (empty: every route).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Providers it may use (empty: every provider).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Requests per second (a token bucket; 0: unlimited), and the bucket's size.
    pub rate_per_s: f64,
    pub burst: u32,
    /// Requests in flight at once (0: unlimited).
    pub max_concurrent: u32,
    /// WebSocket sessions open at once (0: unlimited).
    pub max_sessions: u32,
    /// Usage budgets (0: none), per UTC minute and day: audio seconds sent for
    /// speech-to-text, characters sent for text-to-speech (`tenants::budget`).
    pub budget_audio_seconds_per_minute: f64,
    pub budget_audio_seconds_per_day: f64,
    pub budget_tts_chars_per_minute: u64,
    pub budget_tts_chars_per_day: u64,
    /// The digests of `keys`, read at load (never serialized).
    #[serde(skip)]
    pub digests: Vec<Digest>,
}

pub type Digest = [u8; 32];

/// A tenant as the aggregator needs it: its budgets, and its rate for the shards' shares.
#[derive(Debug, Clone)]
pub struct AggregatorTenant {
    pub name: String,
    pub budgets: budget::Budgets,
    pub rate_per_s: f64,
}

/// Every tenant of `cfg`, for the aggregator.
pub fn for_aggregator(cfg: &crate::config::Config) -> Vec<AggregatorTenant> {
    cfg.tenants
        .iter()
        .map(|t| AggregatorTenant {
            name: t.name.clone(),
            budgets: budget::Budgets::of(t),
            rate_per_s: t.rate_per_s,
        })
        .collect()
}

/// SHA-256 of a presented or configured key.
pub fn digest(key: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A configured key's digest: `sha256:HEX` as given, `env:`/`file:` read and hashed.
pub fn load_key(source: &str) -> Result<Digest, String> {
    if let Some(hex) = source.strip_prefix("sha256:") {
        return parse_hex(hex).ok_or_else(|| format!("{source:?}: sha256: needs 64 hex digits"));
    }
    let secret = crate::upstream::credentials::load_secret(source)?;
    Ok(digest(secret.expose().as_bytes()))
}

fn parse_hex(hex: &str) -> Option<Digest> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Checks the tenants against the routes and providers; reads their keys. Errors carry
/// the dotted key.
pub fn prepare(
    auth: &AuthConfig,
    tenants: &mut [TenantConfig],
    routes: &[String],
    providers: &[&str],
) -> Result<(), (String, String)> {
    if auth.mode == AuthMode::Keys && tenants.is_empty() {
        return Err((
            "auth.mode".into(),
            "is \"keys\" but no [[tenants]] are defined".into(),
        ));
    }
    let mut seen: HashMap<Digest, usize> = HashMap::new();
    for i in 0..tenants.len() {
        let key = |k: &str| format!("tenants[{i}].{k}");
        let t = &tenants[i];
        if t.name.is_empty() || tenants[..i].iter().any(|o| o.name == t.name) {
            return Err((
                key("name"),
                format!("{:?} is empty or defined twice", t.name),
            ));
        }
        if t.keys.is_empty() {
            return Err((key("keys"), "needs at least one key".into()));
        }
        if let Some(r) = t.routes.iter().find(|r| !routes.contains(r)) {
            return Err((key("routes"), format!("no route has the prefix {r:?}")));
        }
        if let Some(p) = t
            .providers
            .iter()
            .find(|p| !providers.contains(&p.as_str()))
        {
            return Err((key("providers"), format!("no provider is named {p:?}")));
        }
        limits::validate(t).map_err(|(k, m)| (key(k), m))?;
        let mut digests = Vec::new();
        for (j, source) in t.keys.iter().enumerate() {
            let d = load_key(source).map_err(|m| (format!("tenants[{i}].keys[{j}]"), m))?;
            if let Some(other) = seen.insert(d, i) {
                return Err((
                    format!("tenants[{i}].keys[{j}]"),
                    format!("is also a key of tenants[{other}]"),
                ));
            }
            digests.push(d);
        }
        tenants[i].digests = digests;
    }
    Ok(())
}

/// Where a request's key came from: that carrier is removed before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Authorization,
    ApiKeyHeader,
    WebSocketProtocol,
    Query,
}

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a key.
pub const WS_KEY_PREFIX: &[u8] = b"coregate-key.";

/// The key a request presents, and where.
pub fn presented_key<'a>(
    buf: &'a [u8],
    head: &RequestHead,
    headers: &'a [HeaderRange],
) -> Option<(&'a [u8], Carrier)> {
    for h in headers {
        let (name, value) = (&buf[h.name.clone()], &buf[h.value.clone()]);
        let bearer = bearer_token(value).filter(|_| name.eq_ignore_ascii_case(b"authorization"));
        if let Some(key) = bearer {
            return Some((key, Carrier::Authorization));
        } else if name.eq_ignore_ascii_case(b"x-api-key") {
            return Some((coregate_http1::trim_ows(value), Carrier::ApiKeyHeader));
        }
    }
    let in_protocol = coregate_http1::field_elements(buf, headers, b"sec-websocket-protocol")
        .find_map(|p| p.strip_prefix(WS_KEY_PREFIX));
    if let Some(k) = in_protocol {
        return Some((k, Carrier::WebSocketProtocol));
    }
    query_key(head.path(buf)).map(|k| (k, Carrier::Query))
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme in any case; a value
/// of the scheme alone is no bearer token).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let bearer = value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer ");
    bearer.then(|| coregate_http1::trim_ows(&value[7..]))
}

/// The value of the `access_token` query parameter.
pub fn query_key(target: &[u8]) -> Option<&[u8]> {
    let q = target.iter().position(|&b| b == b'?')?;
    target[q + 1..]
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"access_token="))
}

/// The tenants of one config generation, as a shard looks them up.
pub struct TenantTable {
    pub names: Vec<std::rc::Rc<str>>,
    by_digest: HashMap<Digest, usize>,
    /// `allowed[tenant][route]`: the tenant may use the route (and its provider).
    allowed: Vec<Vec<bool>>,
    pub limits: Vec<limits::TenantLimits>,
    pub mode: AuthMode,
    /// The name usage is counted under when keys are off: `-`.
    pub anonymous: std::rc::Rc<str>,
}

/// Why a request was refused before it reached a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no key in any carrier.
    MissingKey,
    /// 401: a key no tenant has.
    UnknownKey,
    /// 403: the tenant (its index) may not use this route.
    Forbidden { tenant: usize },
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::MissingKey | Refusal::UnknownKey => 401,
            Refusal::Forbidden { .. } => 403,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Refusal::MissingKey => "missing_key",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Forbidden { .. } => "forbidden_route",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::MissingKey => {
                "a gateway key is required (Authorization: Bearer, x-api-key, a \
                 Sec-WebSocket-Protocol entry coregate-key.KEY, or access_token=)"
            }
            Refusal::UnknownKey => "the gateway key is not valid",
            Refusal::Forbidden { .. } => "this key may not use this route",
        }
    }
}

/// The `WWW-Authenticate` header line every 401 carries (RFC 9110 §11.6.1): the Bearer
/// scheme, with RFC 6750's `error="invalid_token"` when a key was presented but is not
/// valid (a missing key gets the bare challenge).
pub fn www_authenticate(presented: bool) -> &'static str {
    if presented {
        "WWW-Authenticate: Bearer realm=\"coregate\", error=\"invalid_token\""
    } else {
        "WWW-Authenticate: Bearer realm=\"coregate\""
    }
}

impl TenantTable {
    /// `routes` are the route table's (prefix, provider name) in its order.
    pub fn new(
        auth: &AuthConfig,
        tenants: &[TenantConfig],
        routes: &[(String, String)],
    ) -> TenantTable {
        let mut by_digest = HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            for d in &t.digests {
                by_digest.insert(*d, i);
            }
        }
        let allowed = tenants
            .iter()
            .map(|t| {
                routes
                    .iter()
                    .map(|(prefix, provider)| {
                        (t.routes.is_empty() || t.routes.contains(prefix))
                            && (t.providers.is_empty() || t.providers.contains(provider))
                    })
                    .collect()
            })
            .collect();
        TenantTable {
            names: tenants.iter().map(|t| t.name.as_str().into()).collect(),
            by_digest,
            allowed,
            limits: tenants.iter().map(limits::TenantLimits::of).collect(),
            mode: auth.mode,
            anonymous: "-".into(),
        }
    }

    /// The tenant of a request on route `route`, and where its key was; `Ok(None)` when
    /// keys are off.
    pub fn authenticate(
        &self,
        buf: &[u8],
        head: &RequestHead,
        headers: &[HeaderRange],
        route: usize,
    ) -> Result<Option<(usize, Carrier)>, Refusal> {
        if self.mode == AuthMode::Off {
            return Ok(None);
        }
        let (key, carrier) = presented_key(buf, head, headers).ok_or(Refusal::MissingKey)?;
        let tenant = *self
            .by_digest
            .get(&digest(key))
            .ok_or(Refusal::UnknownKey)?;
        match self.allowed.get(tenant).and_then(|r| r.get(route)) {
            Some(true) => Ok(Some((tenant, carrier))),
            _ => Err(Refusal::Forbidden { tenant }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_load_as_digests_and_sha256_must_be_64_hex() {
        let d = digest(b"test");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(load_key(&format!("sha256:{hex}")).unwrap(), d);
        assert!(load_key("sha256:abc").is_err());
        assert!(load_key("plain-secret").is_err());
    }

    #[test]
    fn the_query_key_is_found_among_other_parameters() {
        assert_eq!(query_key(b"/ws?a=1&access_token=k1&b=2"), Some(&b"k1"[..]));
        assert_eq!(query_key(b"/ws?access_token_x=1"), None);
        assert_eq!(query_key(b"/ws"), None);
    }
}
