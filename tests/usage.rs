//! Usage metering against the real gateway and mock provider: a multipart upload from a
//! real client, refusals counted per reason and metered, the figures of /usage and
//! /metrics, and the usage export.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Two tenants over a mock provider, as in tests/tenants.rs: `acme` (every route) and `lim`
/// (only `/v1/mock/`, with `limits`), a usage export and an access log, and no admin token.
fn usage_gateway(name: &str, limits: &str) -> (Gateway, Proc) {
    let dir = tmpdir(name);
    let key = |file: &str, key: &str| {
        let path = dir.join(file);
        std::fs::write(&path, format!("{key}\n")).unwrap();
        format!("file:{}", path.display())
    };
    let (acme, lim) = (key("acme.key", "sk-acme-1"), key("lim.key", "sk-lim-1"));
    let (port, admin, mock) = (free_port(), free_port(), free_port());
    let export = dir.join("usage.jsonl").display().to_string();
    let mock_proc = mock_provider(name, mock);
    wait_port(mock, Duration::from_secs(10));
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [stats]\ninterval_ms = 100\n[auth]\nmode = \"keys\"\n\
         [usage]\nexport = \"{export}\"\n\
         [[providers]]\nname = \"mock\"\nendpoints = [\"127.0.0.1:{mock}\"]\n\
         [[routes]]\nprefix = \"/other/\"\nprovider = \"mock\"\nrewrite = \"/\"\n\
         [[routes]]\nprefix = \"/v1/mock/\"\nprovider = \"mock\"\nrewrite = \"/\"\n\
         [[tenants]]\nname = \"acme\"\nkeys = [\"{acme}\"]\n\
         [[tenants]]\nname = \"lim\"\nkeys = [\"{lim}\"]\nroutes = [\"/v1/mock/\"]\n{limits}\n"
    );
    (gateway_from_config(dir, port, admin, &cfg), mock_proc)
}

fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    let body = admin_get(gw.admin, path);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// `/usage` once `pred` holds for it (shards ship every 100 ms), or after 5 s.
fn usage_until(gw: &Gateway, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let u = admin_json(gw, "/usage");
        if pred(&u) || Instant::now() > end {
            return u;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The usage of `tenant` on the mock through `route`.
fn route_usage<'a>(u: &'a serde_json::Value, tenant: &str, route: &str) -> &'a serde_json::Value {
    &u["tenants"][tenant]["by_provider"]["mock"]["by_route"][route]
}

/// The usage export's lines once there are at least `n`.
fn export_lines(gw: &Gateway, n: usize) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(gw.dir.join("usage.jsonl")).unwrap_or_default();
        if text.lines().count() >= n || Instant::now() > end {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WAV file of `data` bytes of 16-bit mono audio at `rate` Hz.
fn wav(rate: u32, data: usize) -> Vec<u8> {
    let mut b = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(b"\x02\0\x10\0data");
    b.extend_from_slice(&(data as u32).to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

#[test]
fn a_multipart_transcription_upload_from_curl_is_metered_from_its_wav() {
    if !require_tool("curl") {
        return;
    }
    let (gw, _mock) = usage_gateway("usage-multipart", "");
    // OpenAI's transcription request, as curl's `-F` sends it: a model field, the file.
    let audio = wav(8000, 24_000);
    let file = gw.dir.join("speech.wav");
    std::fs::write(&file, &audio).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-H", "x-api-key: sk-acme-1"])
        .args(["-F", "model=whisper-1", "-F"])
        .arg(format!("file=@{};type=audio/wav", file.display()))
        .arg(format!("http://127.0.0.1:{}/v1/mock/stt", gw.port))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The mock says how many body bytes it got: the form around the file is unmetered.
    let body_len = answer["bytes"].as_u64().unwrap();
    assert!(body_len > audio.len() as u64, "{answer}");

    let u = usage_until(&gw, |u| {
        route_usage(u, "acme", "/v1/mock/")["requests"] == 1
    });
    let route = route_usage(&u, "acme", "/v1/mock/");
    assert_eq!(route["audio_seconds"], 1.5, "{route}");
    assert_eq!(
        route["unmetered_bytes"],
        body_len - audio.len() as u64,
        "{route}"
    );
    let lines = export_lines(&gw, 1);
    assert_eq!(lines[0]["audio_seconds"], 1.5, "{lines:?}");
}
