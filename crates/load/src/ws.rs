//! WebSocket virtual users (`ws://` targets): one handshake per connection, then a loop of
//! messages, each a request whose response is the next data message the server sends (an
//! echo or request/response service such as the mock provider's `/ws`, or a realtime audio
//! endpoint behind the gateway). A message's latency runs from its send to the last byte
//! of the answer; the first message of a connection also carries the handshake.
//!
//! Each connection sends a fresh `Sec-WebSocket-Key` (RFC 6455 §4.1); client frames are
//! binary, unfragmented and masked with a fresh key per frame (§5.3), the payload XORed
//! into a buffer the connection keeps.

use super::client::{ClientConn, Failure, Response};
use super::record::ErrorClass;
use std::time::Duration;

/// Default payload of one message: 20 ms of 16 kHz 16-bit mono audio.
pub const DEFAULT_PAYLOAD: usize = 640;

/// Largest answer frame payload accepted (a bound on what one reply may make us read).
const MAX_FRAME: u64 = 64 << 20;

/// What a `ws://` target's VUs send after the handshake.
#[derive(Debug, Clone)]
pub struct WsPlan {
    /// Each message's payload.
    pub payload: Vec<u8>,
}

/// A connection's WebSocket state once the handshake succeeded.
pub struct WsConn {
    /// The binary frame carrying the payload, re-masked before every send.
    frame: Vec<u8>,
}

thread_local! {
    /// xorshift64* state for handshake keys and masking keys, seeded from std's randomly
    /// keyed hasher (no RNG crate; unpredictability to a peer is what RFC 6455 asks).
    static RANDOM: std::cell::Cell<u64> = std::cell::Cell::new({
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
    });
}

fn random_u64() -> u64 {
    RANDOM.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64.
fn handshake_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A frame header as it arrived: opcode, FIN, header length, payload length.
struct Header {
    opcode: u8,
    fin: bool,
    len: usize,
    payload: u64,
}

/// Parses a server frame header; `Ok(None)` until all of it has arrived. Server frames
/// must not be masked (RFC 6455 §5.1).
fn header(buf: &[u8]) -> Result<Option<Header>, Failure> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    if b1 & 0x80 != 0 || b0 & 0x70 != 0 {
        return Err(malformed());
    }
    let (len, payload) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (4, u64::from(u16::from_be_bytes([*a, *b]))),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (10, u64::from_be_bytes(be))
            }
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    if payload > MAX_FRAME {
        return Err(malformed());
    }
    Ok(Some(Header {
        opcode: b0 & 0x0f,
        fin: b0 & 0x80 != 0,
        len,
        payload,
    }))
}

fn malformed() -> Failure {
    Failure::class(ErrorClass::MalformedResponse)
}

/// A masked client frame (FIN set) of `opcode` carrying `payload`.
fn masked_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.resize(out.len() + 4 + payload.len(), 0);
    mask(&mut out, payload, key);
    out
}

/// A fresh masking key.
fn mask_key() -> [u8; 4] {
    (random_u64() as u32).to_be_bytes()
}

/// Writes `key` and `payload` masked with it into the tail of `frame`, which a
/// [`masked_frame`] of this payload's length ends with.
fn mask(frame: &mut [u8], payload: &[u8], key: [u8; 4]) {
    let at = frame.len() - payload.len() - 4;
    frame[at..at + 4].copy_from_slice(&key);
    for (i, (out, b)) in frame[at + 4..].iter_mut().zip(payload).enumerate() {
        *out = b ^ key[i % 4];
    }
}

/// Re-masks `frame` (built by [`masked_frame`] from `payload`) with a fresh key.
fn remask(frame: &mut [u8], payload: &[u8]) {
    mask(frame, payload, mask_key());
}

