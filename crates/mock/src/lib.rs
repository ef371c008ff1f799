//! `coregate mock-provider`: a fast, thread-per-core stand-in for voice-AI providers.
//!
//! Endpoints (see docs/mock-provider.md for every knob):
//! * `POST /tts` — the text body is answered with N chunked audio frames at a pace;
//! * `POST /stt` — the audio body is answered with a JSON transcript;
//! * `GET /bytes?size=N` — a fixed body of N bytes;
//! * `POST /echo` — the request body streamed back as it arrives;
//! * `GET /headers` — the request line and header fields as received, as JSON;
//! * `GET /` — health.
//!
//! It serves the tests, the benchmarks and the embedded default, so it is built like the
//! gateway: one pinned glommio executor per core, each with its own SO_REUSEPORT listener.
//! With `--tls-cert`/`--tls-key` every endpoint (and `/ws`) is served over TLS instead.

mod body;
pub mod knobs;
pub mod ws;

use body::*;

use coregate_http1::chunked::{encode_chunk, LAST_CHUNK};
use coregate_http1::reply::{push_u64, reason, DateCache};
use coregate_http1::request::{parse_head, HeaderRange, Limits, Parsed, RequestHead, Version};
use coregate_runtime::executor::run_pinned;
use coregate_runtime::tls::ServerCerts;
use coregate_runtime::wire::{BodyState, Stream, Wire};
use knobs::{Knobs, Reset};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const LIMITS: Limits = Limits {
    max_head_bytes: 64 * 1024,
    max_headers: 128,
};
const TIMEOUT: Duration = Duration::from_secs(60);
/// Most text read for `/tts`.
const MAX_TTS_TEXT: u64 = 1 << 20;

/// Starts the embedded mock provider on `listen` on its own thread, pinned to `core`, and
/// waits until it listens. The gateway adds the provider and route that point at it.
pub fn start_embedded(listen: &str, core: Option<usize>) -> Result<(), String> {
    let listen = listen.to_string();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("coregate-mock".into())
        .spawn(move || run_executor(core, listen, None, tx))
        .map_err(|e| format!("cannot start the embedded mock provider: {e}"))?;
    rx.recv()
        .map_err(|_| "the embedded mock provider exited during start-up".to_string())?
}

/// The certificate the mock serves TLS with (`--tls-cert`, `--tls-key`).
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// `coregate mock-provider`: one pinned executor per core; blocks until they exit.
pub fn run(listen: &str, cores: &[usize], tls: Option<TlsFiles>) -> Result<(), String> {
    let tls = match tls {
        Some(f) => Some(ServerCerts::new(
            coregate_runtime::tls::certified_key(&f.cert, &f.key)?,
            Vec::new(),
        )?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (tx, rx) = crossbeam_channel::bounded(cores.len());
    let mut threads = Vec::new();
    for &core in cores {
        let (listen, tx, tls) = (listen.to_string(), tx.clone(), tls.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("coregate-mock-{core}"))
                .spawn(move || run_executor(Some(core), listen, tls, tx))
                .map_err(|e| format!("cannot start mock shard: {e}"))?,
        );
    }
    for _ in cores {
        rx.recv()
            .map_err(|_| "a mock shard exited during start-up".to_string())??;
    }
    coregate_runtime::log::info(&format!(
        "mock provider listening on {scheme}://{listen}, cores {cores:?}"
    ));
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn run_executor(
    core: Option<usize>,
    listen: String,
    tls: Option<ServerCerts>,
    ready: crossbeam_channel::Sender<Result<(), String>>,
) {
    let name = match core {
        Some(c) => format!("mock-{c}"),
        None => "mock".to_string(),
    };
    let on_error = {
        let ready = ready.clone();
        move |e: String| {
            let _ = ready.send(Err(format!("mock provider: {e}")));
        }
    };
    run_pinned(&name, core, on_error, async move {
        let listener = match coregate_runtime::listener::bind_listener(&listen, 4096) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!(
                    "mock provider: cannot listen on {listen}: {e}"
                )));
                return;
            }
        };
        let tls = match tls.map(|t| t.shard_config()).transpose() {
            Ok(t) => t,
            Err(e) => {
                let _ = ready.send(Err(format!("mock provider: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let state = Rc::new(MockShard {
            date: RefCell::new(DateCache::default()),
            rng: Cell::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id())),
        });
        let ticker = state.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(200)).await;
                ticker.date.borrow_mut().refresh();
            }
        })
        .detach();
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    glommio::spawn_local(accepted(state.clone(), stream, tls.clone())).detach();
                }
                Err(_) => glommio::timer::sleep(Duration::from_millis(20)).await,
            }
        }
    });
}

