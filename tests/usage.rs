//! Usage metering against the real gateway and mock provider: a multipart upload from a
//! real client, refusals counted per reason and metered, the figures of /usage and
//! /metrics, and the usage export.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Tenants over a mock provider, as in tests/tenants.rs: `acme` (every route), `lim` (only
/// `/v1/mock/`) and `more`: (name, limits) of further tenants of `/v1/mock/`. Each one's
/// key is `sk-NAME-1`. A usage export, routes `/other/` and `/v1/mock/`, no admin token.
fn usage_gateway(name: &str, more: &[(&str, &str)]) -> (Gateway, Proc) {
    let dir = tmpdir(name);
    let (port, admin, mock) = (free_port(), free_port(), free_port());
    let export = dir.join("usage.jsonl").display().to_string();
    let mock_proc = mock_provider(name, mock);
    wait_port(mock, Duration::from_secs(10));
    let mut cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ncores = \"0\"\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [stats]\ninterval_ms = 100\n[auth]\nmode = \"keys\"\n\
         [usage]\nexport = \"{export}\"\n\
         [[providers]]\nname = \"mock\"\nendpoints = [\"127.0.0.1:{mock}\"]\n\
         [[routes]]\nprefix = \"/other/\"\nprovider = \"mock\"\nrewrite = \"/\"\n\
         [[routes]]\nprefix = \"/v1/mock/\"\nprovider = \"mock\"\nrewrite = \"/\"\n"
    );
    let tenants = [("acme", "routes = []"), ("lim", "routes = [\"/v1/mock/\"]")];
    let more: Vec<(&str, String)> = more
        .iter()
        .map(|(n, l)| (*n, format!("routes = [\"/v1/mock/\"]\n{l}")))
        .collect();
    let all = tenants.iter().map(|(n, l)| (*n, l.to_string())).chain(more);
    for (tenant, limits) in all {
        let path = dir.join(format!("{tenant}.key"));
        std::fs::write(&path, format!("sk-{tenant}-1\n")).unwrap();
        cfg.push_str(&format!(
            "[[tenants]]\nname = \"{tenant}\"\nkeys = [\"file:{}\"]\n{limits}\n",
            path.display()
        ));
    }
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

/// The usage export's lines once `pred` holds for them, or after 5 s.
fn export_until(
    gw: &Gateway,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = whole_lines(&gw.dir.join("usage.jsonl"));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if pred(&lines) || Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_multipart_transcription_upload_from_curl_is_metered_from_its_wav() {
    if !require_tool("curl") {
        return;
    }
    let (gw, _mock) = usage_gateway("usage-multipart", &[]);
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
    let lines = export_until(&gw, |l| !l.is_empty());
    assert_eq!(lines[0]["audio_seconds"], 1.5, "{lines:?}");
}

/// A GET with `key` in `x-api-key` (none when empty), on a connection of its own.
fn get(port: u16, path: &str, key: &str) -> Response {
    let auth = match key {
        "" => String::new(),
        k => format!("x-api-key: {k}\r\n"),
    };
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n"),
    )
}