impl ClientConn {
    /// One WebSocket message exchange: the handshake first on a fresh connection, then
    /// the payload out and the next complete data message back. A handshake answered
    /// 4xx/5xx is that response (the VU then reconnects); any other answer but a valid
    /// 101 is `malformed_response`, as is a protocol violation by the server; a Close
    /// frame is `closed`. Pings are answered, pongs skipped.
    pub async fn exchange_ws(
        &mut self,
        handshake: &[u8],
        plan: &WsPlan,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Response, Failure> {
        if self.ws.is_none() {
            let key = handshake_key();
            let mut request = Vec::with_capacity(handshake.len() + 48);
            request.extend_from_slice(handshake);
            request.extend_from_slice(b"Sec-WebSocket-Key: ");
            request.extend_from_slice(key.as_bytes());
            request.extend_from_slice(b"\r\n\r\n");
            let head = self
                .exchange_head(&request, false, timeout, connect_timeout)
                .await?;
            if head.status != 101 {
                return if head.status >= 400 {
                    Ok(Response {
                        status: head.status,
                        keep_alive: false,
                    })
                } else {
                    Err(malformed())
                };
            }
            if !self.upgraded_to_websocket(&coregate_http1::websocket::accept_key(&key)) {
                return Err(malformed());
            }
            self.rx.consume(head.head_len);
            self.ws = Some(WsConn {
                frame: masked_frame(0x2, &plan.payload, mask_key()),
            });
        } else {
            self.exchanges += 1;
            if let Some(ws) = self.ws.as_mut() {
                remask(&mut ws.frame, &plan.payload);
            }
        }
        let stream = self.rx.stream.clone();
        if let Some(ws) = &self.ws {
            stream
                .write_all(&ws.frame)
                .await
                .map_err(|e| Failure::exchange(&e))?;
        }
        self.read_message(timeout).await?;
        Ok(Response {
            status: 101,
            keep_alive: true,
        })
    }

    /// Reads frames until one data message is complete.
    async fn read_message(&mut self, timeout: Duration) -> Result<(), Failure> {
        loop {
            let h = loop {
                if let Some(h) = header(self.rx.buffered())? {
                    break h;
                }
                self.fill(timeout).await?;
            };
            self.rx.consume(h.len);
            match h.opcode {
                // Close: the server ends the session.
                0x8 => return Err(Failure::class(ErrorClass::Closed)),
                0x9 => {
                    // Ping: answered with a Pong carrying its payload (control frames
                    // are at most 125 bytes, RFC 6455 §5.5).
                    if h.payload > 125 || !h.fin {
                        return Err(malformed());
                    }
                    let n = h.payload as usize;
                    while self.rx.buffered().len() < n {
                        self.fill(timeout).await?;
                    }
                    let pong = masked_frame(0xA, &self.rx.buffered()[..n], mask_key());
                    self.rx.consume(n);
                    let stream = self.rx.stream.clone();
                    stream
                        .write_all(&pong)
                        .await
                        .map_err(|e| Failure::exchange(&e))?;
                    continue;
                }
                0xA => {}
                0x0..=0x2 => {}
                _ => return Err(malformed()),
            }
            self.skip(h.payload, timeout).await?;
            if h.opcode != 0xA && h.fin {
                return Ok(());
            }
        }
    }

    /// Consumes `n` payload bytes, reading as needed.
    async fn skip(&mut self, mut n: u64, timeout: Duration) -> Result<(), Failure> {
        loop {
            let here = (self.rx.buffered().len() as u64).min(n);
            self.rx.consume(here as usize);
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.fill(timeout).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_with_the_right_length_encoding() {
        let key = [1, 2, 3, 4];
        for (len, head) in [
            (5usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let payload = vec![7u8; len];
            let f = masked_frame(0x2, &payload, key);
            assert_eq!(f[0], 0x82);
            assert_eq!(f[1] & 0x80, 0x80, "masked");
            assert_eq!(f.len(), head + 4 + len);
            let unmasked: Vec<u8> = f[head + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }

    #[test]
    fn each_send_gets_a_fresh_mask_over_the_same_payload() {
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let mut frame = masked_frame(0x2, &payload, mask_key());
        let first = frame.clone();
        remask(&mut frame, &payload);
        assert_ne!(first, frame, "a new key");
        let key = [frame[4], frame[5], frame[6], frame[7]];
        let unmasked: Vec<u8> = frame[8..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, payload);
        assert_ne!(handshake_key(), handshake_key());
    }

    #[test]
    fn server_frame_headers() {
        let h = header(&[0x82, 5])
            .ok()
            .flatten()
            .map(|h| (h.opcode, h.fin, h.len, h.payload));
        assert_eq!(h, Some((2, true, 2, 5)));
        let h = header(&[0x01, 126, 0x01, 0x00])
            .ok()
            .flatten()
            .map(|h| (h.fin, h.len, h.payload));
        assert_eq!(h, Some((false, 4, 256)));
        // Not all of it yet.
        assert!(matches!(header(&[0x82]), Ok(None)));
        assert!(matches!(header(&[0x82, 127, 0, 0]), Ok(None)));
        // A masked server frame, reserved bits, or an absurd length is a protocol error.
        assert!(header(&[0x82, 0x85]).is_err());
        assert!(header(&[0xC2, 5]).is_err());
        assert!(header(&[0x82, 127, 0xff, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
