//! A gateway in front of a mock provider process, for tests/proxy.rs and
//! tests/provider_failures.rs: the provider's TOML, requests, and its stats.

use super::*;

pub fn provider_toml(name: &str, endpoint: &str, prefix: &str, extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nendpoints = [\"{endpoint}\"]\n{extra}\n\
         [[routes]]\nprefix = \"{prefix}\"\nprovider = \"{name}\"\nrewrite = \"/\"\n"
    )
}

/// A mock provider process (on a free port) and a gateway on core 0 routing `/p/` to it as
/// provider "m"; returns both processes and the mock's port.
pub fn gateway_to_mock(name: &str, extra: &str) -> (Proc, Gateway, u16) {
    let mp = free_port();
    let mock = mock_provider(name, mp);
    let gw = gateway(
        name,
        "0",
        &provider_toml("m", &format!("127.0.0.1:{mp}"), "/p/", extra),
    );
    (mock, gw, mp)
}

pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: client.example\r\n\r\n")
}

pub fn provider<'a>(s: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &s["total"]["providers"][name]
}

/// Provider "m"'s pool retries and new connections once it has seen `requests` requests.
pub fn retries_and_new_connections(gw: &Gateway, requests: u64) -> (u64, u64) {
    let s = gw.stats_until(|s| provider(s, "m")["requests"] == requests);
    let pool = &provider(&s, "m")["pool"];
    let n = |k: &str| pool[k].as_u64().unwrap_or(u64::MAX);
    (n("retries"), n("new_connections"))
}
