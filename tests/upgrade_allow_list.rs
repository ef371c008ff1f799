//! Upgrades are honoured only for protocols on the route's allow-list (default `websocket`).
//! The h2c smuggling class: a client sends `Upgrade: h2c` (with `HTTP2-Settings`, not named in
//! `Connection`); a gateway that relayed the provider's `101 Upgrade: h2c` would let it speak
//! HTTP/2 straight to the provider, past routing, header rules, keys and limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

/// A naive provider on a raw socket: for each connection it reads one request head, reports
/// it, and answers `101` for the protocol named by `switch_to(head)` or 200 otherwise.
fn naive_provider(switch_to: fn(&str) -> Option<&'static str>) -> (u16, mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok((mut s, _)) = l.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let answer = match switch_to(&head) {
                // A WebSocket 101 answers RFC 6455's example key, whatever the request's.
                Some(p) => format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {p}\r\nConnection: Upgrade\r\n{}\r\n",
                    if p == "websocket" { "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" } else { "" }
                ),
                None => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string(),
            };
            let _ = s.write_all(answer.as_bytes());
            let _ = tx.send(head);
            // Keep the connection open a moment, as a switched provider would.
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    (port, rx)
}

fn route_toml(up: u16, route_extra: &str) -> String {
    format!(
        "[[providers]]\nname = \"p\"\nendpoints = [\"127.0.0.1:{up}\"]\n\
         [[routes]]\nprefix = \"/p/\"\nprovider = \"p\"\n{route_extra}\n"
    )
}

/// Switches to whatever the request's Upgrade field names first.
fn switch_to_offered(head: &str) -> Option<&'static str> {
    let lower = head.to_ascii_lowercase();
    let line = lower.lines().find(|l| l.starts_with("upgrade:"))?;
    if line.contains("h2c") {
        Some("h2c")
    } else if line.contains("websocket") {
        Some("websocket")
    } else if line.contains("x-custom") {
        Some("x-custom")
    } else {
        None
    }
}

#[test]
fn h2c_upgrade_is_stripped_and_answered_as_an_ordinary_request() {
    let (up, heads) = naive_provider(switch_to_offered);
    let gw = gateway("h2c-strip", "0", &route_toml(up, ""));
    let r = request(
        gw.port,
        "GET /p/x HTTP/1.1\r\nHost: t\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
         Connection: Upgrade\r\n\r\n",
    );
    assert_eq!(r.status, 200, "the h2c offer is not honoured");
    let seen = heads
        .recv_timeout(Duration::from_secs(5))
        .expect("provider saw the request");
    let lower = seen.to_ascii_lowercase();
    assert!(!lower.contains("upgrade"), "Upgrade stripped: {seen}");
    assert!(
        !lower.contains("http2-settings"),
        "HTTP2-Settings stripped: {seen}"
    );
}

#[test]
fn h2c_offered_beside_websocket_forwards_only_websocket() {
    let (up, heads) = naive_provider(switch_to_offered);
    let gw = gateway("h2c-beside-ws", "0", &route_toml(up, ""));
    let mut r = Reader::new(gw.connect());
    r.send(
        b"GET /p/x HTTP/1.1\r\nHost: t\r\nUpgrade: h2c, websocket\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\
          Connection: Upgrade, HTTP2-Settings\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    );
    let resp = r.response(false).expect("101");
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("upgrade"), Some("websocket"));
    let seen = heads
        .recv_timeout(Duration::from_secs(5))
        .expect("provider saw the request");
    let upgrade_line = seen
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("upgrade:"))
        .expect("Upgrade forwarded");
    assert_eq!(upgrade_line, "Upgrade: websocket");
    assert!(
        !seen.to_ascii_lowercase().contains("http2-settings"),
        "{seen}"
    );
}

#[test]
fn a_101_to_a_protocol_the_client_did_not_offer_is_a_bad_response() {
    // The provider switches to h2c though the client asked for websocket.
    let (up, _heads) = naive_provider(|_| Some("h2c"));
    let gw = gateway("h2c-unoffered-101", "0", &route_toml(up, ""));
    let r = request(
        gw.port,
        "GET /p/x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 502, "RFC 9110 15.2.2");
    assert_eq!(r.json()["error"]["code"], "bad_response");
}

#[test]
fn a_websocket_101_that_does_not_answer_the_key_is_a_bad_response() {
    // The provider's 101 carries the accept value of another key: it did not read this
    // handshake (a status a client could steer, a cache, a confused server).
    let (up, _heads) = naive_provider(|_| Some("websocket"));
    let gw = gateway("ws-wrong-accept", "0", &route_toml(up, ""));
    let handshake = |key: &str| {
        let mut r = Reader::new(gw.connect());
        r.send(
            format!(
                "GET /p/x HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        );
        r.response(false).expect("an answer")
    };
    let r = handshake("AQIDBAUGBwgJCgsMDQ4PEA==");
    assert_eq!(r.status, 502, "RFC 6455 4.1");
    assert_eq!(r.json()["error"]["code"], "bad_response");
    assert_eq!(handshake("dGhlIHNhbXBsZSBub25jZQ==").status, 101);
}

#[test]
fn the_allow_list_is_per_route() {
    let (up, heads) = naive_provider(switch_to_offered);
    let gw = gateway(
        "upgrade-allow-list",
        "0",
        &format!(
            "{}\n[[routes]]\nprefix = \"/custom/\"\nprovider = \"p\"\n\
             upgrade_protocols = [\"websocket\", \"x-custom\"]\n",
            route_toml(up, "")
        ),
    );
    let ask = |path: &str| {
        request(
            gw.port,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: x-custom\r\nConnection: Upgrade\r\n\r\n"),
        )
    };
    // The default route does not allow x-custom: an ordinary request.
    assert_eq!(ask("/p/x").status, 200);
    let _ = heads.recv_timeout(Duration::from_secs(5));
    // The route that lists it relays the switch.
    assert_eq!(ask("/custom/x").status, 101);
}

#[test]
fn check_refuses_h2c_on_the_allow_list() {
    let dir = tmpdir("h2c-check");
    let path = dir.join("c.toml");
    std::fs::write(&path, route_toml(1, "upgrade_protocols = [\"h2c\"]")).expect("write");
    let out = std::process::Command::new(BIN)
        .args(["check", path.to_str().expect("path")])
        .output()
        .expect("run check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[0].upgrade_protocols") && err.contains("h2c"),
        "{err}"
    );
}
