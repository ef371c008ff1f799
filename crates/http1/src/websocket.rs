//! WebSocket wire helpers (RFC 6455): the opening handshake's one computation (§4.2.2),
//! shared by the mock provider (which answers handshakes) and the load generator (which
//! checks them); a frame-header tracker for a relay that copies frames without decoding
//! them (§5.2); and the encoding of a Close frame (§5.5.1).

use base64::Engine;
use std::fmt;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("{}{GUID}", key.trim())).digest();
    base64::engine::general_purpose::STANDARD.encode(digest.bytes())
}

/// Longest frame header: 2 bytes, a 64-bit extended length and a masking key.
const MAX_HEADER: usize = 14;
/// Longest payload of a control frame (§5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A malformed frame sequence; the relay closes the connection (with 1002, protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed WebSocket frame: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// Follows the frame structure of one direction of a WebSocket connection while a relay
/// copies its bytes unchanged: where frames begin and end, so that a frame of the relay's
/// own (a Close) is only ever inserted between frames, and whether the peer sent a Close.
///
/// The state is a few integers and at most one split header (14 bytes): payload is never
/// buffered, unmasked or even looked at, only counted down.
#[derive(Debug, Clone, Default)]
pub struct FrameTracker {
    /// The start of a header that arrived split across calls (empty at a boundary).
    head: [u8; MAX_HEADER],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The current frame's payload counts as data (text, binary or continuation).
    data_frame: bool,
    /// The current frame is the last of a data message: the message is complete when its
    /// payload has passed.
    ends_message: bool,
    /// A data message is open: its first frame had FIN unset, its last has not come.
    fragmented: bool,
    close_seen: bool,
    messages: u64,
    payload_bytes: u64,
    /// Of `payload_bytes`, those of binary messages.
    binary_payload_bytes: u64,
    /// Errors stick: after one, the stream cannot be framed again.
    error: Option<&'static str>,
    /// The data message in progress is text (its first frame's opcode).
    text_message: bool,
    /// No payload of the data message in progress has passed yet.
    message_fresh: bool,
}

/// A run of a data message's payload, as [`FrameTracker::feed_seeing`] passes it on: as it
/// was on the wire (a client's frames are masked).
#[derive(Debug)]
pub struct Payload<'a> {
    pub text: bool,
    /// The first bytes of the message.
    pub first: bool,
    /// The message ends with these bytes.
    pub last: bool,
    pub bytes: &'a [u8],
}

impl FrameTracker {
    pub fn new() -> FrameTracker {
        FrameTracker::default()
    }