fn post(port: u16, path: &str, key: &str, ct: &str, body: &[u8]) -> Response {
    let mut r = Reader::new(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
    r.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nx-api-key: {key}\r\nContent-Type: {ct}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.send(body);
    r.response(false).unwrap()
}

/// The status and error code of a refusal.
fn refused(r: &Response) -> (u16, String) {
    let code = r.json()["error"]["code"].as_str().unwrap_or("").to_string();
    (r.status, code)
}

/// Opens a WebSocket session to the mock for the tenant of `key`; it stays open.
fn open_session(gw: &Gateway, key: &str) -> Reader {
    let mut ws = Reader::new(gw.connect());
    ws.send(ws_handshake("/v1/mock/ws", &format!("x-api-key: {key}\r\n")).as_bytes());
    assert_eq!(ws.response(false).unwrap().status, 101);
    ws
}

#[test]
fn every_refusal_is_counted_by_reason_and_tenant_and_metered_when_the_tenant_is_known() {
    let (gw, _mock) = usage_gateway(
        "usage-refusals",
        &[
            ("rate", "rate_per_s = 0.01\nburst = 1"),
            ("conc", "max_concurrent = 1"),
            ("sess", "max_sessions = 1"),
            ("budget", "budget_tts_chars_per_day = 3"),
        ],
    );
    let (port, path) = (gw.port, "/v1/mock/bytes?size=1");
    let code = |c: &str| c.to_string();
    assert_eq!(refused(&get(port, path, "")), (401, code("missing_key")));
    assert_eq!(
        refused(&get(port, path, "sk-nobody")),
        (401, code("unknown_key"))
    );
    assert_eq!(
        refused(&get(port, "/other/bytes?size=1", "sk-lim-1")),
        (403, code("forbidden_route"))
    );
    // A burst of one, then a token per 100 s.
    assert_eq!(get(port, path, "sk-rate-1").status, 200);
    assert_eq!(
        refused(&get(port, path, "sk-rate-1")),
        (429, code("rate_limited"))
    );
    // An open session holds the tenant's one request in flight; the other tenant's one
    // session is all it may have.
    let _conc = open_session(&gw, "sk-conc-1");
    assert_eq!(
        refused(&get(port, path, "sk-conc-1")),
        (429, code("too_many_concurrent_requests"))
    );
    let _sess = open_session(&gw, "sk-sess-1");
    let r = request(
        port,
        &ws_handshake("/v1/mock/ws", "x-api-key: sk-sess-1\r\n"),
    );
    assert_eq!(refused(&r), (429, code("too_many_sessions")));
    // Five characters against a budget of three: refused once the aggregator has seen it.
    let tts = r#"{"input":"héllo"}"#.as_bytes();
    assert_eq!(
        post(port, "/v1/mock/tts", "sk-budget-1", "application/json", tts).status,
        200
    );
    let end = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = get(port, path, "sk-budget-1");
        if r.status != 200 || Instant::now() > end {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(refused(&r), (429, code("budget_exhausted")));

    // /stats: one of each reason, and the classes they add up to.
    let s = gw.stats_until(|s| s["total"]["refused"]["by_reason"]["budget_exhausted"] == 1);
    let by_reason = &s["total"]["refused"]["by_reason"];
    for reason in [
        "missing_key",
        "unknown_key",
        "forbidden_route",
        "rate_limited",
        "too_many_concurrent_requests",
        "too_many_sessions",
        "budget_exhausted",
    ] {
        assert_eq!(by_reason[reason], 1, "{reason}: {by_reason}");
    }
    let total = &s["total"]["refused"];
    assert_eq!(
        (
            &total["unauthorized"],
            &total["forbidden"],
            &total["limited"]
        ),
        (&2.into(), &1.into(), &4.into()),
        "{total}"
    );
    // The budget refusal is counted with the tenant's limited requests.
    assert_eq!(s["tenants"]["budget"]["limited"], 1, "{}", s["tenants"]);

    // /metrics: per tenant (`-` when the key named none) and reason.
    let metrics = admin_get(gw.admin, "/metrics");
    for (tenant, reason) in [
        ("-", "missing_key"),
        ("-", "unknown_key"),
        ("lim", "forbidden_route"),
        ("rate", "rate_limited"),
        ("conc", "too_many_concurrent_requests"),
        ("sess", "too_many_sessions"),
        ("budget", "budget_exhausted"),
    ] {
        let line = format!("coregate_refused_total{{tenant=\"{tenant}\",reason=\"{reason}\"}} 1");
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }

    // /usage: a known tenant's refusals under their route, as 4xx; none for unknown keys.
    let u = usage_until(&gw, |u| {
        route_usage(u, "budget", "/v1/mock/")["responses"]["4xx"] == 1
    });
    assert_eq!(
        route_usage(&u, "lim", "/other/")["responses"]["4xx"],
        1,
        "{u}"
    );
    assert_eq!(route_usage(&u, "rate", "/v1/mock/")["responses"]["2xx"], 1);
    assert_eq!(route_usage(&u, "rate", "/v1/mock/")["responses"]["4xx"], 1);
    assert_eq!(route_usage(&u, "rate", "/v1/mock/")["requests"], 2);
    assert_eq!(route_usage(&u, "rate", "/v1/mock/")["refused"], 1);
    assert_eq!(route_usage(&u, "conc", "/v1/mock/")["responses"]["4xx"], 1);
    assert_eq!(route_usage(&u, "sess", "/v1/mock/")["responses"]["4xx"], 1);
    assert!(u["tenants"].get("-").is_none(), "{u}");
    // The export has their lines too.
    let limited = |l: &[serde_json::Value]| l.iter().filter(|l| l["status"] == 429).count();
    let lines = export_until(&gw, |l| limited(l) >= 4);
    let forbidden = lines.iter().find(|l| l["status"] == 403).unwrap();
    assert_eq!(forbidden["tenant"], "lim", "{forbidden}");
    assert_eq!(forbidden["route"], "/other/", "{forbidden}");
    assert_eq!(forbidden["provider"], "mock", "{forbidden}");
    assert_eq!(limited(&lines), 4, "{lines:?}");
}

/// Every byte of the response to `raw` (sent with `Connection: close`), and its body
/// de-chunked.
fn raw_exchange(port: u16, raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut rest = &all[at..];
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap(), 16).unwrap();
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 4 + size..];
    }
    (all, body)
}

