//! Voice units read from a request body as it streams up, never buffered whole:
//! audio seconds for speech-to-text, characters of text for text-to-speech.
//!
//! The rules (docs/tenants.md, "Voice units"):
//! * a body that starts with a RIFF/WAVE header: seconds = data bytes / (rate × channels ×
//!   bits / 8), from its `fmt ` chunk (PCM or any other format with a byte rate);
//! * otherwise, a request whose query names `encoding` (linear16, mulaw, alaw) and
//!   `sample_rate` (and `channels`, default 1), as Deepgram's streaming and pre-recorded
//!   APIs take them: seconds = body bytes / byte rate;
//! * a JSON body (`Content-Type: application/json`): the characters (Unicode scalar values,
//!   after JSON unescaping) of the string values of top-level `input`, `text` or
//!   `transcript` (OpenAI, ElevenLabs, Cartesia);
//! * a `text/plain` body: its characters;
//! * anything else: bytes only (the usage's `unmetered_bytes`).

/// What a body measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    pub audio_ms: u64,
    pub chars: u64,
    /// Body bytes in no format the meter reads.
    pub unmetered_bytes: u64,
}

/// Follows one request body.
#[derive(Debug)]
pub enum BodyMeter {
    /// Raw audio at a known byte rate (from the query).
    Raw {
        byte_rate: u64,
        bytes: u64,
    },
    /// Maybe a WAV file: decided by its first bytes.
    Wav(WavReader),
    Json(JsonText),
    Plain {
        chars: u64,
    },
}

impl BodyMeter {
    /// The meter for a request with this `Content-Type` and request target.
    pub fn for_request(content_type: &[u8], target: &[u8]) -> BodyMeter {
        let ct = content_type.to_ascii_lowercase();
        if ct.starts_with(b"application/json") {
            return BodyMeter::Json(JsonText::default());
        }
        if ct.starts_with(b"text/plain") {
            return BodyMeter::Plain { chars: 0 };
        }
        BodyMeter::Wav(WavReader {
            fallback_rate: query_byte_rate(target),
            ..WavReader::default()
        })
    }

    /// The byte rate of raw audio a request's query describes (for WebSocket streams too).
    pub fn query_rate(target: &[u8]) -> Option<u64> {
        query_byte_rate(target)
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        match self {
            BodyMeter::Raw { bytes: n, .. } => *n += bytes.len() as u64,
            BodyMeter::Wav(w) => w.feed(bytes),
            BodyMeter::Json(j) => j.feed(bytes),
            BodyMeter::Plain { chars } => {
                *chars += bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count() as u64
            }
        }
    }

    pub fn finish(&self) -> Measured {
        match self {
            BodyMeter::Raw { byte_rate, bytes } => Measured {
                audio_ms: audio_ms(*bytes, *byte_rate),
                ..Measured::default()
            },
            BodyMeter::Wav(w) => w.finish(),
            BodyMeter::Json(j) => Measured {
                chars: j.chars,
                ..Measured::default()
            },
            BodyMeter::Plain { chars } => Measured {
                chars: *chars,
                ..Measured::default()
            },
        }
    }
}

/// Milliseconds of audio in `bytes` at `byte_rate` bytes per second (0 without a rate).
pub fn audio_ms(bytes: u64, byte_rate: u64) -> u64 {
    if byte_rate == 0 {
        return 0;
    }
    bytes.saturating_mul(1000) / byte_rate
}

/// `encoding`, `sample_rate` and `channels` from a request target's query.
fn query_byte_rate(target: &[u8]) -> Option<u64> {
    let q = target.iter().position(|&b| b == b'?')?;
    let (mut encoding, mut rate, mut channels) = (None, None, 1u64);
    for pair in target[q + 1..].split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => continue,
        };
        let number = || std::str::from_utf8(v).ok()?.parse::<u64>().ok();
        match k {
            b"encoding" => encoding = Some(v.to_ascii_lowercase()),
            b"sample_rate" => rate = number(),
            b"channels" => channels = number().unwrap_or(1).max(1),
            _ => {}
        }
    }
    let bytes_per_sample = match encoding?.as_slice() {
        b"linear16" => 2,
        b"mulaw" | b"alaw" => 1,
        b"linear32" => 4,
        _ => return None,
    };
    // A zero rate names no rate: the audio is then not counted, in a body or a stream.
    rate?
        .checked_mul(channels)?
        .checked_mul(bytes_per_sample)
        .filter(|r| *r > 0)
}

/// A WAV header read as it arrives; until the header decides, bytes are counted raw.
#[derive(Debug, Default)]
pub struct WavReader {
    /// The first bytes, kept until the `data` chunk is found (at most `HEAD_MAX`).
    head: Vec<u8>,
    byte_rate: Option<u64>,
    /// Bytes after the `data` chunk's header.
    data: u64,
    /// Not WAV: the body is counted at the query's rate, or as unmetered bytes.
    not_wav: bool,
    total: u64,
    fallback_rate: Option<u64>,
}

/// A WAV header with extra chunks (LIST, fact) rarely exceeds this; past it, not WAV.
const HEAD_MAX: usize = 1024;

