//! Provider presets and credentials.
//!
//! A preset fills in what every user of a public provider would otherwise copy from its
//! docs: endpoint, TLS, Host and how the key is sent. Any field the config sets itself wins.
//! The key is named, never written: `api_key = "env:NAME"` or `"file:/path"`. It is read
//! once at start (and on reload) into a [`Secret`], whose `Debug` and `Display` print only
//! where it came from, so no log line, error body or `check` output can carry it.

use super::ProviderConfig;
use std::collections::BTreeMap;
use std::fmt;

/// What a preset fills in.
struct Preset {
    name: &'static str,
    endpoint: &'static str,
    auth_header: &'static str,
    auth_value: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

/// The providers coregate knows. Only headers a provider requires today: OpenAI's GA
/// realtime API refuses the retired `OpenAI-Beta: realtime=v1`, so it is forwarded only when
/// a client sends it, never added.
const PRESETS: [Preset; 4] = [
    Preset {
        name: "openai",
        endpoint: "https://api.openai.com",
        auth_header: "Authorization",
        auth_value: "Bearer {key}",
        headers: &[],
    },
    Preset {
        name: "deepgram",
        endpoint: "https://api.deepgram.com",
        auth_header: "Authorization",
        auth_value: "Token {key}",
        headers: &[],
    },
    Preset {
        name: "elevenlabs",
        endpoint: "https://api.elevenlabs.io",
        auth_header: "xi-api-key",
        auth_value: "{key}",
        headers: &[],
    },
    Preset {
        name: "cartesia",
        endpoint: "https://api.cartesia.ai",
        auth_header: "X-API-Key",
        auth_value: "{key}",
        // Cartesia requires a version on every request; pinned so that an API change is
        // an explicit config change (override it in the provider's add_headers).
        headers: &[("Cartesia-Version", "2025-04-16")],
    },
];

/// The preset names, for error messages and docs.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Fills the fields a preset covers and the config left empty.
pub fn apply_preset(p: &mut ProviderConfig) -> Result<(), String> {
    if p.preset.is_empty() {
        return Ok(());
    }
    let Some(preset) = PRESETS.iter().find(|x| x.name == p.preset) else {
        return Err(format!(
            "unknown preset {:?} (known: {})",
            p.preset,
            preset_names().join(", ")
        ));
    };
    if p.endpoints.is_empty() {
        p.endpoints = vec![preset.endpoint.to_string()];
    }
    if p.auth_header.is_empty() {
        p.auth_header = preset.auth_header.to_string();
    }
    if p.auth_value.is_empty() {
        p.auth_value = preset.auth_value.to_string();
    }
    for (k, v) in preset.headers {
        let set = p.add_headers.keys().any(|h| h.eq_ignore_ascii_case(k));
        if !set {
            p.add_headers.insert(k.to_string(), v.to_string());
        }
    }
    Ok(())
}

/// An API key read from where `api_key` points. Printing it shows only the source.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    source: String,
    value: String,
}

impl Secret {
    /// The key itself, for building the credential header and nothing else.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted: {}>", self.source)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Reads `api_key` (`env:NAME` or `file:/path`); the error names the variable or file but
/// never quotes its contents.
pub fn load_secret(api_key: &str) -> Result<Secret, String> {
    let value = if let Some(name) = api_key.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("environment variable {name} is not set (or not UTF-8)"))?
    } else if let Some(path) = api_key.strip_prefix("file:") {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
    } else {
        return Err(
            "must be \"env:NAME\" or \"file:/path\": a key written into the config would be \
             printed by `check` and kept in version control"
                .into(),
        );
    };
    // Files and variables often end in a newline; a header value cannot carry one.
    let value = value.trim().to_string();
    if value.is_empty() {
        return Err(format!("{api_key} is empty"));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(format!("{api_key} holds a control character"));
    }
    Ok(Secret {
        source: api_key.to_string(),
        value,
    })
}

/// Header names that carry credentials: `check` prints their values redacted.
pub fn is_credential_header(name: &str) -> bool {
    [
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "xi-api-key",
        "api-key",
        "cookie",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// Redacts credential header values in a header table, for printing.
pub fn redact_headers(headers: &mut BTreeMap<String, String>) {
    for (k, v) in headers.iter_mut() {
        if is_credential_header(k) {
            *v = "<redacted>".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints_its_value() {
        std::env::set_var("COREGATE_TEST_SECRET_A", "sk-live-123\n");
        let s = load_secret("env:COREGATE_TEST_SECRET_A").unwrap();
        assert_eq!(s.expose(), "sk-live-123");
        let shown = format!("{s} {s:?}");
        assert!(!shown.contains("sk-live"), "{shown}");
        assert!(shown.contains("env:COREGATE_TEST_SECRET_A"));
    }

    #[test]
    fn missing_or_literal_keys_are_refused() {
        assert!(load_secret("env:COREGATE_TEST_SECRET_UNSET").is_err());
        assert!(load_secret("file:/nonexistent/key").is_err());
        let e = load_secret("sk-literal").unwrap_err();
        assert!(!e.contains("sk-literal"));
    }

    #[test]
    fn a_preset_fills_only_what_is_unset() {
        let mut p = ProviderConfig {
            preset: "cartesia".into(),
            auth_value: "{key}".into(),
            ..ProviderConfig::default()
        };
        apply_preset(&mut p).unwrap();
        assert_eq!(p.endpoints, vec!["https://api.cartesia.ai"]);
        assert_eq!(p.auth_header, "X-API-Key");
        assert_eq!(p.add_headers["Cartesia-Version"], "2025-04-16");
        p.preset = "nope".into();
        assert!(apply_preset(&mut p).is_err());
    }
}
