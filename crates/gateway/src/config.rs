//! Configuration: the TOML model, its defaults, and validation.
//!
//! Every option has a default, so an empty file (or no file) is a valid config. Errors name
//! the file and the dotted key (`coregate.toml: server.backlog: ...`). The config is loaded
//! once, before any shard starts; each shard then gets its own copy (nothing is shared).

pub use coregate_runtime::listener::parse_addr;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// A config error that names where it came from: the file (or `<flags>`) and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub http: HttpConfig,
    pub admin: AdminConfig,
    pub stats: StatsConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<crate::upstream::ProviderConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::route::RouteConfig>,
    pub mock: MockConfig,
    pub access_log: crate::access_log::AccessLogConfig,
    pub auth: crate::tenants::AuthConfig,
    pub usage: UsageConfig,
    pub limits: crate::tenants::redis::LimitsConfig,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<crate::tenants::TenantConfig>,
}

/// `[usage]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// One JSON line per finished request or WebSocket session, for billing: a file
    /// (appended; reopened on SIGUSR1), `stdout`, or empty for none.
    pub export: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain-HTTP data-plane address; every shard binds it with SO_REUSEPORT. May be empty
    /// when `tls_listen` is set.
    pub listen: String,
    /// HTTPS data-plane address (needs `[server.tls]`); empty: no TLS listener.
    pub tls_listen: String,
    /// Certificates for `tls_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::tls::TlsConfig>,
    /// Cores to run one shard on each: `all` or a list such as `0-3,6`.
    pub cores: String,
    /// listen(2) backlog per shard (the kernel caps it at net.core.somaxconn).
    pub backlog: u32,
    /// Open client connections per shard; 0 derives it from RLIMIT_NOFILE and the shard count.
    pub max_connections_per_shard: u32,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub drain_timeout_ms: u64,
    /// After SIGTERM/SIGINT, how long admin `/health` answers 503 while the listeners still
    /// accept and serve, before they close and the drain proper begins: the time a balancer's
    /// health check needs to notice (HAProxy's `grace`, Envoy's drain time). 0: close at once.
    /// A takeover (`serve --takeover`) never waits for it: its successor already accepts.
    pub drain_delay_ms: u64,
    /// Let a second coregate serve the same address (SO_REUSEPORT then splits the traffic
    /// between the two): only for a takeover, where the new process starts before the old
    /// one drains. Off, a second `serve` on an address in use fails at start.
    pub allow_shared_listen: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "0.0.0.0:8080".into(),
            tls_listen: String::new(),
            tls: None,
            cores: "all".into(),
            backlog: 4096,
            max_connections_per_shard: 0,
            drain_timeout_ms: 30_000,
            drain_delay_ms: 0,
            allow_shared_listen: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request head (request line + headers); larger gets 431 (or 414) and a close.
    pub max_head_bytes: usize,
    /// Most header fields in a request head; more gets 431 and a close.
    pub max_headers: usize,
    /// Time allowed to receive a whole request head once its first byte arrived.
    pub head_timeout_ms: u64,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout_ms: u64,
    /// Time a new connection has to send its first byte (after its TLS handshake): much
    /// shorter than the idle timeout, so that connections that never speak cannot hold
    /// the connection cap.
    pub first_byte_timeout_ms: u64,
    /// Longest pause allowed between two reads of a request body.
    pub body_read_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            head_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            first_byte_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (`/stats`, `/metrics`); empty disables it.
    pub listen: String,
    /// `env:NAME`, `file:/path` or `sha256:HEX`: admin requests must then send
    /// `Authorization: Bearer TOKEN` (`/health` excepted, for balancers). Empty: open.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// The token's digest, read at load (never serialized).
    #[serde(skip)]
    pub token_digest: Option<crate::tenants::Digest>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9901".into(),
            token: String::new(),
            token_digest: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// How often each shard ships a snapshot to the aggregator.
    pub interval_ms: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { interval_ms: 1000 }
    }
}

/// The built-in mock provider that `serve` starts in-process when no provider is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Start the in-process mock provider and route `/v1/mock/` to it. `auto` (the default)
    /// does so only when the config defines no providers.
    pub embedded: EmbeddedMock,
    /// Where the embedded mock provider listens.
    pub listen: String,
    /// The core its thread is pinned to; unset: the first of `server.cores`, so that the
    /// mock never runs on a core outside the gateway's (where a load generator may be).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedMock {
    Auto,
    On,
    Off,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            embedded: EmbeddedMock::Auto,
            listen: "127.0.0.1:9902".into(),
            core: None,
        }
    }
}

