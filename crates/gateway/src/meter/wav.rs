//! A WAV file's audio seconds, from its RIFF header as the body streams by.

use super::{audio_ms, Measured};

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
    /// A reader that counts a body that is not WAV at `fallback_rate` (raw audio whose
    /// format the query named), or as unmetered bytes without one.
    pub(super) fn new(fallback_rate: Option<u64>) -> WavReader {
        WavReader {
            fallback_rate,
            ..WavReader::default()
        }
    }

    /// Bytes fed so far.
    pub(super) fn total(&self) -> u64 {
        self.total
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) {
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

    pub(super) fn finish(&self) -> Measured {
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
