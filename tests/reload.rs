//! SIGHUP reloads the config without dropping a connection: new routes and providers, keys
//! (provider and tenant `file:` keys) and certificates (new paths, or rewritten in place) take
//! effect; connections, requests in flight, pooled provider connections and WebSocket tunnels
//! open before it carry on; an invalid config is refused with `coregate check`'s words and the
//! old one stays; settings that need a restart (listen address, cores) and `env:` keys are
//! reported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::certs::{Leaf, TestCa};
use common::*;
use std::time::Duration;

/// The gateway's config file with `extra` in place of the `extra_toml` it started with.
fn rewrite(gw: &Gateway, started_with: &str, extra: &str) {
    let path = gw.dir.join("coregate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text
        .strip_suffix(&format!("{started_with}\n"))
        .expect("the config ends with its extra TOML");
    std::fs::write(&path, format!("{head}{extra}\n")).unwrap();
}

/// Sends SIGHUP and waits until /stats reports `reloads` reloads (applied + refused).
fn reload(gw: &Gateway, reloads: u64) -> serde_json::Value {
    gw.proc.signal(libc::SIGHUP);
    let done = |s: &serde_json::Value| {
        let c = &s["config"];
        c["reloads_applied"].as_u64().unwrap_or(0) + c["reloads_refused"].as_u64().unwrap_or(0)
            >= reloads
            && c["applied_by_all_shards"] == true
    };
    let s = gw.stats_until(done);
    assert!(done(&s), "reload {reloads} not reported: {}", s["config"]);
    s["config"].clone()
}

fn provider(name: &str, port: u16, prefix: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nendpoints = [\"127.0.0.1:{port}\"]\n\
         [[routes]]\nprefix = \"{prefix}\"\nprovider = \"{name}\"\nrewrite = \"/\"\n"
    )
}

/// What `coregate check` says of the gateway's config file (it must refuse it).
fn check_error(gw: &Gateway) -> String {
    let out = std::process::Command::new(BIN)
        .arg("check")
        .arg(gw.dir.join("coregate.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "check passed: {}", output_text(&out));
    // Its one error line: `<time> ERROR coregate: <the error>`.
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim();
    text.split_once("coregate: ")
        .map_or(text, |(_, e)| e)
        .to_string()
}

fn get(r: &mut Reader, path: &str) -> Response {
    r.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    r.response(false).expect("a response")
}

#[test]
fn sighup_applies_new_routes_while_connections_and_tunnels_carry_on() {
    let (pa, pb) = (free_port(), free_port());
    let (_a, _b) = (mock_provider("reload-a", pa), mock_provider("reload-b", pb));
    wait_port(pa, Duration::from_secs(10));
    wait_port(pb, Duration::from_secs(10));
    let first = provider("a", pa, "/a/");
    let gw = gateway("reload-routes", "0-1", &first);

    let mut kept = Reader::new(gw.connect());
    assert_eq!(get(&mut kept, "/a/bytes?size=10").status, 200);
    assert_eq!(get(&mut kept, "/b/bytes?size=10").status, 404);
    let mut tunnel = Reader::new(gw.connect());
    tunnel.send(ws_handshake("/a/ws", "").as_bytes());
    assert_eq!(tunnel.response(false).expect("101").status, 101);
    ws_echo(&mut tunnel);

    rewrite(&gw, &first, &format!("{first}{}", provider("b", pb, "/b/")));
    let config = reload(&gw, 1);
    assert_eq!(config["generation"], 2, "{config}");
    assert_eq!(config["last_reload"]["result"], "applied", "{config}");

    // The connection opened before the reload serves the new route...
    assert_eq!(get(&mut kept, "/b/bytes?size=10").status, 200);
    assert_eq!(get(&mut kept, "/a/bytes?size=10").status, 200);
    // ...and the tunnel opened before it still relays.
    ws_echo(&mut tunnel);
    let s = gw.stats();
    assert_eq!(s["total"]["tunnels"]["active"], 1, "{s}");
    for shard in s["shards"].as_array().unwrap() {
        assert_eq!(shard["config_generation"], 2, "{shard}");
    }
    let metrics = admin_get(gw.admin, "/metrics");
    assert!(
        metrics.contains("coregate_config_generation 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("coregate_config_reloads_total{result=\"applied\"} 1"),
        "{metrics}"
    );
    assert!(gw.proc.log_text().contains("serving config generation 2"));
}

#[test]
fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let pa = free_port();
    let _a = mock_provider("reload-bad", pa);
    wait_port(pa, Duration::from_secs(10));
    let first = provider("a", pa, "/a/");
    let gw = gateway("reload-bad", "0", &first);

    // A TOML error: refused with the file, line and column, as `coregate check` says it.
    rewrite(&gw, &first, &format!("{first}[[routes]\nprefix = "));
    let config = reload(&gw, 1);
    assert_eq!(config["reloads_refused"], 1, "{config}");
    assert_eq!(config["generation"], 1, "{config}");
    let error = config["last_reload"]["error"].as_str().unwrap().to_string();
    assert!(error.contains("coregate.toml"), "{error}");
    assert!(error.contains("line"), "{error}");
    assert_eq!(error, check_error(&gw));
    assert_eq!(
        request(gw.port, "GET /a/bytes?size=3 HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );

    // A config that parses but does not validate: refused naming the key.
    let unknown = format!("{first}[[routes]]\nprefix = \"/x/\"\nprovider = \"nobody\"\n");
    rewrite(&gw, &format!("{first}[[routes]\nprefix = "), &unknown);
    let config = reload(&gw, 2);
    assert_eq!(config["reloads_refused"], 2, "{config}");
    let error = config["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("routes[1].provider"), "{error}");
    assert_eq!(error, check_error(&gw));
    assert_eq!(
        request(gw.port, "GET /a/bytes?size=3 HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
    let log = gw.proc.log_text();
    assert!(
        log.contains("reload refused, still serving config generation 1"),
        "{log}"
    );
    let metrics = admin_get(gw.admin, "/metrics");
    assert!(
        metrics.contains("coregate_config_reloads_total{result=\"refused\"} 2"),
        "{metrics}"
    );
}

#[test]
fn restart_only_settings_are_reported_and_keep_their_running_values() {
    let pa = free_port();
    let _a = mock_provider("reload-restart", pa);
    wait_port(pa, Duration::from_secs(10));
    let first = provider("a", pa, "/a/");
    let gw = gateway("reload-restart", "0", &first);
    let path = gw.dir.join("coregate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let other = free_port();
    let moved = text
        .replace(
            &format!("127.0.0.1:{}\"", gw.port),
            &format!("127.0.0.1:{other}\""),
        )
        .replace("[stats]\ninterval_ms = 100", "[stats]\ninterval_ms = 100\n")
        .replace("/a/", "/moved/");
    std::fs::write(&path, moved).unwrap();
    let config = reload(&gw, 1);
    assert_eq!(config["last_reload"]["result"], "applied", "{config}");
    assert_eq!(
        config["last_reload"]["needs_restart"],
        serde_json::json!(["server.listen"]),
        "{config}"
    );
    // Still on the old port, with the new route.
    let r = request(
        gw.port,
        "GET /moved/bytes?size=3 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(std::net::TcpStream::connect(("127.0.0.1", other)).is_err());
    let log = gw.proc.log_text();
    assert!(
        log.contains("server.listen changed but only takes effect after a restart"),
        "{log}"
    );
}

#[test]
fn a_changed_key_file_is_sent_after_the_reload_and_unchanged_pools_are_kept() {
    let pa = free_port();
    let _a = mock_provider("reload-key", pa);
    wait_port(pa, Duration::from_secs(10));
    let dir = tmpdir("reload-key-files");
    let key = dir.join("provider.key");
    std::fs::write(&key, "sk-one-7c1\n").unwrap();
    let keyed = format!(
        "[[providers]]\nname = \"k\"\nendpoints = [\"127.0.0.1:{pa}\"]\napi_key = \"file:{}\"\n\
         auth_header = \"authorization\"\nauth_value = \"Bearer {{key}}\"\n\
         [[routes]]\nprefix = \"/k/\"\nprovider = \"k\"\nrewrite = \"/\"\n",
        key.display()
    );
    let plain = provider("a", pa, "/a/");
    let first = format!("{keyed}{plain}");
    let gw = gateway("reload-key", "0", &first);
    let headers = |path: &str| request(gw.port, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"));
    assert!(headers("/k/headers").text().contains("Bearer sk-one-7c1"));
    for _ in 0..3 {
        assert_eq!(headers("/a/headers").status, 200);
    }
    let opened =
        |s: &serde_json::Value| s["total"]["providers"]["a"]["pool"]["new_connections"].clone();
    let before = opened(&gw.stats_until(|s| opened(s) == 1));
    assert_eq!(before, 1);

    std::fs::write(&key, "sk-two-9f2\n").unwrap();
    rewrite(
        &gw,
        &first,
        &format!("{first}[[routes]]\nprefix = \"/extra/\"\nprovider = \"a\"\n"),
    );
    reload(&gw, 1);
    let body = headers("/k/headers").text();
    assert!(
        body.contains("Bearer sk-two-9f2") && !body.contains("Bearer sk-one-7c1"),
        "{body}"
    );
    // Provider `a` did not change: its pooled connection is still the one it uses.
    for _ in 0..3 {
        assert_eq!(headers("/a/headers").status, 200);
    }
    let s = gw.stats_until(|s| s["total"]["providers"]["a"]["requests"] == 6);
    assert_eq!(opened(&s), 1, "{}", s["total"]["providers"]["a"]);
    // The key never reaches the log.
    assert!(!gw.proc.log_text().contains("sk-two-9f2"));
}

#[test]
fn new_certificates_are_served_after_the_reload() {
    if !require_tool("python3") {
        return;
    }
    let dir = tmpdir("reload-certs-files");
    let ca = TestCa::new(&dir, "reload");
    // The common name is the first name: it tells the two certificates apart.
    let old = ca.leaf(&dir, "old", &["old.example.test", "localhost"], false);
    let new = ca.leaf(&dir, "new", &["new.example.test", "localhost"], false);
    let tls_port = free_port();
    let server = |leaf: &Leaf| {
        format!(
            "tls_listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            leaf.cert.display(),
            leaf.key.display()
        )
    };
    let gw = gateway_with_server("reload-certs", "0-1", &server(&old), "");
    wait_port(tls_port, Duration::from_secs(10));
    let served = || {
        let out = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/client.py"))
            .args(["cert", "127.0.0.1", &tls_port.to_string()])
            .arg(&ca.pem)
            .arg("localhost")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(served(), "old.example.test");
    let path = gw.dir.join("coregate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace(&server(&old), &server(&new))).unwrap();
    reload(&gw, 1);
    // Both shards serve the new certificate (connections spread over them by hash).
    for _ in 0..6 {
        assert_eq!(served(), "new.example.test");
    }
}

#[test]
fn a_request_in_flight_finishes_on_the_config_it_started_with() {
    let pa = free_port();
    let _a = mock_provider("reload-inflight", pa);
    wait_port(pa, Duration::from_secs(10));
    let first = provider("a", pa, "/a/");
    let gw = gateway("reload-inflight", "0", &first);
    // The mock waits 3 s before its response head: the reload lands meanwhile.
    let mut slow = Reader::new(gw.connect());
    slow.send(b"GET /a/bytes?size=10&latency_ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let s = gw.stats_until(|s| s["total"]["providers"]["a"]["requests"] == 1);
    assert_eq!(
        s["total"]["providers"]["a"]["requests"], 1,
        "the request is on its way"
    );

    // The new config points provider `a` at a port where nothing listens.
    let dead = free_port();
    rewrite(&gw, &first, &provider("a", dead, "/a/"));
    reload(&gw, 1);
    let now = request(gw.port, "GET /a/bytes?size=10 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(now.status, 502, "a new request uses the new config");
    slow.stream.set_nonblocking(true).unwrap();
    let pending = matches!(
        slow.stream.peek(&mut [0u8; 1]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    slow.stream.set_nonblocking(false).unwrap();
    assert!(
        pending,
        "the slow answer arrived before the reload was applied"
    );
    let old = slow.response(false).expect("the answer in flight");
    assert_eq!(old.status, 200);
    assert_eq!(old.body.len(), 10);
}

#[test]
fn a_rotated_tenant_key_file_takes_effect_on_reload() {
    let gw = gateway("reload-tenant-key", "0", "");
    let key = gw.dir.join("tenant.key");
    std::fs::write(&key, "sk-tenant-old-41\n").unwrap();
    let tenants = format!(
        "[auth]\nmode = \"keys\"\n[[tenants]]\nname = \"t\"\nkeys = [\"file:{}\"]\n",
        key.display()
    );
    rewrite(&gw, "", &tenants);
    reload(&gw, 1);
    let with = |k: &str| {
        request(
            gw.port,
            &format!("GET /v1/mock/bytes?size=3 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {k}\r\n\r\n"),
        )
        .status
    };
    assert_eq!(with("sk-tenant-old-41"), 200);
    std::fs::write(&key, "sk-tenant-new-73\n").unwrap();
    reload(&gw, 2);
    assert_eq!(with("sk-tenant-new-73"), 200);
    assert_eq!(with("sk-tenant-old-41"), 401);
    let log = gw.proc.log_text();
    assert!(!log.contains("sk-tenant-"), "{log}");
}

#[test]
fn an_env_key_is_reported_as_fixed_until_a_restart() {
    let dir = tmpdir("reload-env-key");
    let (port, admin, mock) = (free_port(), free_port(), free_port());
    let path = dir.join("coregate.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n[admin]\nlisten = \
             \"127.0.0.1:{admin}\"\n[stats]\ninterval_ms = 100\n[mock]\nlisten = \
             \"127.0.0.1:{mock}\"\n[[providers]]\nname = \"keyed\"\nendpoints = \
             [\"127.0.0.1:{mock}\"]\napi_key = \"env:RELOAD_TEST_KEY\"\nauth_header = \"authorization\"\nauth_value = \"Bearer {{key}}\"\n"
        ),
    )
    .unwrap();
    let proc = spawn_command(
        std::process::Command::new(BIN)
            .args(["serve", "--config", path.to_str().unwrap()])
            .env("RELOAD_TEST_KEY", "sk-env-reload-5e"),
        dir.join("gateway.log"),
    );
    if !listening_within(admin, Duration::from_secs(15)) {
        panic!("not serving: {}", proc.log_text());
    }
    let gw = Gateway {
        proc,
        port,
        admin,
        dir,
    };
    reload(&gw, 1);
    let log = gw.proc.log_text();
    assert!(
        log.contains("env: keys keep the value the process started with")
            && log.contains("provider keyed (RELOAD_TEST_KEY)"),
        "{log}"
    );
    assert!(!log.contains("sk-env-reload-5e"), "{log}");
}

#[test]
fn a_certificate_rewritten_in_place_is_served_after_the_reload() {
    if !require_tool("python3") {
        return;
    }
    let dir = tmpdir("reload-certs-in-place-files");
    let ca = TestCa::new(&dir, "in-place");
    let old = ca.leaf(&dir, "old", &["old.example.test", "localhost"], false);
    let new = ca.leaf(&dir, "new", &["new.example.test", "localhost"], false);
    let (cert, key) = (dir.join("served.crt"), dir.join("served.key"));
    let install = |leaf: &Leaf| {
        std::fs::copy(&leaf.cert, &cert).unwrap();
        std::fs::copy(&leaf.key, &key).unwrap();
    };
    install(&old);
    let tls_port = free_port();
    let server = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let gw = gateway_with_server("reload-certs-in-place", "0", &server, "");
    wait_port(tls_port, Duration::from_secs(10));
    assert_eq!(served_name(tls_port, &ca.pem), "old.example.test");
    install(&new);
    reload(&gw, 1);
    assert_eq!(served_name(tls_port, &ca.pem), "new.example.test");
}

/// The first name of the certificate served on `port` (Python's ssl, trusting `ca`).
fn served_name(port: u16, ca: &std::path::Path) -> String {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/client.py"))
        .args(["cert", "127.0.0.1", &port.to_string()])
        .arg(ca)
        .arg("localhost")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_changed_core_list_needs_a_restart_and_keeps_its_shards() {
    let gw = gateway("reload-cores", "0", "");
    let path = gw.dir.join("coregate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("cores = \"0\"", "cores = \"all\"")).unwrap();
    let config = reload(&gw, 1);
    assert_eq!(config["last_reload"]["result"], "applied", "{config}");
    assert_eq!(
        config["last_reload"]["needs_restart"],
        serde_json::json!(["server.cores"]),
        "{config}"
    );
    let s = gw.stats();
    assert_eq!(s["shards"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["shards"][0]["core"], 0, "{s}");
    assert_eq!(
        request(
            gw.port,
            "GET /v1/mock/bytes?size=3 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .status,
        200
    );
    let log = gw.proc.log_text();
    assert!(
        log.contains("server.cores changed but only takes effect after a restart"),
        "{log}"
    );
}
