//! OpenAI-realtime-style usage: the `usage` of each `response.done` server event, read from
//! the provider's text messages as a tunnel relays them.
//!
//! Only the first 256 bytes of each text message from the provider are looked at (copied
//! aside as they pass); a message that names `response.done` there is kept whole (up to
//! 1 MiB) and parsed when it ends. Every other message, the audio deltas included, costs a
//! copy of at most 256 bytes and nothing else. Nothing is changed on the wire.

use coregate_http1::websocket::Payload;
use serde_json::Value;

/// How far into a message its type is looked for.
const PEEK: usize = 256;
/// The largest `response.done` event read.
const MAX_EVENT: usize = 1 << 20;

/// The usage a session's `response.done` events reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RealtimeTotals {
    pub responses: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub input_audio_tokens: u64,
    pub output_audio_tokens: u64,
}

#[derive(Debug, Default)]
pub struct RealtimeUsage {
    /// The message being read: its first bytes, or all of a `response.done`.
    message: Option<Vec<u8>>,
    /// The message is a `response.done` (decided once `PEEK` bytes or its end came).
    wanted: bool,
    pub totals: RealtimeTotals,
}

impl RealtimeUsage {
    /// Takes one run of the provider's payload.
    pub fn see(&mut self, p: Payload<'_>) {
        if !p.text {
            return;
        }
        if p.first {
            self.message = Some(Vec::new());
            self.wanted = false;
        }
        let Some(buf) = self.message.as_mut() else {
            return;
        };
        let take = if self.wanted {
            p.bytes.len()
        } else {
            p.bytes.len().min(PEEK.saturating_sub(buf.len()))
        };
        buf.extend_from_slice(&p.bytes[..take]);
        if !self.wanted && (buf.len() >= PEEK || p.last) {
            if !contains(buf, b"\"response.done\"") {
                self.message = None;
                return;
            }
            self.wanted = true;
            buf.extend_from_slice(&p.bytes[take..]);
        }
        if buf.len() > MAX_EVENT {
            self.message = None;
            return;
        }
        if p.last {
            if let Some(event) = self.message.take() {
                self.count(&event);
            }
        }
    }

    fn count(&mut self, event: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(event) else {
            return;
        };
        if v["type"] != "response.done" {
            return;
        }
        let u = &v["response"]["usage"];
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let t = &mut self.totals;
        t.responses += 1;
        t.input_tokens += n(&u["input_tokens"]);
        t.output_tokens += n(&u["output_tokens"]);
        t.input_audio_tokens += n(&u["input_token_details"]["audio_tokens"]);
        t.output_audio_tokens += n(&u["output_token_details"]["audio_tokens"]);
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coregate_http1::websocket::FrameTracker;

    fn frame(text: &str) -> Vec<u8> {
        let p = text.as_bytes();
        let mut f = vec![0x81];
        if p.len() < 126 {
            f.push(p.len() as u8);
        } else {
            f.push(126);
            f.extend_from_slice(&(p.len() as u16).to_be_bytes());
        }
        f.extend_from_slice(p);
        f
    }

    #[test]
    fn response_done_usage_is_summed_in_any_split() {
        let delta = format!(
            r#"{{"type":"response.audio.delta","delta":"{}"}}"#,
            "A".repeat(600)
        );
        let done = r#"{"event_id":"e1","type":"response.done","response":{"usage":{"total_tokens":150,
            "input_tokens":100,"output_tokens":50,"input_token_details":{"audio_tokens":60},
            "output_token_details":{"audio_tokens":40}}}}"#;
        let mut wire = frame(&delta);
        wire.extend(frame(done));
        wire.extend(frame(done));
        for piece in [1, 5, 300, wire.len()] {
            let (mut t, mut u) = (FrameTracker::new(), RealtimeUsage::default());
            for chunk in wire.chunks(piece) {
                t.feed_seeing(chunk, &mut |p| u.see(p)).unwrap();
            }
            let want = RealtimeTotals {
                responses: 2,
                input_tokens: 200,
                output_tokens: 100,
                input_audio_tokens: 120,
                output_audio_tokens: 80,
            };
            assert_eq!(u.totals, want, "pieces of {piece}");
        }
    }
}
