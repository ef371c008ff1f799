//! The meter's rules, and bodies in any split.
#![allow(clippy::unwrap_used)]

use super::*;

fn wav(rate: u32, channels: u16, bits: u16, data: usize) -> Vec<u8> {
    let byte_rate = rate * u32::from(channels) * u32::from(bits) / 8;
    let mut b = b"RIFF\0\0\0\0WAVE".to_vec();
    b.extend_from_slice(b"LIST\x04\0\0\0abcd");
    b.extend_from_slice(b"fmt \x10\0\0\0\x01\0");
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&byte_rate.to_le_bytes());
    b.extend_from_slice(&(channels * bits / 8).to_le_bytes());
    b.extend_from_slice(&bits.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data as u32).to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

fn measure(ct: &[u8], target: &[u8], body: &[u8], piece: usize) -> Measured {
    let mut m = BodyMeter::for_request(ct, target);
    for chunk in body.chunks(piece.max(1)) {
        m.feed(chunk);
    }
    m.finish()
}

#[test]
fn wav_seconds_come_from_the_header_in_any_split() {
    let body = wav(16_000, 1, 16, 48_000);
    for piece in [1, 7, 44, 1000, body.len()] {
        assert_eq!(
            measure(b"audio/wav", b"/stt", &body, piece).audio_ms,
            1500,
            "{piece}"
        );
    }
}

#[test]
fn raw_audio_uses_the_query_and_unknown_bodies_count_bytes() {
    let body = vec![0u8; 16_000];
    let t = b"/v1/listen?model=x&encoding=linear16&sample_rate=8000";
    assert_eq!(measure(b"", t, &body, 999).audio_ms, 1000);
    let t = b"/listen?encoding=mulaw&sample_rate=8000&channels=2";
    assert_eq!(measure(b"", t, &body, 999).audio_ms, 1000);
    let m = measure(b"application/octet-stream", b"/x", &body, 999);
    assert_eq!(
        m,
        Measured {
            unmetered_bytes: 16_000,
            ..Measured::default()
        }
    );
}

#[test]
fn arbitrary_bodies_in_arbitrary_pieces_never_panic() {
    // Request bodies are the client's: a deterministic stream of random and mangled
    // inputs, each fed whole and in random pieces, must only ever be counted.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let multipart = form("b-1", FILE_PART, &wav(8000, 1, 16, 64));
    let seeds: [&[u8]; 4] = [
        &wav(8000, 1, 16, 64),
        br#"{"input":"a\u00e9\"","text":1}"#,
        b"RIFF",
        &multipart,
    ];
    for i in 0..3000 {
        let mut body = seeds[i % seeds.len()].to_vec();
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % (body.len() + 1);
            match next() % 3 {
                0 => body.insert(at, next() as u8),
                1 if at < body.len() => body[at] = next() as u8,
                _ => body.truncate(at),
            }
        }
        let types = [
            &b"audio/wav"[..],
            b"application/json",
            b"text/plain",
            b"multipart/form-data; boundary=b-1",
        ];
        for ct in types {
            let piece = 1 + (next() as usize) % 9;
            let whole = measure(
                ct,
                b"/?encoding=linear16&sample_rate=8000",
                &body,
                body.len(),
            );
            let split = measure(ct, b"/?encoding=linear16&sample_rate=8000", &body, piece);
            assert_eq!(whole, split, "{body:?} in pieces of {piece}");
        }
    }
}

#[test]
fn json_text_fields_count_characters_as_they_stream() {
    let body =
        r#"{"model":"tts-1","voice":{"text":"no"},"input":"h\u00e9llo \"w\u00f6rld\"","n":1}"#;
    for piece in [1, 3, body.len()] {
        assert_eq!(
            measure(b"application/json", b"/", body.as_bytes(), piece).chars,
            13
        );
    }
    let body = "{\"text\": \"héllo wörld\", \"x\": [\"input\"]}";
    assert_eq!(
        measure(b"application/json; charset=utf-8", b"/", body.as_bytes(), 2).chars,
        11
    );
    assert_eq!(measure(b"text/plain", b"/", "héllo".as_bytes(), 1).chars, 5);
}

/// `body` fed in random pieces of 1 to 97 bytes (the generator seeded by `seed`).
fn measure_random(ct: &[u8], target: &[u8], body: &[u8], seed: u64) -> Measured {
    let mut x = seed | 1;
    let mut m = BodyMeter::for_request(ct, target);
    let mut rest = body;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (1 + (x % 97) as usize).min(rest.len());
        m.feed(&rest[..n]);
        rest = &rest[n..];
    }
    m.finish()
}

/// A form as curl and Python's clients send it: a text field, the file, another field.
fn form(boundary: &str, file_headers: &str, file: &[u8]) -> Vec<u8> {
    let mut b = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n\
         --{boundary}\r\n{file_headers}\r\n\r\n"
    )
    .into_bytes();
    b.extend_from_slice(file);
    b.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"language\"\r\n\r\nen\
             \r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    b
}

const FILE_PART: &str =
    "Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav";

