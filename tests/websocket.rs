//! Upgraded connections through the gateway: a real WebSocket client (Python's `websockets`)
//! against the mock provider's `/ws`, the tunnel gauge in /stats, an upgrade the provider
//! declines, and the tunnel idle timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_real_websocket_client_through_the_gateway() {
    // A Python that has the `websockets` package (.ci/run installs it).
    let Some(python) = require_python_module("websockets") else {
        return;
    };
    let gw = gateway("ws-client", "0", "");
    let url = format!("ws://127.0.0.1:{}/v1/mock/ws", gw.port);
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/ws_echo.py"
        ))
        .arg(&url)
        .output()
        .expect("run the client");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = gw.stats_until(|s| {
        s["total"]["tunnels"]["total"] == 1 && s["total"]["tunnels"]["active"] == 0
    });
    assert_eq!(s["total"]["tunnels"]["total"], 1, "{s}");
    assert_eq!(s["total"]["tunnels"]["active"], 0, "{s}");
    assert_eq!(s["total"]["responses"]["1xx"], 1, "{s}");
}

#[test]
fn the_handshake_is_forwarded_and_the_101_relayed() {
    let gw = gateway("ws-raw", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(ws_handshake("/v1/mock/ws", "").as_bytes());
    let resp = r.response(false).expect("101");
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    assert_eq!(resp.header("connection"), Some("Upgrade"));
    assert_eq!(resp.header("via"), Some("1.1 coregate"));
    // RFC 6455 §1.3's example key and answer: the provider saw the client's key.
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    // A masked text frame "hi" comes back unmasked.
    r.send(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    let mut got = [0u8; 4];
    std::io::Read::read_exact(&mut r.stream, &mut got).expect("echo");
    assert_eq!(got, [0x81, 2, b'h', b'i']);
    let s = gw.stats_until(|s| s["total"]["tunnels"]["active"] == 1);
    assert_eq!(s["total"]["tunnels"]["active"], 1, "{s}");
    // Closing the client's side ends the tunnel.
    r.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(r.closed_within(Duration::from_secs(5)));
    let s = gw.stats_until(|s| s["total"]["tunnels"]["active"] == 0);
    assert_eq!(s["total"]["tunnels"]["active"], 0, "{s}");
}

#[test]
fn an_upgrade_the_provider_declines_is_an_ordinary_response() {
    let gw = gateway("ws-declined", "0", "");
    let mut r = Reader::new(gw.connect());
    r.send(ws_handshake("/v1/mock/bytes?size=7", "").as_bytes());
    let resp = r.response(false).expect("200");
    assert_eq!((resp.status, resp.body.len()), (200, 7));
    assert!(resp.header("upgrade").is_none());
    // The client connection goes on as HTTP.
    r.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.response(false).expect("health").status, 200);
    // Without a handshake the mock's /ws asks for one.
    r.send(b"GET /v1/mock/ws HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = r.response(false).expect("426");
    assert_eq!(
        (resp.status, resp.header("upgrade")),
        (426, Some("websocket"))
    );
}

/// A POST with a body to the mock's /ws is answered 426 after its body is read: the body must
/// not become the next request on that (pooled) provider connection.
#[test]
fn a_post_with_a_body_to_ws_leaves_the_pooled_connection_clean() {
    let mp = free_port();
    let _mock = mock_provider("ws-post-body", mp);
    // Straight to the mock: the request after the 426 on the same connection is served.
    let mut m = Reader::new(std::net::TcpStream::connect(("127.0.0.1", mp)).unwrap());
    let smuggle = "GET /bytes?size=3 HTTP/1.1\r\nHost: m\r\n\r\n";
    m.send(
        format!(
            "POST /ws HTTP/1.1\r\nHost: m\r\nContent-Length: {}\r\n\r\n{smuggle}",
            smuggle.len()
        )
        .as_bytes(),
    );
    assert_eq!(m.response(false).expect("426").status, 426);
    m.send(b"GET /bytes?size=5 HTTP/1.1\r\nHost: m\r\n\r\n");
    let next = m.response(false).expect("the next response");
    assert_eq!(
        (next.status, next.body.len()),
        (200, 5),
        "the body was read as a request"
    );
    // Through the gateway, with one pooled provider connection shared by two clients.
    let gw = gateway(
        "ws-post-body-gw",
        "0",
        &format!(
            "[[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{mp}\"]\npool_max_total = 1\n\
             pool_max_idle = 1\n[[routes]]\nprefix = \"/\"\nprovider = \"m\"\n"
        ),
    );
    let post = format!(
        "POST /ws HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggle}",
        smuggle.len()
    );
    assert_eq!(request(gw.port, &post).status, 426);
    let r = request(
        gw.port,
        "GET /bytes?size=5 HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.body.len()), (200, 5));
}

#[test]
fn an_idle_tunnel_is_closed() {
    let mp = free_port();
    let _mock = mock_provider("ws-idle", mp);
    let gw = gateway(
        "ws-idle",
        "0",
        &format!(
            "[[providers]]\nname = \"m\"\nendpoints = [\"127.0.0.1:{mp}\"]\n\
             tunnel_idle_timeout_ms = 300\n\
             [[routes]]\nprefix = \"/p/\"\nprovider = \"m\"\nrewrite = \"/\"\n"
        ),
    );
    let mut r = Reader::new(gw.connect());
    r.send(ws_handshake("/p/ws", "").as_bytes());
    assert_eq!(r.response(false).expect("101").status, 101);
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        r.stream.write_all(&[0x89, 0x80, 0, 0, 0, 0]).expect("ping");
    }
    assert!(!r.closed_within(Duration::from_millis(100)));
    // ...silence closes it.
    let started = std::time::Instant::now();
    assert!(r.closed_within(Duration::from_secs(5)));
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_key_sent_as_a_protocol_entry_is_selected_when_the_provider_selects_none() {
    let dir = tmpdir("ws-key-protocol");
    let key = dir.join("acme.key");
    std::fs::write(&key, "sk-acme-1\n").unwrap();
    let gw = gateway(
        "ws-key-protocol-gw",
        "0",
        &format!(
            "[auth]\nmode = \"keys\"\n[[tenants]]\nname = \"acme\"\nkeys = [\"file:{}\"]\n",
            key.display()
        ),
    );
    // A browser that can only send its key as a protocol entry fails a 101 that selects
    // none of the protocols it offered. The mock selects none; the gateway selects the
    // key's entry on the client's side (the provider never saw it).
    for offered in ["coregate-key.sk-acme-1", "chat, coregate-key.sk-acme-1"] {
        let mut r = Reader::new(gw.connect());
        r.send(
            ws_handshake(
                "/v1/mock/ws",
                &format!("Sec-WebSocket-Protocol: {offered}\r\n"),
            )
            .as_bytes(),
        );
        let resp = r.response(false).expect("101");
        assert_eq!(resp.status, 101, "{offered}");
        assert_eq!(
            resp.header("sec-websocket-protocol"),
            Some("coregate-key.sk-acme-1"),
            "{offered}"
        );
        ws_echo(&mut r);
    }
    // A key in a header selects nothing on the provider's behalf.
    let mut r = Reader::new(gw.connect());
    r.send(ws_handshake("/v1/mock/ws", "Authorization: Bearer sk-acme-1\r\n").as_bytes());
    let resp = r.response(false).expect("101");
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("sec-websocket-protocol"), None);
}
