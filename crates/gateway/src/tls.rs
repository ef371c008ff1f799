//! TLS termination for clients: the `[server.tls]` certificates, chosen by SNI, and the
//! session-ticket key every shard shares.
//!
//! The files are read once on the main thread into a `ServerCerts`; each shard then builds
//! its own rustls `ServerConfig` from it (its own session-ID cache, so no lock is shared on
//! a handshake except the ticket key's). The handshake runs on the shard that accepted the
//! connection, bounded by `http.head_timeout_ms`.

use coregate_runtime::tls::{certified_key, ServerCerts};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `[server.tls]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain served when no `certs` entry names the client's SNI.
    pub cert: String,
    /// Its PEM private key.
    pub key: String,
    /// More certificates, each served to clients asking for one of its `names`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certs: Vec<SniCert>,
}

/// One `[[server.tls.certs]]` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SniCert {
    /// Host names (`stt.example.com`, or `*.example.com` for one label).
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

/// Reads every certificate and key of `[server.tls]`; the error names the config key.
pub fn load(cfg: &TlsConfig) -> Result<ServerCerts, (String, String)> {
    let pair = |cert: &str, key: &str, at: &str| {
        if cert.is_empty() || key.is_empty() {
            return Err((
                format!("{at}.cert"),
                "cert and key are both required".into(),
            ));
        }
        certified_key(Path::new(cert), Path::new(key)).map_err(|m| (format!("{at}.cert"), m))
    };
    let default = pair(&cfg.cert, &cfg.key, "server.tls")?;
    let mut by_name = Vec::new();
    for (i, c) in cfg.certs.iter().enumerate() {
        let at = format!("server.tls.certs[{i}]");
        if c.names.is_empty() {
            return Err((format!("{at}.names"), "needs at least one host name".into()));
        }
        let key = pair(&c.cert, &c.key, &at)?;
        for n in &c.names {
            by_name.push((n.to_ascii_lowercase(), key.clone()));
        }
    }
    ServerCerts::new(default, by_name).map_err(|m| ("server.tls".to_string(), m))
}