impl Config {
    /// Loads and validates a config file; resolves `limits.redis` and reads its password.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let mut cfg = Config::parse(&text, &source)?;
        // Resolved here, not in `parse`: parsing stays offline (the fuzzer feeds it).
        crate::tenants::redis_target::prepare(&mut cfg.limits).map_err(|(key, message)| {
            ConfigError {
                source,
                key,
                message,
            }
        })?;
        Ok(cfg)
    }

    /// Parses and validates TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            ConfigError {
                source: source.to_string(),
                key: if key == "." { String::new() } else { key },
                message: match inner.span() {
                    Some(span) => format!("{}: {message}", line_column(text, span.start)),
                    None => message,
                },
            }
        })?;
        let keyed = |(key, message): (String, String)| ConfigError {
            source: source.to_string(),
            key,
            message,
        };
        crate::upstream::prepare_providers(&mut cfg.providers).map_err(keyed)?;
        cfg.validate(source)?;
        crate::upstream::load_credentials(&mut cfg.providers).map_err(keyed)?;
        let prefixes: Vec<String> = cfg.routes.iter().map(|r| r.prefix.clone()).collect();
        let providers: Vec<String> = cfg.providers.iter().map(|p| p.name.clone()).collect();
        let providers: Vec<&str> = providers.iter().map(String::as_str).collect();
        crate::tenants::prepare(&cfg.auth, &mut cfg.tenants, &prefixes, &providers)
            .map_err(keyed)?;
        if !cfg.admin.token.is_empty() {
            let d = crate::tenants::load_key(&cfg.admin.token)
                .map_err(|m| keyed(("admin.token".into(), m)))?;
            cfg.admin.token_digest = Some(d);
        }
        Ok(cfg)
    }

    /// The providers' names, in the order of the shards' provider lists (a route refers to
    /// its provider by name; the route table by index).
    pub fn provider_names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }

    /// Checks values that the types alone cannot: ranges, addresses, cross-references.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            source: source.to_string(),
            key: key.to_string(),
            message,
        };
        self.validate_listeners().map_err(|(k, m)| err(&k, m))?;
        if !self.admin.listen.is_empty() {
            parse_addr(&self.admin.listen).map_err(|m| err("admin.listen", m))?;
        }
        coregate_runtime::cores::parse_core_list(
            &self.server.cores,
            &coregate_runtime::cores::online_cores(),
        )
        .map_err(|m| err("server.cores", m))?;
        check_range("server.backlog", self.server.backlog as u64, 1, 1 << 20)
            .map_err(|(k, m)| err(k, m))?;
        check_range(
            "http.max_head_bytes",
            self.http.max_head_bytes as u64,
            256,
            1 << 20,
        )
        .map_err(|(k, m)| err(k, m))?;
        check_range("http.max_headers", self.http.max_headers as u64, 1, 1024)
            .map_err(|(k, m)| err(k, m))?;
        for (key, v) in [
            ("server.drain_timeout_ms", self.server.drain_timeout_ms),
            ("http.head_timeout_ms", self.http.head_timeout_ms),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            (
                "http.first_byte_timeout_ms",
                self.http.first_byte_timeout_ms,
            ),
            ("http.body_read_timeout_ms", self.http.body_read_timeout_ms),
            ("stats.interval_ms", self.stats.interval_ms),
        ] {
            check_range(key, v, 1, 24 * 3600 * 1000).map_err(|(k, m)| err(k, m))?;
        }
        check_range(
            "server.drain_delay_ms",
            self.server.drain_delay_ms,
            0,
            3600 * 1000,
        )
        .map_err(|(k, m)| err(k, m))?;
        if self.mock.embedded != EmbeddedMock::Off {
            parse_addr(&self.mock.listen).map_err(|m| err("mock.listen", m))?;
        }
        crate::upstream::validate_providers(&self.providers).map_err(|(k, m)| err(&k, m))?;
        crate::route::validate_routes(&self.routes, &self.provider_names())
            .map_err(|(k, m)| err(&k, m))?;
        if self.limits.backend == crate::tenants::redis::Backend::Redis {
            crate::tenants::redis_target::check_form(&self.limits.redis)
                .map_err(|m| err("limits.redis", m))?;
        }
        self.access_log
            .validate()
            .map_err(|(k, m)| err(&format!("access_log.{k}"), m))?;
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), (String, String)> {
        let s = &self.server;
        if s.listen.is_empty() && s.tls_listen.is_empty() {
            return Err((
                "server.listen".into(),
                "set listen, tls_listen or both".into(),
            ));
        }
        for (key, addr) in [
            ("server.listen", &s.listen),
            ("server.tls_listen", &s.tls_listen),
        ] {
            if !addr.is_empty() {
                parse_addr(addr).map_err(|m| (key.to_string(), m))?;
            }
        }
        if !s.listen.is_empty() && s.listen == s.tls_listen {
            return Err((
                "server.tls_listen".into(),
                "is the same address as server.listen".into(),
            ));
        }
        let taken = [
            ("server.listen", &s.listen),
            ("server.tls_listen", &s.tls_listen),
        ];
        let others = [
            ("admin.listen", &self.admin.listen),
            ("mock.listen", &self.mock.listen),
        ];
        for (key, addr) in others {
            let embedded_off = key == "mock.listen" && !self.wants_embedded_mock();
            if addr.is_empty() || embedded_off {
                continue;
            }
            if let Some((other, _)) = taken.iter().find(|(_, a)| *a == addr) {
                return Err((key.into(), format!("{addr:?} is also {other}")));
            }
        }
        match (&s.tls, s.tls_listen.is_empty()) {
            (None, false) => Err((
                "server.tls".into(),
                "tls_listen is set but [server.tls] (cert, key) is not".into(),
            )),
            (Some(_), true) => Err((
                "server.tls_listen".into(),
                "[server.tls] is set but tls_listen is not".into(),
            )),
            (Some(t), false) => crate::tls::load(t).map(|_| ()),
            (None, true) => Ok(()),
        }
    }

    /// Every address this config listens on, with its key (empty ones left out).
    pub fn listen_addresses(&self) -> Vec<(&'static str, &str)> {
        let mut out = vec![
            ("server.listen", self.server.listen.as_str()),
            ("server.tls_listen", self.server.tls_listen.as_str()),
            ("admin.listen", self.admin.listen.as_str()),
        ];
        if self.wants_embedded_mock() {
            out.push(("mock.listen", self.mock.listen.as_str()));
        }
        out.retain(|(_, a)| !a.is_empty());
        out
    }

    /// Whether `serve` should start the in-process mock provider.
    pub fn wants_embedded_mock(&self) -> bool {
        match self.mock.embedded {
            EmbeddedMock::On => true,
            EmbeddedMock::Off => false,
            EmbeddedMock::Auto => self.providers.is_empty(),
        }
    }

    /// The effective config as TOML (what `coregate check` prints), with every credential
    /// redacted: `api_key` shows where the key comes from, credential headers show nothing.
    pub fn to_toml(&self) -> String {
        use crate::upstream::credentials::redact_headers;
        let mut shown = self.clone();
        for p in &mut shown.providers {
            if !p.api_key.is_empty() {
                p.api_key = format!("<redacted: {}>", p.api_key);
            }
            redact_headers(&mut p.add_headers);
        }
        for r in &mut shown.routes {
            redact_headers(&mut r.add_headers);
        }
        if !shown.limits.redis_password.is_empty() {
            shown.limits.redis_password = format!("<redacted: {}>", shown.limits.redis_password);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// `line L, column C` (both from 1) of a byte offset, as editors count them.
fn line_column(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

fn check_range(key: &str, v: u64, lo: u64, hi: u64) -> Result<(), (&str, String)> {
    if v < lo || v > hi {
        return Err((key, format!("{v} is out of range (allowed {lo}..={hi})")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_valid_and_defaulted() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.server.backlog, 4096);
        assert_eq!(c.http.max_head_bytes, 16384);
        assert_eq!(c.http.max_headers, 64);
    }

    #[test]
    fn errors_name_file_and_key() {
        let e = Config::parse("[server]\nbacklog = \"many\"\n", "gw.toml").unwrap_err();
        assert_eq!(e.key, "server.backlog");
        assert!(e.to_string().starts_with("gw.toml: server.backlog:"), "{e}");

        let e = Config::parse("[server]\nlisten = \"nope\"\n", "gw.toml").unwrap_err();
        assert_eq!(e.key, "server.listen");

        let e = Config::parse("[http]\nmax_headers = 0\n", "gw.toml").unwrap_err();
        assert_eq!(e.key, "http.max_headers");

        let e = Config::parse("[server]\nbogus = 1\n", "gw.toml").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn syntax_errors_keep_line_and_column() {
        let e = Config::parse(
            "[server]\nlisten = \"0.0.0.0:1\"\nbacklog = 12 34\n",
            "gw.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("line 3, column"), "{e}");
    }

    #[test]
    fn mistakes_that_fail_at_run_time_are_refused_by_check() {
        let refused = |toml: &str, key: &str, says: &str| {
            let e = Config::parse(toml, "gw.toml").unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(says), "{e}");
        };
        let route = "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\n\
                     prefix = \"/a/\"\nprovider = \"p\"\n";
        refused(
            &format!("{route}add_headers = {{ \"host\" = \"x\" }}\n"),
            "routes[0].add_headers",
            "set `host` on the provider",
        );
        for h in [
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Keep-Alive",
            "TE",
        ] {
            refused(
                &format!("{route}add_headers = {{ \"{h}\" = \"1\" }}\n"),
                "routes[0].add_headers",
                "written by the gateway",
            );
        }
        refused(
            &format!("{route}strip_prefix = true\nrewrite = \"/b/\"\n"),
            "routes[0].strip_prefix",
            "keep one",
        );
        refused(
            &format!("{route}[[routes]]\nprefix = \"/a/\"\nprovider = \"p\"\n"),
            "routes[1].prefix",
            "routes[0] has the same prefix",
        );
        refused(
            "[[providers]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nfallback = \"b\"\n\
             [[providers]]\nname = \"b\"\nendpoints = [\"127.0.0.1:2\"]\nfallback = \"a\"\n",
            "providers[0].fallback",
            "to itself",
        );
        refused(
            "[[providers]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\nfallback = \"zz\"\n",
            "providers[0].fallback",
            "no provider named",
        );
        refused(
            "[server]\nlisten = \"127.0.0.1:9901\"\n",
            "admin.listen",
            "is also server.listen",
        );
    }
}