#[test]
fn http_figures_classes_ttfb_tts_bytes_and_query_audio_reach_usage_and_metrics() {
    let (gw, _mock) = usage_gateway("usage-http", &[]);
    let port = gw.port;
    for (path, status) in [
        ("/v1/mock/bytes?size=10&latency_ms=5", 200),
        ("/v1/mock/bytes?status=404", 404),
        ("/v1/mock/bytes?status=503", 503),
    ] {
        assert_eq!(get(port, path, "sk-acme-1").status, status, "{path}");
    }
    // TTS: three frames of 640 bytes of audio, chunked.
    let tts = br#"{"model":"tts-1","input":"twelve chars"}"#;
    let head = format!(
        "POST /v1/mock/tts?frames=3&frame_interval_ms=0 HTTP/1.1\r\nHost: t\r\n\
         x-api-key: sk-lim-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        tts.len()
    );
    let (all, audio) = raw_exchange(port, &[head.as_bytes(), tts].concat());
    assert_eq!(audio.len(), 3 * 640);
    // Deepgram's pre-recorded API: raw linear16 at 16 kHz, named by the query: 1.25 s.
    let pcm = vec![0u8; 40_000];
    let q = "/v1/mock/stt?model=nova-2&encoding=linear16&sample_rate=16000&channels=1";
    let r = post(port, q, "sk-acme-1", "application/octet-stream", &pcm);
    assert_eq!(r.status, 200);

    let u = usage_until(&gw, |u| {
        route_usage(u, "acme", "/v1/mock/")["requests"] == 4
            && route_usage(u, "lim", "/v1/mock/")["requests"] == 1
    });
    let acme = route_usage(&u, "acme", "/v1/mock/");
    let classes = &acme["responses"];
    assert_eq!(
        (&classes["2xx"], &classes["4xx"], &classes["5xx"]),
        (&2.into(), &1.into(), &1.into()),
        "{acme}"
    );
    assert!(acme["ttfb_ms_mean"].as_f64().unwrap() > 0.0, "{acme}");
    assert_eq!(acme["audio_seconds"], 1.25, "{acme}");
    assert_eq!(acme["unmetered_bytes"], 0, "{acme}");
    let lim = route_usage(&u, "lim", "/v1/mock/");
    assert_eq!(lim["tts_characters"], 12, "{lim}");
    // Every byte the client got: the head and the chunk framing around the audio.
    assert_eq!(lim["bytes_down"], all.len(), "{lim}");
    assert!(all.len() > audio.len());

    // /metrics: the usage families with their tenant label.
    let metrics = admin_get(gw.admin, "/metrics");
    let labels = |t: &str| format!("{{tenant=\"{t}\",provider=\"mock\",route=\"/v1/mock/\"}}");
    for line in [
        format!("coregate_usage_requests_total{} 4", labels("acme")),
        format!("coregate_usage_requests_total{} 1", labels("lim")),
        format!(
            "coregate_usage_audio_milliseconds_total{} 1250",
            labels("acme")
        ),
        format!("coregate_usage_tts_characters_total{} 12", labels("lim")),
        format!(
            "coregate_usage_bytes_down_total{} {}",
            labels("lim"),
            all.len()
        ),
    ] {
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    // docs/tenants.md names every usage family /metrics has.
    let docs = std::fs::read_to_string("docs/tenants.md").unwrap();
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|f| f.starts_with("coregate_usage_") || f.starts_with("coregate_refused"))
        .collect();
    assert!(families.len() >= 10, "{families:?}");
    for family in families {
        assert!(
            docs.contains(&format!("`{family}")),
            "docs/tenants.md lacks {family}"
        );
    }
}

