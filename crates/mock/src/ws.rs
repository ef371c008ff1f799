//! `GET /ws`: a WebSocket endpoint (RFC 6455), the shape of realtime speech APIs: every text
//! or binary message is sent back as it came, pings are answered, and a close is returned
//! before the connection ends. The gateway relays it as an opaque tunnel; this side speaks
//! the protocol so that real WebSocket clients can be pointed at the gateway.

use coregate_http1::websocket::accept_key;
use coregate_runtime::wire::Wire;
use std::io;
use std::time::Duration;

/// Largest message payload accepted (larger ones are closed with 1009).
const MAX_PAYLOAD: u64 = 1 << 20;
/// A session with no frame for this long is closed.
const IDLE: Duration = Duration::from_secs(60);

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One frame from the client, unmasked.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

enum Parse {
    Need,
    Frame(Frame, usize),
    TooBig,
}

fn parse_frame(b: &[u8]) -> Parse {
    if b.len() < 2 {
        return Parse::Need;
    }
    let (fin, opcode, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return Parse::Need,
        n => (u64::from(n), 2),
    };
    if len > MAX_PAYLOAD {
        return Parse::TooBig;
    }
    let mask = if masked {
        if b.len() < at + 4 {
            return Parse::Need;
        }
        at += 4;
        [b[at - 4], b[at - 3], b[at - 2], b[at - 1]]
    } else {
        [0; 4]
    };
    let end = at + len as usize;
    if b.len() < end {
        return Parse::Need;
    }
    let payload = b[at..end]
        .iter()
        .enumerate()
        .map(|(i, &x)| x ^ mask[i % 4])
        .collect();
    Parse::Frame(
        Frame {
            fin,
            opcode,
            payload,
        },
        end,
    )
}

/// Appends an unmasked server frame.
fn push_frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8]) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// An OpenAI-realtime-style `{"type":"response.create"}` client event.
fn is_response_create(payload: &[u8]) -> bool {
    payload
        .windows(b"\"response.create\"".len())
        .any(|w| w == b"\"response.create\"")
}

/// What a realtime provider answers `response.create` with, in short: an audio delta and
/// `response.done` with its usage (fixed figures the tests check).
fn realtime_response() -> [String; 2] {
    [
        format!(
            r#"{{"type":"response.audio.delta","event_id":"evt_1","delta":"{}"}}"#,
            "UklGRg".repeat(50)
        ),
        r#"{"type":"response.done","event_id":"evt_2","response":{"id":"resp_1","status":"completed","usage":{"total_tokens":150,"input_tokens":100,"output_tokens":50,"input_token_details":{"cached_tokens":0,"text_tokens":40,"audio_tokens":60},"output_token_details":{"text_tokens":10,"audio_tokens":40}}}}"#.to_string(),
    ]
}

/// Completes the handshake for `key` and serves the session until it closes.
pub async fn session(wire: &mut Wire, key: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    );
    wire.tx.buf.extend_from_slice(head.as_bytes());
    wire.tx.flush().await?;
    loop {
        match parse_frame(wire.rx.buffered()) {
            Parse::Frame(f, used) => {
                wire.rx.consume(used);
                match f.opcode {
                    OP_CLOSE => {
                        // Echo the status code (if any) and end.
                        let code = f.payload.get(..2).unwrap_or(&[]);
                        push_frame(&mut wire.tx.buf, true, OP_CLOSE, code);
                        return wire.tx.flush().await;
                    }
                    OP_PING => push_frame(&mut wire.tx.buf, true, OP_PONG, &f.payload),
                    OP_PONG => {}
                    OP_TEXT if f.fin && is_response_create(&f.payload) => {
                        for event in realtime_response() {
                            push_frame(&mut wire.tx.buf, true, OP_TEXT, event.as_bytes());
                        }
                    }
                    op => push_frame(&mut wire.tx.buf, f.fin, op, &f.payload),
                }
                continue;
            }
            Parse::TooBig => {
                push_frame(&mut wire.tx.buf, true, OP_CLOSE, &1009u16.to_be_bytes());
                return wire.tx.flush().await;
            }
            Parse::Need => {}
        }
        wire.tx.flush().await?;
        wire.rx.make_room(MAX_PAYLOAD as usize + 14);
        if wire.rx.read_some(IDLE).await? == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_frames_parse_in_pieces() {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | 5];
        f.extend_from_slice(&mask);
        f.extend(b"hello".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        for cut in 0..f.len() {
            assert!(matches!(parse_frame(&f[..cut]), Parse::Need));
        }
        match parse_frame(&f) {
            Parse::Frame(fr, used) => {
                assert_eq!(
                    (fr.fin, fr.opcode, fr.payload.as_slice(), used),
                    (true, 1, &b"hello"[..], f.len())
                );
            }
            _ => panic!("frame expected"),
        }
        assert!(matches!(
            parse_frame(&[0x82, 127, 0, 0, 0, 0, 1, 0, 0, 0]),
            Parse::TooBig
        ));
    }
}