/// Serves one accepted connection, after a TLS handshake when the mock serves TLS.
async fn accepted(
    state: Rc<MockShard>,
    stream: glommio::net::TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let stream = match tls {
        None => Stream::new(stream),
        Some(cfg) => match coregate_runtime::tls::accept(stream, cfg, TIMEOUT).await {
            Ok((s, _)) => s,
            Err(_) => return,
        },
    };
    serve(state, Wire::over(stream, 8192)).await;
}

struct MockShard {
    date: RefCell<DateCache>,
    rng: Cell<u64>,
}

impl MockShard {
    /// Uniform in [0, 1): xorshift64*, per shard, no sharing.
    fn random(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One request as the mock sees it.
struct MockRequest {
    head: RequestHead,
    is_head: bool,
    /// For `/headers`: the request line and fields as received.
    seen: Option<serde_json::Value>,
    path: String,
    knobs: Knobs,
    /// `Sec-WebSocket-Key` of an upgrade request.
    ws_key: Option<String>,
}

async fn serve(shard: Rc<MockShard>, mut wire: Wire) {
    let mut headers: Vec<HeaderRange> = Vec::new();
    loop {
        let req = match read_request(&mut wire, &mut headers).await {
            Some(r) => r,
            None => break,
        };
        match respond(&shard, &mut wire, req).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {
                // A reset knob: SO_LINGER 0 is set, dropping the socket sends RST.
                return;
            }
            Err(_) => break,
        }
    }
    wire.close().await;
}

async fn read_request(wire: &mut Wire, headers: &mut Vec<HeaderRange>) -> Option<MockRequest> {
    loop {
        if !wire.rx.buffered().is_empty() {
            match parse_head(wire.rx.buffered(), LIMITS, headers) {
                Ok(Parsed::Complete(head)) => {
                    let buf = wire.rx.buffered();
                    let full = String::from_utf8_lossy(head.path(buf)).into_owned();
                    let (path, query) = full.split_once('?').unwrap_or((&full, ""));
                    let hs = headers.iter().map(|h| {
                        let name = std::str::from_utf8(&buf[h.name.clone()]).unwrap_or("");
                        (name, &buf[h.value.clone()])
                    });
                    let knobs = Knobs::parse(query, hs);
                    // A handshake is a GET with version 13 (RFC 6455 §4.2.1); anything else
                    // is answered 426 naming the version, as a WebSocket server must (§4.4).
                    let field = |name: &[u8]| {
                        headers
                            .iter()
                            .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name))
                            .map(|h| &buf[h.value.clone()])
                    };
                    let handshake = head.upgrade
                        && head.method(buf) == b"GET"
                        && field(b"sec-websocket-version").map(coregate_http1::trim_ows)
                            == Some(&b"13"[..]);
                    let ws_key = field(b"sec-websocket-key")
                        .filter(|_| handshake)
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    let path = path.to_string();
                    let is_head = head.is_head(buf);
                    let seen = (path == "/headers").then(|| {
                        let text = |r: std::ops::Range<usize>| {
                            String::from_utf8_lossy(&buf[r]).into_owned()
                        };
                        let fields: Vec<(String, String)> = headers
                            .iter()
                            .map(|h| (text(h.name.clone()), text(h.value.clone())))
                            .collect();
                        serde_json::json!({
                            "method": text(head.method.clone()),
                            "target": full,
                            "headers": fields,
                        })
                    });
                    wire.rx.consume(head.head_len);
                    return Some(MockRequest {
                        head,
                        is_head,
                        seen,
                        path,
                        knobs,
                        ws_key,
                    });
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    let body =
                        coregate_http1::reply::json_error(e.status, e.code, &e.message, None);
                    write_head(
                        wire,
                        e.status,
                        "application/json",
                        Len::Fixed(body.len() as u64),
                        true,
                        &[],
                    );
                    wire.tx.buf.extend_from_slice(&body);
                    return None;
                }
            }
        }
        if wire.tx.flush().await.is_err() {
            return None;
        }
        wire.rx.make_room(LIMITS.max_head_bytes);
        match wire.rx.read_some(TIMEOUT).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// How the body length is announced in a response head.
#[derive(Clone, Copy)]
enum Len {
    Fixed(u64),
    Chunked,
    /// No framing header: the body ends when the connection closes.
    UntilClose,
}

fn write_head(wire: &mut Wire, status: u16, ctype: &str, length: Len, close: bool, extra: &[&str]) {
    let out = &mut wire.tx.buf;
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nServer: coregate-mock\r\nContent-Type: ");
    out.extend_from_slice(ctype.as_bytes());
    out.extend_from_slice(b"\r\n");
    match length {
        Len::Fixed(n) if status != 204 && status != 304 && status >= 200 => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Len::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        _ => {}
    }
    for e in extra {
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Arms a TCP reset: with SO_LINGER 0 the close that follows sends RST. The returned
/// error tells `serve` to drop the socket without a graceful close.
fn reset(wire: &Wire) -> std::io::Error {
    wire.tx.stream.set_linger_zero();
    std::io::ErrorKind::ConnectionAborted.into()
}

/// How a body is sent: fixed length, chunked, or until close.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    Length,
    Chunked,
    UntilClose,
}

/// Handles one request; `Ok(true)` keeps the connection.
async fn respond(shard: &MockShard, wire: &mut Wire, req: MockRequest) -> std::io::Result<bool> {
    let k = &req.knobs;
    let head_only = req.is_head;
    let mut body = BodyState::new(req.head.framing);
    // An HTTP/1.0 client gets close-delimited answers: it knows neither chunked coding nor,
    // unless told, persistent connections; the mock keeps it simple and closes.
    let http10 = req.head.version == Version::Http10;
    let mut close = k.close || !req.head.keep_alive || http10;
    if let Some(why) = &k.invalid {
        let close = close
            || (req.head.expect_continue && !body.is_done())
            || !matches!(
                wire.rx.discard_body(&mut body, 1 << 20, TIMEOUT).await,
                Ok(true)
            );
        let json = coregate_http1::reply::json_error(400, "bad_knob", why, None);
        write_head(
            wire,
            400,
            "application/json",
            Len::Fixed(json.len() as u64),
            close,
            &[],
        );
        wire.tx.buf.extend_from_slice(&json);
        wire.tx.flush().await?;
        return Ok(!close);
    }
    if k.latency > Duration::ZERO {
        glommio::timer::sleep(k.latency).await;
    }
    // An origin answers `Expect: 100-continue` before it waits for the body (RFC 9110
    // §10.1.1); the parser already dropped the expectation for HTTP/1.0.
    if req.head.expect_continue && !body.is_done() {
        wire.tx
            .buf
            .extend_from_slice(coregate_http1::reply::CONTINUE);
        wire.tx.flush().await?;
    }
    if k.reset == Some(Reset::BeforeHead) {
        // Read the body first so the reset is not caused by unread data alone.
        let _ = wire.rx.discard_body(&mut body, u64::MAX, TIMEOUT).await;
        return Err(reset(wire));
    }
    if k.early_hints {
        wire.tx.buf.extend_from_slice(
            b"HTTP/1.1 103 Early Hints\r\nLink: </voices/en.json>; rel=preload\r\n\r\n",
        );
        wire.tx.flush().await?;
    }
    let mut status = k.status.unwrap_or(200);
    if k.error_rate > 0.0 && shard.random() < k.error_rate {
        status = 500;
    }
    let out = if k.until_close || (http10 && k.chunked) {
        close = true;
        Out::UntilClose
    } else if k.chunked {
        Out::Chunked
    } else {
        Out::Length
    };
    let json_reply = Whole {
        status,
        ctype: "application/json",
        out,
        close,
        head_only,
    };
    match req.path.as_str() {
        "/ws" => {
            let Some(key) = &req.ws_key else {
                // The body of a request that is not a handshake (a POST) is read before the
                // answer: left unread, it would be parsed as the next request on this
                // connection, and a proxy pooling it would hand that to another client.
                let _ = read_all(wire, &mut body, 1 << 20).await?;
                let json = coregate_http1::reply::json_error(
                    426,
                    "upgrade_required",
                    "connect with a WebSocket handshake",
                    None,
                );
                // RFC 9110 §15.5.22: a 426 names the protocol to switch to.
                let len = Len::Fixed(json.len() as u64);
                let extra = ["Upgrade: websocket", "Sec-WebSocket-Version: 13"];
                write_head(wire, 426, "application/json", len, close, &extra);
                wire.tx.buf.extend_from_slice(&json);
                wire.tx.flush().await?;
                return Ok(!close);
            };
            ws::session(wire, key).await?;
            return Ok(false);
        }
        "/echo" => return echo(wire, &mut body, status, out, close).await,
        "/tts" => {
            let text = read_all(wire, &mut body, MAX_TTS_TEXT).await?;
            let frames = k
                .frames
                .unwrap_or_else(|| (text.len() as u64 / 8).clamp(1, 50));
            let frame_bytes = k.frame_bytes.unwrap_or(640) as usize;
            let interval = k.frame_interval.unwrap_or(Duration::from_millis(20));
            let out = match out {
                Out::Length if http10 => Out::UntilClose,
                Out::Length => Out::Chunked,
                other => other,
            };
            start(
                wire,
                status,
                "audio/L16;rate=16000;channels=1",
                out,
                frames * frame_bytes as u64,
                close,
            );
            stall_and_maybe_reset(wire, k).await?;
            let frame: Vec<u8> = (0..frame_bytes).map(|i| (i % 251) as u8).collect();
            for i in 0..frames {
                if i > 0 && !interval.is_zero() {
                    // Each frame goes out before the pause, as a real TTS stream does.
                    wire.tx.flush().await?;
                    glommio::timer::sleep(interval).await;
                }
                body_part(wire, out, &frame).await?;
            }
            finish(wire, out).await?;
        }
        "/stt" => {
            let audio = read_all(wire, &mut body, u64::MAX).await?;
            let json = serde_json::json!({
                "transcript": format!("mock transcript of {} audio bytes", audio.len()),
                "bytes": audio.len(),
                "duration_ms": audio.len() as u64 / 32,
                "confidence": 0.98,
            })
            .to_string();
            send_whole(wire, json_reply, json.as_bytes(), Some(k)).await?;
        }
        "/headers" => {
            let _ = read_all(wire, &mut body, 1 << 20).await?;
            let json = req.seen.as_ref().map(|v| v.to_string()).unwrap_or_default();
            send_whole(wire, json_reply, json.as_bytes(), None).await?;
        }
        "/bytes" | "/api/small" | "/api/big" => {
            let _ = read_all(wire, &mut body, 1 << 20).await?;
            let size = k.size.unwrap_or(match req.path.as_str() {
                "/api/big" => 16384,
                _ => 100,
            });
            start(wire, status, "application/octet-stream", out, size, close);
            stall_and_maybe_reset(wire, k).await?;
            if !head_only && status != 204 && status != 304 {
                let block = vec![b'x'; 16 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    body_part(wire, out, &block[..n]).await?;
                    left -= n as u64;
                }
            }
            finish(wire, out).await?;
        }
        "/" | "/health" => {
            let _ = read_all(wire, &mut body, 1 << 20).await?;
            send_whole(wire, json_reply, b"{\"status\":\"ok\"}", None).await?;
        }
        _ => {
            let _ = read_all(wire, &mut body, 1 << 20).await?;
            let not_found = Whole {
                status: 404,
                ..json_reply
            };
            send_whole(
                wire,
                not_found,
                b"{\"error\":\"no such mock endpoint\"}",
                None,
            )
            .await?;
        }
    }
    Ok(!close)
}
