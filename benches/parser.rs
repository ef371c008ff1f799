//! Microbenchmarks of the HTTP/1.1 parsing on the request path (criterion):
//! `cargo bench --bench parser`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a harness, like a test

use coregate_http1::chunked::ChunkedDecoder;
use coregate_http1::request::{parse_head, Limits};
use coregate_http1::response::parse_response;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const SMALL: &[u8] = b"GET /v1/mock/api/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const TYPICAL: &[u8] = b"POST /v1/stt/transcribe?model=fast&lang=en HTTP/1.1\r\n\
Host: gateway.example.com\r\nUser-Agent: voice-client/2.3 (linux)\r\n\
Authorization: Bearer 0123456789abcdef0123456789abcdef\r\nContent-Type: audio/L16;rate=16000\r\n\
Transfer-Encoding: chunked\r\nAccept: application/json\r\nX-Request-Id: 7f1c2a9e-4b1d-4c55-9a0e\r\n\
Connection: keep-alive\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
Content-Length: 100\r\nDate: Sun, 29 Nov 2026 09:00:00 GMT\r\nServer: mock\r\n\r\n";

fn limits() -> Limits {
    Limits {
        max_head_bytes: 16 * 1024,
        max_headers: 64,
    }
}

fn requests(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_head");
    let mut headers = Vec::with_capacity(64);
    for (name, input) in [("small", SMALL), ("typical", TYPICAL)] {
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| parse_head(black_box(input), limits(), &mut headers).is_ok())
        });
    }
    g.finish();
}

fn responses(c: &mut Criterion) {
    let mut headers = Vec::with_capacity(64);
    c.bench_function("response_head", |b| {
        b.iter(|| parse_response(black_box(RESPONSE), false, 16 * 1024, &mut headers).is_ok())
    });
}

fn chunked(c: &mut Criterion) {
    // 64 frames of 640 bytes, as the mock provider's TTS stream sends them.
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"280\r\n");
        body.extend_from_slice(&[0u8; 640]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("decode_64x640", |b| {
        b.iter(|| {
            let mut dec = ChunkedDecoder::default();
            let mut pos = 0;
            let mut data = 0;
            while pos < body.len() {
                match dec.step(black_box(&body[pos..])) {
                    Ok(step) => {
                        pos += step.consumed;
                        data += step.data_len;
                        if step.done {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            data
        })
    });
    g.finish();
}

criterion_group!(benches, requests, responses, chunked);
criterion_main!(benches);
