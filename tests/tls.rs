//! TLS both ways, host-name endpoints and credentials, on loopback with certificates made
//! at run time: the mock provider serves TLS (`--tls-cert`), the gateway verifies it,
//! pools and resumes its connections, injects the key, terminates TLS for clients (SNI,
//! tickets, ALPN) and tunnels WebSockets over TLS on either side. Outside clients: curl,
//! Python's ssl module and the websockets package.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::certs::{Leaf, TestCa};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls/client.py");

/// The mock provider serving TLS with `leaf` on 127.0.0.1:`port`.
fn mock_tls(port: u16, leaf: &Leaf) -> Proc {
    let (cert, key) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap());
    mock_provider_with("tls", port, &["--tls-cert", cert, "--tls-key", key])
}

/// A key file holding `key`, for `api_key = "file:..."`.
fn key_file(dir: &Path, key: &str) -> String {
    let path = dir.join("provider.key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    path.display().to_string()
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(CLIENT_PY)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn upstream_tls_is_verified_pooled_resumed_and_carries_the_key() {
    let dir = tmpdir("tls-upstream");
    let ca = TestCa::new(&dir, "up");
    let leaf = ca.leaf(&dir, "localhost", &["localhost"], false);
    let mp = free_port();
    let _mock = mock_tls(mp, &leaf);
    let gw = gateway(
        "tls-upstream-gw",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"https://localhost:{mp}\"]\n\
             ca_file = \"{}\"\napi_key = \"file:{}\"\nauth_header = \"Authorization\"\n\
             auth_value = \"Bearer {{key}}\"\npool_idle_timeout_ms = 1000\n\
             [[routes]]\nprefix = \"/\"\nprovider = \"p\"\n",
            ca.pem.display(),
            key_file(&dir, "sk-upstream-secret"),
        ),
    );
    // Ten requests on one client connection: one TLS handshake with the provider.
    let mut c = Reader::new(gw.connect());
    for _ in 0..10 {
        c.send(b"GET /bytes?size=50000 HTTP/1.1\r\nHost: gw\r\n\r\n");
        let r = c.response(false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 50_000);
    }
    // The client's own credential is replaced by the provider's key; Host is the
    // provider's name.
    c.send(b"GET /headers HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer client-key\r\n\r\n");
    let r = c.response(false).unwrap();
    let headers = r.json()["headers"].clone();
    let all: Vec<(String, String)> = serde_json::from_value(headers).unwrap();
    let auth: Vec<_> = all.iter().filter(|(k, _)| k == "Authorization").collect();
    assert_eq!(auth.len(), 1, "{all:?}");
    assert_eq!(auth[0].1, "Bearer sk-upstream-secret");
    let host = all.iter().find(|(k, _)| k == "Host").unwrap();
    assert_eq!(host.1, format!("localhost:{mp}"));
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["requests"] == 11);
    let p = &s["total"]["providers"]["p"];
    assert_eq!(p["tls"]["handshakes"], 1, "{p}");
    assert_eq!(p["pool"]["new_connections"], 1, "{p}");
    assert!(p["tls"]["handshake_us"]["count"] == 1, "{p}");

    // After the idle connection expired, the next one resumes the TLS session.
    drop(c);
    std::thread::sleep(Duration::from_millis(2500));
    let r = request(
        gw.port,
        "GET /bytes?size=10 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let s = gw.stats_until(|s| s["total"]["providers"]["p"]["tls"]["handshakes"] == 2);
    assert_eq!(
        s["total"]["providers"]["p"]["tls"]["resumed"], 1,
        "{}",
        s["total"]["providers"]["p"]
    );
    let log = gw.proc.log_text();
    assert!(!log.contains("sk-upstream-secret"), "{log}");
}

#[test]
fn each_certificate_failure_is_a_named_502() {
    let dir = tmpdir("tls-failures");
    let ca = TestCa::new(&dir, "good");
    let good = ca.leaf(&dir, "good", &["localhost"], false);
    let expired = ca.leaf(&dir, "expired", &["localhost"], true);
    let other = TestCa::new(&dir, "other");
    let (good_port, expired_port, plain_port) = (free_port(), free_port(), free_port());
    let _m1 = mock_tls(good_port, &good);
    let _m2 = mock_tls(expired_port, &expired);
    let _m3 = mock_provider("tls-failures-plain", plain_port);
    let provider = |name: &str, endpoint: String, extra: String| {
        format!(
            "[[providers]]\nname = \"{name}\"\nendpoints = [\"{endpoint}\"]\n{extra}\n\
             [[routes]]\nprefix = \"/{name}/\"\nprovider = \"{name}\"\nstrip_prefix = true\n"
        )
    };
    let cases = [
        (
            "unknown_ca",
            format!("https://localhost:{good_port}"),
            format!("ca_file = \"{}\"", other.pem.display()),
            "tls_unknown_ca",
        ),
        (
            "public_roots",
            format!("https://localhost:{good_port}"),
            String::new(),
            "tls_unknown_ca",
        ),
        (
            "wrong_name",
            format!("https://127.0.0.1:{good_port}"),
            format!(
                "ca_file = \"{}\"\nhost = \"api.example.test\"",
                ca.pem.display()
            ),
            "tls_name_mismatch",
        ),
        (
            "expired",
            format!("https://localhost:{expired_port}"),
            format!("ca_file = \"{}\"", ca.pem.display()),
            "tls_cert_expired",
        ),
        (
            "not_tls",
            format!("https://localhost:{plain_port}"),
            format!("ca_file = \"{}\"", ca.pem.display()),
            "tls_protocol",
        ),
    ];
    let toml: String = cases
        .iter()
        .map(|(n, e, x, _)| provider(n, e.clone(), x.clone()))
        .collect();
    let gw = gateway("tls-failures-gw", "0", &toml);
    for (name, _, _, code) in &cases {
        let r = request(
            gw.port,
            &format!("GET /{name}/ HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], *code, "{name}: {}", r.text());
    }
    let s = gw.stats_until(|s| s["total"]["providers"]["not_tls"]["requests"] == 1);
    for (name, _, _, code) in &cases {
        let p = &s["total"]["providers"][name];
        assert_eq!(p["errors"][code], 1, "{name}: {p}");
    }
    let m = admin_get(gw.admin, "/metrics");
    assert!(
        m.contains("kind=\"tls_name_mismatch\"} 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("tls_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A gateway with a TLS listener: `localhost` by default, `stt.example.test` by SNI.
fn tls_gateway(name: &str, dir: &Path, ca: &TestCa, extra: &str) -> (Gateway, u16) {
    let default = ca.leaf(dir, "gw-default", &["localhost", "127.0.0.1"], false);
    let stt = ca.leaf(dir, "gw-stt", &["stt.example.test"], false);
    let tls_port = free_port();
    let server = format!(
        "tls_listen = \"127.0.0.1:{tls_port}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [[server.tls.certs]]\nnames = [\"stt.example.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        default.cert.display(),
        default.key.display(),
        stt.cert.display(),
        stt.key.display(),
    );
    let gw = gateway_with_server(name, "0", &server, extra);
    wait_port(tls_port, Duration::from_secs(10));
    (gw, tls_port)
}

#[test]
fn the_tls_listener_picks_by_sni_resumes_and_refuses_h2_only() {
    if !require_tool("python3") || !require_tool("curl") {
        return;
    }
    let dir = tmpdir("tls-listener");
    let ca = TestCa::new(&dir, "down");
    let (gw, tls_port) = tls_gateway("tls-listener-gw", &dir, &ca, "");
    let (port, cafile) = (tls_port.to_string(), ca.pem.to_str().unwrap());
    let cn = |sni: &str| python(&["cert", "127.0.0.1", &port, cafile, sni]);
    assert_eq!(cn("stt.example.test").trim(), "stt.example.test");
    assert_eq!(cn("localhost").trim(), "localhost");

    // curl through the TLS listener to the embedded mock: X-Forwarded-Proto is https.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", cafile])
        .arg(format!("https://localhost:{tls_port}/v1/mock/headers"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("[\"X-Forwarded-Proto\",\"https\"]"), "{body}");
    // The plain listener beside it still says http.
    let r = request(gw.port, "GET /v1/mock/headers HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.text().contains("[\"X-Forwarded-Proto\",\"http\"]"),
        "{}",
        r.text()
    );

    for (v, name) in [("1.2", "TLSv1.2"), ("1.3", "TLSv1.3")] {
        let out = python(&["version", "127.0.0.1", &port, cafile, "localhost", v]);
        assert_eq!(out.trim(), format!("{name} HTTP/1.1 200 OK"));
    }
    let resumed = python(&["resume", "127.0.0.1", &port, cafile, "localhost"]);
    assert_eq!(resumed.trim(), "reused True");
    let h2 = python(&["alpn", "127.0.0.1", &port, cafile, "localhost", "h2"]);
    // Refused with the alert RFC 7301 §3.2 asks for (over TLS 1.3 it follows the
    // ServerHello; glommio patch 8 gets it out), not a bare close.
    assert!(
        h2.starts_with("refused") && h2.contains("no application protocol"),
        "{h2}"
    );
    let h1 = python(&["alpn", "127.0.0.1", &port, cafile, "localhost", "http/1.1"]);
    assert_eq!(h1.trim(), "selected http/1.1");

    let s = gw.stats_until(|s| s["total"]["tls"]["handshake_failures"]["no_common_protocol"] == 1);
    let tls = &s["total"]["tls"];
    assert!(tls["resumed"].as_u64().unwrap() >= 1, "{tls}");
    assert!(tls["handshakes"].as_u64().unwrap() >= 5, "{tls}");
}

#[test]
fn a_stalled_handshake_is_bounded_by_the_head_timeout() {
    let dir = tmpdir("tls-stall");
    let ca = TestCa::new(&dir, "stall");
    let (gw, tls_port) = tls_gateway("tls-stall-gw", &dir, &ca, "[http]\nhead_timeout_ms = 300\n");
    let mut c = Reader::new(std::net::TcpStream::connect(("127.0.0.1", tls_port)).unwrap());
    c.send(b"\x16\x03\x01");
    assert!(c.closed_within(Duration::from_secs(3)));
    let s = gw.stats_until(|s| s["total"]["tls"]["handshake_failures"]["timeout"] == 1);
    assert_eq!(s["total"]["tls"]["handshakes"], 0);
}

#[test]
fn websocket_tunnels_cross_tls_on_either_side() {
    let Some(python) = require_python_module("websockets") else {
        return;
    };
    let dir = tmpdir("tls-ws");
    let ca = TestCa::new(&dir, "ws");
    let leaf = ca.leaf(&dir, "ws-mock", &["localhost"], false);
    let (tls_mock, plain_mock) = (free_port(), free_port());
    let _m1 = mock_tls(tls_mock, &leaf);
    let _m2 = mock_provider("tls-ws-plain", plain_mock);
    let extra = format!(
        "[[providers]]\nname = \"wss\"\nendpoints = [\"https://localhost:{tls_mock}\"]\n\
         ca_file = \"{}\"\n\
         [[providers]]\nname = \"ws\"\nendpoints = [\"127.0.0.1:{plain_mock}\"]\n\
         [[routes]]\nprefix = \"/tls/\"\nprovider = \"wss\"\nstrip_prefix = true\n\
         [[routes]]\nprefix = \"/plain/\"\nprovider = \"ws\"\nstrip_prefix = true\n",
        ca.pem.display()
    );
    let (gw, tls_port) = tls_gateway("tls-ws-gw", &dir, &ca, &extra);
    let cafile = ca.pem.to_str().unwrap();
    for url in [
        format!("ws://127.0.0.1:{}/tls/ws", gw.port), // ws -> wss
        format!("wss://localhost:{tls_port}/tls/ws"), // wss -> wss
        format!("wss://localhost:{tls_port}/plain/ws"), // wss -> ws
    ] {
        let out = Command::new(python)
            .args([CLIENT_PY, "ws", &url, cafile])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "hello over tls",
            "{url}"
        );
    }
    let s = gw.stats_until(|s| s["total"]["tunnels"]["total"] == 3);
    assert_eq!(s["total"]["providers"]["wss"]["tls"]["handshakes"], 2);
}

#[test]
fn check_redacts_keys_and_refuses_missing_ones() {
    let dir = tmpdir("tls-redact");
    std::env::set_var("COREGATE_TEST_REDACT_KEY", "sk-env-secret-value");
    let cfg = dir.join("c.toml");
    let write = |text: &str| std::fs::write(&cfg, text).unwrap();
    write(
        "[[providers]]\nname = \"openai\"\npreset = \"openai\"\n\
         api_key = \"env:COREGATE_TEST_REDACT_KEY\"\n\
         [[routes]]\nprefix = \"/v1/\"\nprovider = \"openai\"\n\
         add_headers = { \"X-Api-Key\" = \"sk-header-secret\" }\n",
    );
    let check = |path: &Path| Command::new(BIN).arg("check").arg(path).output().unwrap();
    let out = check(&cfg);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("\"<redacted: env:COREGATE_TEST_REDACT_KEY>\""),
        "{text}"
    );
    assert!(
        !text.contains("sk-env-secret") && !text.contains("sk-header-secret"),
        "{text}"
    );
    // The preset filled in the endpoint and how the key is sent.
    assert!(text.contains("https://api.openai.com"), "{text}");
    assert!(text.contains("auth_value = \"Bearer {key}\""), "{text}");

    write(
        "[[providers]]\nname = \"p\"\npreset = \"deepgram\"\n\
         api_key = \"env:COREGATE_TEST_UNSET_KEY\"\n",
    );
    let out = check(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("providers[0].api_key") && err.contains("COREGATE_TEST_UNSET_KEY"),
        "{err}"
    );

    write("[[providers]]\nname = \"p\"\npreset = \"elevenlabs\"\napi_key = \"sk-literal-key\"\n");
    let out = check(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("providers[0].api_key") && !err.contains("sk-literal-key"),
        "{err}"
    );
}

/// `unshare -m` gives the gateway its own /etc/hosts (a bind mount of a file this test
/// rewrites), so a name can move from 127.0.0.1 to 127.0.0.2 under it.
#[test]
fn a_host_name_endpoint_follows_its_new_address() {
    if !unshare_allowed("-m") {
        return;
    }
    let dir = tmpdir("tls-dns");
    let hosts = dir.join("hosts");
    let name = "provider.coregate.test";
    // Two addresses, and nothing listens on 127.0.0.3: its connects are refused and go on
    // to the next address.
    std::fs::write(&hosts, format!("127.0.0.3 {name}\n127.0.0.1 {name}\n")).unwrap();
    let mp = free_port();
    let _a = mock_provider("tls-dns-a", mp);
    // The second provider address: the same port on 127.0.0.2.
    let b_log = dir.join("mock-b.log");
    let mut b = spawn(
        &[
            "mock-provider",
            "--listen",
            &format!("127.0.0.2:{mp}"),
            "--cores",
            "0",
        ],
        b_log,
    );
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n[admin]\nlisten = \
             \"127.0.0.1:{admin}\"\n[stats]\ninterval_ms = 100\n[mock]\nembedded = \"off\"\n\
             [[providers]]\nname = \"p\"\nendpoints = [\"http://{name}:{mp}\"]\n\
             resolve_interval_ms = 200\npool_max_idle = 0\n[[routes]]\nprefix = \"/\"\nprovider = \"p\"\n"
        ),
    )
    .unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && exec {BIN} serve --config {}",
        hosts.display(),
        cfg.display()
    );
    let gw = spawn_command(
        Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]),
        dir.join("gateway.log"),
    );
    wait_port(port, Duration::from_secs(10));
    for _ in 0..4 {
        // pool_max_idle = 0: every request connects anew, round-robin over both addresses.
        let r = request(port, "GET /headers HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200, "{}", gw.log_text());
        assert!(r.text().contains(&format!("{name}:{mp}")), "{}", r.text());
    }

    // Rewritten in place (the bind mount follows the inode): the name moves to 127.0.0.2,
    // and the first provider goes away.
    std::fs::write(&hosts, format!("127.0.0.2 {name}\n")).unwrap();
    let stats =
        || -> serde_json::Value { serde_json::from_str(&admin_get(admin, "/stats")).unwrap() };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats()["total"]["providers"]["p"]["dns"]["updates"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(_a);
    let r = request(
        port,
        "GET /bytes?size=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(b.alive());
    assert!(
        gw.log_text().contains("now resolves to [127.0.0.2"),
        "{}",
        gw.log_text()
    );

    // A name that stops resolving keeps the last good set, and is counted.
    std::fs::write(&hosts, "").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats()["total"]["providers"]["p"]["dns"]["failures"] == 0 {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = request(
        port,
        "GET /bytes?size=10 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_name_that_does_not_resolve_stops_the_start() {
    let dir = tmpdir("tls-dns-start");
    let cfg = dir.join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"\"\n\
             [[providers]]\nname = \"p\"\nendpoints = [\"https://no-such-host.invalid\"]\n",
            free_port()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("providers[0].endpoints[0]") && err.contains("no-such-host.invalid"),
        "{err}"
    );
}

#[test]
fn a_provider_ca_file_rewritten_in_place_is_read_again_on_reload() {
    let dir = tmpdir("tls-ca-rotate");
    let (old, new) = (TestCa::new(&dir, "old"), TestCa::new(&dir, "new"));
    let leaf = new.leaf(&dir, "localhost", &["localhost"], false);
    let mp = free_port();
    let _mock = mock_tls(mp, &leaf);
    let ca_file = dir.join("provider-ca.pem");
    std::fs::copy(&old.pem, &ca_file).unwrap();
    let gw = gateway(
        "tls-ca-rotate-gw",
        "0",
        &format!(
            "[[providers]]\nname = \"p\"\nendpoints = [\"https://localhost:{mp}\"]\n\
             ca_file = \"{}\"\n[[routes]]\nprefix = \"/\"\nprovider = \"p\"\n",
            ca_file.display()
        ),
    );
    let get = || request(gw.port, "GET /bytes?size=3 HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = get();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "tls_unknown_ca");
    // The provider's CA rotates: same path, same config, new roots.
    std::fs::copy(&new.pem, &ca_file).unwrap();
    gw.proc.signal(libc::SIGHUP);
    gw.stats_until(|s| s["shards"][0]["config_generation"] == 2);
    let r = get();
    assert_eq!(r.status, 200, "{}", r.text());
}
