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
    /// The first knob given a value it cannot take (`status=99`, `latency_ms=abc`): the
    /// request is answered 400 naming it, rather than run with a default nobody asked for.
    pub invalid: Option<String>,
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

    /// Sets one knob; other keys (a real API's own query parameters) are left alone.
    fn set(&mut self, key: &str, value: &str) {
        if let Err(why) = self.try_set(key, value) {
            self.invalid
                .get_or_insert(format!("{key}={value:?}: {why}"));
        }
    }

    fn try_set(&mut self, key: &str, value: &str) -> Result<(), &'static str> {
        const MS: &str = "expected milliseconds (0 or more)";
        const COUNT: &str = "expected a whole number";
        let ms = |v: &str| v.parse::<u64>().map(Duration::from_millis).map_err(|_| MS);
        let count = |v: &str| v.parse::<u64>().map_err(|_| COUNT);
        let flag = |v: &str| match v {
            "1" | "true" | "yes" => Ok(true),
            "0" | "false" | "no" => Ok(false),
            _ => Err("expected 1/0, true/false or yes/no"),
        };
        match key {
            "latency_ms" => self.latency = ms(value)?,
            "status" => {
                let s = value
                    .parse::<u16>()
                    .ok()
                    .filter(|s| (100..=599).contains(s));
                self.status = Some(s.ok_or("expected a status code 100-599")?);
            }
            "error_rate" => {
                let r = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r));
                self.error_rate = r.ok_or("expected a probability 0..1")?;
            }
            "reset" => {
                self.reset = Some(match value {
                    "before_head" | "before-head" => Reset::BeforeHead,
                    "after_head" | "after-head" => Reset::AfterHead,
                    _ => return Err("expected before_head or after_head"),
                })
            }
            "close" => self.close = flag(value)?,
            "size" => self.size = Some(count(value)?),
            "chunked" => self.chunked = flag(value)?,
            "until_close" => self.until_close = flag(value)?,
            "frames" => self.frames = Some(count(value)?),
            "frame_bytes" => self.frame_bytes = Some(count(value)?),
            "frame_interval_ms" => self.frame_interval = Some(ms(value)?),
            "stall_ms" => self.stall = ms(value)?,
            "early_hints" => self.early_hints = flag(value)?,
            _ => {}
        }
        Ok(())
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
        assert!(k.invalid.is_none());
    }

    #[test]
    fn a_knob_with_a_bad_value_is_named_and_other_keys_pass() {
        for q in [
            "status=99",
            "latency_ms=abc",
            "error_rate=2",
            "reset=sideways",
            "chunked=maybe",
        ] {
            let k = Knobs::parse(q, std::iter::empty());
            let why = k.invalid.unwrap_or_default();
            assert!(why.starts_with(q.split('=').next().unwrap()), "{q}: {why}");
        }
        let k = Knobs::parse("model=nova-3&language=en&size=10", std::iter::empty());
        assert!(k.invalid.is_none());
        assert_eq!(k.size, Some(10));
    }
}
