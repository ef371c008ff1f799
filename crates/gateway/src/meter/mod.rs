//! Voice units read from a request body as it streams up, never buffered whole:
//! audio seconds for speech-to-text, characters of text for text-to-speech.
//!
//! The rules (docs/tenants.md, "Voice units"):
//! * a body that starts with a RIFF/WAVE header: seconds = data bytes / (rate × channels ×
//!   bits / 8), from its `fmt ` chunk (PCM or any other format with a byte rate);
//! * a `multipart/form-data` body (OpenAI's `/v1/audio/transcriptions`): its first file part
//!   (one with a `filename` or an `audio/*` type) is read as a body of its own by the two
//!   rules above and below; the rest (other fields, part headers, boundaries) is
//!   `unmetered_bytes`;
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
    /// A `multipart/form-data` upload: its first file part is read as `Wav` is.
    Multipart(Box<Multipart>),
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
        let fallback_rate = query_byte_rate(target);
        if let Some(m) = Multipart::for_content_type(content_type, fallback_rate) {
            return BodyMeter::Multipart(Box::new(m));
        }
        BodyMeter::Wav(WavReader::new(fallback_rate))
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
            BodyMeter::Multipart(m) => m.feed(bytes),
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
            BodyMeter::Multipart(m) => m.finish(),
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

pub mod fuzzing;
mod json;
mod multipart;
mod wav;
pub use json::JsonText;
pub use multipart::Multipart;
pub use wav::WavReader;

#[cfg(test)]
mod tests;
