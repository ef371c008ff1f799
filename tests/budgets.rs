//! Usage budgets per tenant: a running WebSocket session closed with 1008 and new requests
//! refused when a budget runs out, and what a reload keeps of what was spent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::tenants::*;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn an_audio_budget_closes_the_running_session_with_1008_and_refuses_new_requests() {
    let (gw, _mock) = tenants_gateway(
        "tenants-budget",
        "0-1",
        "budget_audio_seconds_per_day = 0.5\n",
    );
    let mut ws = Reader::new(gw.connect());
    let path = "/v1/mock/ws?encoding=linear16&sample_rate=8000";
    ws.send(ws_handshake(path, "x-api-key: sk-lim-1\r\n").as_bytes());
    assert_eq!(ws.response(false).unwrap().status, 101);
    ws.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // 1,000 bytes of linear16 at 8 kHz is 62.5 ms of audio: the budget is gone after 8.
    let mut frame = vec![0x82, 0xFE, 0x03, 0xE8, 0, 0, 0, 0];
    frame.extend(std::iter::repeat_n(0u8, 1000));
    let (mut received, mut sent) = (Vec::new(), 0);
    let end = Instant::now() + Duration::from_secs(10);
    let close = loop {
        assert!(Instant::now() < end, "no Close after {sent} messages");
        if sent < 40 {
            ws.send(&frame);
            sent += 1;
        }
        let mut buf = [0u8; 8192];
        match std::io::Read::read(&mut ws.stream, &mut buf) {
            Ok(0) => panic!("cut without a Close after {sent} messages"),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        // Echoes are 4 + 1,000 bytes; a Close starts where they end.
        while received.len() >= 1004 && received[0] == 0x82 {
            received.drain(..1004);
        }
        if received.first() == Some(&0x88) && received.len() >= 4 {
            break u16::from_be_bytes([received[2], received[3]]);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(close, 1008);
    assert!(sent >= 8, "closed after only {sent} messages");
    // Every shard hears of it within a tick (a new connection may land on another shard).
    let r = lim_refused_within(&gw, Duration::from_secs(3));
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "budget_exhausted");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() <= 86_400);
    // Another tenant is not affected.
    assert_eq!(
        get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-acme-1\r\n").status,
        200
    );
}

/// Sends `text` for speech as tenant `lim`.
/// Tenant `lim`'s next request once a shard refuses it, or after `wait` (every shard hears
/// of a budget within a tick; a new connection may land on any shard).
fn lim_refused_within(gw: &Gateway, wait: Duration) -> Response {
    let end = Instant::now() + wait;
    loop {
        let r = get(gw.port, "/v1/mock/bytes?size=1", "x-api-key: sk-lim-1\r\n");
        if r.status == 429 || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tts_as_lim(port: u16, text: &str) -> Response {
    let body = format!(r#"{{"model":"m","input":"{text}","voice":"v"}}"#);
    request(
        port,
        &format!(
            "POST /v1/mock/tts HTTP/1.1\r\nHost: t\r\nx-api-key: sk-lim-1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn a_reload_keeps_what_a_tenant_spent_of_its_daily_budget() {
    let (gw, _mock) = tenants_gateway(
        "tenants-budget-reload",
        "0-1",
        "budget_tts_chars_per_day = 10\n",
    );
    assert_eq!(tts_as_lim(gw.port, "abcdef").status, 200);
    let spent = |gw: &Gateway| {
        admin_json(gw, "/usage")["tenants"]["lim"]["by_provider"]["mock"]["by_route"]["/v1/mock/"]
            ["tts_characters"]
            .as_u64()
    };
    let end = Instant::now() + Duration::from_secs(5);
    while spent(&gw) != Some(6) {
        assert!(Instant::now() < end, "6 characters never counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A few budget checks see the 6 characters before the reload.
    std::thread::sleep(Duration::from_millis(300));

    // An unrelated change: a new tenant ahead of `lim`, which moves its place in the table.
    let path = gw.dir.join("coregate.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    let new_tenant = format!(
        "[[tenants]]\nname = \"newcomer\"\nkeys = [\"sha256:{}\"]\n[[tenants]]\nname = \"acme\"",
        "ab".repeat(32)
    );
    std::fs::write(
        &path,
        cfg.replace("[[tenants]]\nname = \"acme\"", &new_tenant),
    )
    .unwrap();
    gw.proc.signal(libc::SIGHUP);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let c = stats(&gw)["config"].clone();
        if c["reloads_applied"] == 1 && c["applied_by_all_shards"] == true {
            break;
        }
        assert!(Instant::now() < end, "the reload never applied: {c}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 4 more characters make 10: the day's budget is gone, as it would be without the reload.
    assert_eq!(tts_as_lim(gw.port, "wxyz").status, 200);
    let r = lim_refused_within(&gw, Duration::from_secs(3));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "budget_exhausted");
}