#[test]
fn a_websocket_session_has_its_seconds_and_payload_down() {
    let (gw, _mock) = usage_gateway("usage-ws", &[]);
    let mut ws = open_session(&gw, "sk-acme-1");
    for _ in 0..3 {
        ws_echo(&mut ws);
    }
    // The session lasts at least this long: its seconds cannot be less.
    std::thread::sleep(Duration::from_millis(300));
    ws.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(ws.closed_within(Duration::from_secs(5)));
    let u = usage_until(&gw, |u| {
        route_usage(u, "acme", "/v1/mock/")["websocket"]["sessions"] == 1
    });
    let ws = &route_usage(&u, "acme", "/v1/mock/")["websocket"];
    let seconds = ws["seconds"].as_f64().unwrap();
    assert!((0.3..10.0).contains(&seconds), "{ws}");
    assert_eq!(ws["messages_down"], 3, "{ws}");
    assert_eq!(ws["payload_bytes_down"], 6, "{ws}");
    assert_eq!(ws["payload_bytes_up"], 6, "{ws}");
    let lines = export_until(&gw, |l| !l.is_empty());
    assert_eq!(lines[0]["ws_payload_bytes_down"], 6, "{lines:?}");
    assert!(
        lines[0]["duration_ms"].as_f64().unwrap() >= 300.0,
        "{lines:?}"
    );
}

#[test]
fn the_usage_export_is_reopened_on_sigusr1() {
    let (gw, _mock) = usage_gateway("usage-export-reopen", &[]);
    let path = "/v1/mock/bytes?size=1";
    assert_eq!(get(gw.port, path, "sk-acme-1").status, 200);
    assert_eq!(export_until(&gw, |l| !l.is_empty()).len(), 1);
    // logrotate: move the file, SIGUSR1, and the next line goes to a new file.
    let (export, rotated) = (gw.dir.join("usage.jsonl"), gw.dir.join("usage.jsonl.1"));
    std::fs::rename(&export, &rotated).unwrap();
    gw.proc.signal(libc::SIGUSR1);
    let end = Instant::now() + Duration::from_secs(5);
    while !export.exists() {
        assert!(Instant::now() < end, "the export was not reopened");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(gw.port, path, "sk-lim-1").status, 200);
    let fresh = export_until(&gw, |l| !l.is_empty());
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(fresh[0]["tenant"], "lim");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1, "{old}");
    assert!(old.contains("\"tenant\":\"acme\""), "{old}");
}