impl WavReader {
    fn feed(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.not_wav {
            return;
        }
        if self.byte_rate.is_some() && self.head.is_empty() {
            self.data += bytes.len() as u64;
            return;
        }
        let room = HEAD_MAX.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..room]);
        match parse_wav(&self.head) {
            WavHead::Data { byte_rate, data_at } => {
                self.byte_rate = Some(byte_rate);
                self.data = (self.head.len() - data_at) as u64 + (bytes.len() - room) as u64;
                self.head = Vec::new();
            }
            WavHead::NotWav => {
                self.not_wav = true;
                self.head = Vec::new();
            }
            WavHead::More if self.head.len() >= HEAD_MAX => {
                self.not_wav = true;
                self.head = Vec::new();
            }
            WavHead::More => {}
        }
    }

    fn finish(&self) -> Measured {
        match (self.byte_rate, self.fallback_rate) {
            (Some(rate), _) => Measured {
                audio_ms: audio_ms(self.data, rate),
                ..Measured::default()
            },
            (None, Some(rate)) => Measured {
                audio_ms: audio_ms(self.total, rate),
                ..Measured::default()
            },
            (None, None) => Measured {
                unmetered_bytes: self.total,
                ..Measured::default()
            },
        }
    }
}

enum WavHead {
    Data { byte_rate: u64, data_at: usize },
    NotWav,
    More,
}

/// Walks RIFF chunks up to `data`; the byte rate comes from `fmt `.
fn parse_wav(b: &[u8]) -> WavHead {
    if b.len() < 12 {
        let prefix_ok = b"RIFF".starts_with(&b[..b.len().min(4)]);
        return if prefix_ok {
            WavHead::More
        } else {
            WavHead::NotWav
        };
    }
    if &b[..4] != b"RIFF" || &b[8..12] != b"WAVE" {
        return WavHead::NotWav;
    }
    let mut at = 12;
    let mut byte_rate = None;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let size = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        if id == b"data" {
            return match byte_rate {
                Some(r) if r > 0 => WavHead::Data {
                    byte_rate: r,
                    data_at: at + 8,
                },
                _ => WavHead::NotWav,
            };
        }
        if id == b"fmt " {
            // Format (2), channels (2), sample rate (4), then the byte rate (4).
            let Some(r) = b.get(at + 16..at + 20) else {
                return WavHead::More;
            };
            byte_rate = Some(u64::from(u32::from_le_bytes([r[0], r[1], r[2], r[3]])));
        }
        // Chunks are padded to an even size.
        at += 8 + size + (size & 1);
    }
    WavHead::More
}

/// Counts the characters of the string values of top-level `input`, `text` and
/// `transcript` in a JSON object, as the bytes pass: a few states, no buffer.
#[derive(Debug, Default)]
pub struct JsonText {
    depth: u32,
    in_string: bool,
    escape: bool,
    /// Inside a `\uXXXX` escape: hex digits left.
    unicode_left: u8,
    /// The string being read is a key at depth 1 (collected, short) or a counted value.
    key: Option<Vec<u8>>,
    counting: bool,
    /// The last key at depth 1 names a counted field; its value comes next.
    armed: bool,
    pub chars: u64,
}

const COUNTED: [&[u8]; 3] = [b"input", b"text", b"transcript"];

impl JsonText {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                self.string_byte(b);
                continue;
            }
            match b {
                b'{' | b'[' => {
                    self.depth += 1;
                    self.armed = false;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b',' => self.armed = false,
                b'"' => {
                    self.in_string = true;
                    if self.depth == 1 && self.armed {
                        self.counting = true;
                        self.armed = false;
                    } else if self.depth == 1 {
                        self.key = Some(Vec::new());
                    }
                }
                b':' => {}
                b' ' | b'\t' | b'\r' | b'\n' => {}
                // A number, true, false or null: the armed field was not a string.
                _ => self.armed = false,
            }
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.unicode_left > 0 {
            self.unicode_left -= 1;
            return;
        }
        if self.escape {
            self.escape = false;
            if b == b'u' {
                // One `\uXXXX` is one char (a surrogate pair counts two: rare in speech).
                self.unicode_left = 4;
            }
            self.count_char();
            return;
        }
        match b {
            b'\\' => self.escape = true,
            b'"' => {
                self.in_string = false;
                self.counting = false;
                if let Some(key) = self.key.take() {
                    self.armed = COUNTED.contains(&key.as_slice());
                }
            }
            _ => {
                if let Some(key) = &mut self.key {
                    if key.len() < 16 {
                        key.push(b);
                    }
                } else if (b & 0xC0) != 0x80 {
                    self.count_char();
                }
            }
        }
    }

    fn count_char(&mut self) {
        if self.counting {
            self.chars += 1;
        }
    }
}

#[cfg(test)]
mod tests {
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
        let seeds: [&[u8]; 3] = [
            &wav(8000, 1, 16, 64),
            br#"{"input":"a\u00e9\"","text":1}"#,
            b"RIFF",
        ];
        for i in 0..3000 {
            let mut body = seeds[i % 3].to_vec();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % (body.len() + 1);
                match next() % 3 {
                    0 => body.insert(at, next() as u8),
                    1 if at < body.len() => body[at] = next() as u8,
                    _ => body.truncate(at),
                }
            }
            for ct in [&b"audio/wav"[..], b"application/json", b"text/plain"] {
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
}