    /// Follows `bytes` (the next bytes relayed in one direction). Headers may be split
    /// anywhere across calls. A 16- or 64-bit length that would have fit a shorter form is
    /// accepted: §5.2 asks for the minimal form, but refusing it gains a relay nothing.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.feed_seeing(bytes, &mut |_| {})
    }

    /// [`FrameTracker::feed`], passing each run of data-message payload to `seen` (for a
    /// relay that reads some messages, e.g. a provider's usage events).
    pub fn feed_seeing(
        &mut self,
        bytes: &[u8],
        seen: &mut dyn FnMut(Payload<'_>),
    ) -> Result<(), FrameError> {
        if let Some(e) = self.error {
            return Err(FrameError(e));
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.remaining > 0 {
                let n = usize::try_from(self.remaining).map_or(rest.len(), |r| r.min(rest.len()));
                if self.data_frame {
                    seen(Payload {
                        text: self.text_message,
                        first: std::mem::replace(&mut self.message_fresh, false),
                        last: self.ends_message && n as u64 == self.remaining,
                        bytes: &rest[..n],
                    });
                }
                self.skip_payload(n);
                rest = &rest[n..];
                continue;
            }
            let step = if self.close_seen {
                Err("bytes after a Close frame")
            } else {
                self.header(rest)
            };
            match step {
                Ok(used) => rest = &rest[used..],
                Err(e) => {
                    self.error = Some(e);
                    return Err(FrameError(e));
                }
            }
        }
        Ok(())
    }

    /// Everything fed so far ends exactly at a frame boundary (a frame of our own may be
    /// inserted here; while [`FrameTracker::in_message`], only a control frame).
    pub fn at_boundary(&self) -> bool {
        self.error.is_none() && self.head_len == 0 && self.remaining == 0
    }

    /// A fragmented data message is open: between its frames only control frames may go.
    pub fn in_message(&self) -> bool {
        self.fragmented
    }

    /// A Close frame has been seen (its header; after it the direction carries nothing more).
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Complete data messages so far (a fragmented message counts once, when its last
    /// frame's payload has passed).
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Payload bytes of data frames so far (control frames' payload not counted).
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    /// Payload bytes of binary data messages so far: what carries audio in a streaming
    /// speech API, whose text messages are control (`KeepAlive`, `CloseStream`).
    pub fn binary_payload_bytes(&self) -> u64 {
        self.binary_payload_bytes
    }

    fn skip_payload(&mut self, n: usize) {
        self.remaining -= n as u64;
        if self.data_frame {
            self.payload_bytes += n as u64;
            if !self.text_message {
                self.binary_payload_bytes += n as u64;
            }
        }
        if self.remaining == 0 {
            self.frame_done();
        }
    }

    fn frame_done(&mut self) {
        if self.ends_message {
            self.messages += 1;
            self.ends_message = false;
        }
    }

    /// Reads header bytes from `input`; returns how many it used. The common case (a whole
    /// header in `input` at a boundary) is read in place; a split one is gathered in `head`.
    fn header(&mut self, input: &[u8]) -> Result<usize, &'static str> {
        if self.head_len == 0 {
            if let [_, b1, ..] = input {
                let len = header_len(*b1);
                if input.len() >= len {
                    self.begin_frame(&input[..len])?;
                    return Ok(len);
                }
            }
        }
        let mut used = 0;
        loop {
            let have = usize::from(self.head_len);
            let need = if have < 2 {
                2
            } else {
                header_len(self.head[1])
            };
            if have == need {
                break;
            }
            let take = (need - have).min(input.len() - used);
            if take == 0 {
                return Ok(used);
            }
            self.head[have..have + take].copy_from_slice(&input[used..used + take]);
            self.head_len += take as u8;
            used += take;
        }
        let head = self.head;
        let len = usize::from(self.head_len);
        self.head_len = 0;
        self.begin_frame(&head[..len])?;
        Ok(used)
    }

    /// Checks a complete header `h` against the frame sequence so far and starts its frame.
    fn begin_frame(&mut self, h: &[u8]) -> Result<(), &'static str> {
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let len = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => {
                let len = h[2..10].iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
                if len >> 63 != 0 {
                    return Err("64-bit payload length with the most significant bit set");
                }
                len
            }
            n => u64::from(n),
        };
        match opcode {
            OP_CONTINUATION => {
                if !self.fragmented {
                    return Err("continuation frame without a message in progress");
                }
                self.fragmented = !fin;
            }
            OP_TEXT | OP_BINARY => {
                if self.fragmented {
                    return Err("new data frame while a fragmented message is in progress");
                }
                self.fragmented = !fin;
                self.text_message = opcode == OP_TEXT;
                self.message_fresh = true;
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin {
                    return Err("fragmented control frame");
                }
                if len > MAX_CONTROL_PAYLOAD {
                    return Err("control frame payload longer than 125 bytes");
                }
                self.close_seen |= opcode == OP_CLOSE;
            }
            _ => return Err("reserved opcode"),
        }
        self.data_frame = opcode <= OP_BINARY;
        self.ends_message = self.data_frame && fin;
        self.remaining = len;
        if len == 0 {
            self.frame_done();
        }
        Ok(())
    }
}

/// The header's length from its second byte: 2, plus the extended length, plus the key.
fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// A Close frame with `code` and `reason` (§5.5.1); the reason is cut to fit 125 bytes with
/// the code, at a char boundary (it must stay UTF-8). Masked with `mask` when Some
/// (client-to-server frames must be masked, §5.3), unmasked when None.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let len = 2 + reason.len() as u8;
    let mut out = Vec::with_capacity(2 + 4 + usize::from(len));
    out.push(0x80 | OP_CLOSE);
    out.push(len | if mask.is_some() { 0x80 } else { 0 });
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let payload_at = out.len();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    if let Some(key) = mask {
        apply_mask(&mut out[payload_at..], key);
    }
    out
}

/// XORs `data` with the masking key (§5.3); applying it twice restores the data.
fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
