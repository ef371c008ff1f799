//! Per-request behaviour of the mock provider, from the query string or `x-mock-*` headers
//! (headers win). Documented in docs/mock-provider.md.

use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Delay before the response head.
    pub latency: Duration,
    /// Status of the response (default 200).
    pub status: Option<u16>,
    /// Probability (0..=1) of answering 500 instead.
    pub error_rate: f64,
    /// Abort the connection with a TCP reset `before_head` or `after_head`.
    pub reset: Option<Reset>,
    /// Close the connection after this response.
    pub close: bool,
    /// Response body size for `/bytes`.
    pub size: Option<u64>,
    /// Send the body chunked instead of with Content-Length.
    pub chunked: bool,
    /// Send the body without length, delimited by closing the connection.
    pub until_close: bool,
    /// TTS: number of audio frames, bytes per frame, pause between frames.
    pub frames: Option<u64>,
    pub frame_bytes: Option<u64>,
    pub frame_interval: Option<Duration>,
    /// Pause after the head before the body (tests provider idle-read timeouts).
    pub stall: Duration,
    /// Send a `103 Early Hints` interim response before the final one.
    pub early_hints: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    BeforeHead,
    AfterHead,
}

impl Knobs {
    /// Reads knobs from `query` (the part after `?`) and then from headers.
    pub fn parse<'a>(query: &str, headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Knobs {
        let mut k = Knobs::default();
        for pair in query.split('&') {
            if let Some((key, value)) = pair.split_once('=') {
                k.set(key, value);
            } else if !pair.is_empty() {
                k.set(pair, "1");
            }
        }
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if let (Some(key), Ok(v)) = (lower.strip_prefix("x-mock-"), std::str::from_utf8(value))
            {
                k.set(&key.replace('-', "_"), v.trim());
            }
        }
        k
    }

    fn set(&mut self, key: &str, value: &str) {
        let ms = |v: &str| v.parse::<u64>().ok().map(Duration::from_millis);
        let flag = |v: &str| matches!(v, "1" | "true" | "yes");
        match key {
            "latency_ms" => self.latency = ms(value).unwrap_or_default(),
            "status" => self.status = value.parse().ok().filter(|s| (100..=599).contains(s)),
            "error_rate" => self.error_rate = value.parse::<f64>().unwrap_or(0.0).clamp(0.0, 1.0),
            "reset" => {
                self.reset = match value {
                    "before_head" | "before-head" => Some(Reset::BeforeHead),
                    "after_head" | "after-head" => Some(Reset::AfterHead),
                    _ => None,
                }
            }
            "close" => self.close = flag(value),
            "size" => self.size = value.parse().ok(),
            "chunked" => self.chunked = flag(value),
            "until_close" => self.until_close = flag(value),
            "frames" => self.frames = value.parse().ok(),
            "frame_bytes" => self.frame_bytes = value.parse().ok(),
            "frame_interval_ms" => self.frame_interval = ms(value),
            "stall_ms" => self.stall = ms(value).unwrap_or_default(),
            "early_hints" => self.early_hints = flag(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_headers() {
        let hs: Vec<(&str, &[u8])> = vec![("X-Mock-Status", b"503"), ("x-mock-latency-ms", b"5")];
        let k = Knobs::parse("status=404&chunked&reset=after_head", hs.into_iter());
        assert_eq!(k.status, Some(503));
        assert!(k.chunked);
        assert_eq!(k.latency, Duration::from_millis(5));
        assert_eq!(k.reset, Some(Reset::AfterHead));
    }
}