#[test]
fn a_multipart_wav_upload_is_metered_in_any_split() {
    let audio = wav(16_000, 1, 16, 48_000);
    let body = form("----abc123", FILE_PART, &audio);
    let ct = b"multipart/form-data; boundary=----abc123";
    let want = Measured {
        audio_ms: 1500,
        chars: 0,
        unmetered_bytes: (body.len() - audio.len()) as u64,
    };
    for piece in [1, 2, 5, 44, 1000, body.len()] {
        assert_eq!(measure(ct, b"/stt", &body, piece), want, "{piece}");
    }
    for seed in 1..200 {
        assert_eq!(measure_random(ct, b"/stt", &body, seed), want, "{seed}");
    }
    // The boundary quoted, its parameter named in capitals, the type in another case.
    let ct = b"Multipart/Form-Data; charset=x; BOUNDARY=\"----abc123\"";
    assert_eq!(measure(ct, b"/stt", &body, 7), want);
}

#[test]
fn partial_delimiters_inside_the_file_are_content() {
    // Audio bytes that begin a delimiter (CR LF - - and part of the boundary) without
    // finishing it: counted as audio, wherever the pieces split them.
    let mut data = Vec::new();
    for cut in 1..=12 {
        data.extend_from_slice(&b"\r\n--bound-ary"[..cut]);
        data.extend_from_slice(b"\r\r\n-x");
    }
    let len = data.len();
    let mut audio = wav(8000, 1, 8, 0);
    let at = audio.len() - 4;
    audio[at..].copy_from_slice(&(len as u32).to_le_bytes());
    audio.extend_from_slice(&data);
    let body = form("bound-ary", FILE_PART, &audio);
    let ct = b"multipart/form-data; boundary=bound-ary";
    for seed in 1..300 {
        let m = measure_random(ct, b"/", &body, seed);
        assert_eq!(m.audio_ms, (len as u64) * 1000 / 8000, "{seed}");
        assert_eq!(m.unmetered_bytes, (body.len() - audio.len()) as u64);
    }
}

#[test]
fn only_the_first_file_part_is_audio() {
    let ct = b"multipart/form-data; boundary=XyZ";
    // An `audio/*` part without a filename is the file; a second file is not read.
    let audio = wav(8000, 1, 16, 16_000);
    let mut body = form("XyZ", "Content-Type: audio/wav", &audio);
    let second = form("XyZ", FILE_PART, &audio);
    body.truncate(body.len() - b"--\r\n".len());
    body.extend_from_slice(b"\r\n");
    body.extend_from_slice(&second[b"--XyZ\r\n".len()..]);
    let m = measure_random(ct, b"/", &body, 9);
    assert_eq!(m.audio_ms, 1000);
    assert_eq!(m.unmetered_bytes, (body.len() - audio.len()) as u64);
    // A file that is not WAV, and a form without a file: bytes only.
    let mp3 = b"ID3\x04\0\0\0\0\0\0 not a wav file".to_vec();
    let body = form("XyZ", FILE_PART, &mp3);
    let all = Measured {
        unmetered_bytes: body.len() as u64,
        ..Measured::default()
    };
    assert_eq!(measure(ct, b"/", &body, 3), all);
    let body = form("XyZ", "Content-Disposition: form-data; name=\"x\"", &mp3);
    let m = measure(ct, b"/", &body, 3);
    assert_eq!((m.audio_ms, m.unmetered_bytes), (0, body.len() as u64));
    // Raw audio in the file part, at the rate the query names.
    let body = form("XyZ", FILE_PART, &[0u8; 16_000]);
    let t = b"/?encoding=linear16&sample_rate=8000";
    assert_eq!(measure(ct, t, &body, 11).audio_ms, 1000);
}

#[test]
fn a_preamble_padding_and_an_epilogue_are_skipped() {
    let audio = wav(8000, 1, 16, 8000);
    let mut body = b"preamble --b0 text\r\n".to_vec();
    body.extend_from_slice(b"--b0  \t\r\n");
    body.extend_from_slice(FILE_PART.as_bytes());
    body.extend_from_slice(b"\r\n\r\n");
    body.extend_from_slice(&audio);
    body.extend_from_slice(b"\r\n--b0--\r\nepilogue\r\n--b0\r\n\r\nmore");
    let ct = b"multipart/form-data;boundary=b0";
    for seed in 1..100 {
        let m = measure_random(ct, b"/", &body, seed);
        assert_eq!(m.audio_ms, 500, "{seed}");
        assert_eq!(m.unmetered_bytes, (body.len() - audio.len()) as u64);
    }
}

#[test]
fn a_bad_boundary_is_not_multipart() {
    for ct in [
        &b"multipart/form-data"[..],
        b"multipart/form-data; boundary=",
        b"multipart/form-data; boundary=\"\"",
        b"multipart/form-data; boundary=a\rb",
    ] {
        assert!(Multipart::for_content_type(ct, None).is_none(), "{ct:?}");
    }
    let long = format!("multipart/form-data; boundary={}", "b".repeat(71));
    assert!(Multipart::for_content_type(long.as_bytes(), None).is_none());
}
