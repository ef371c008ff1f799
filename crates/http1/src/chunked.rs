//! Incremental decoder for the chunked transfer coding (RFC 9112 §7.1).
//!
//! The decoder never buffers: it is fed whatever bytes arrived and reports how many it
//! consumed and which of them were payload, so a body of any size streams through a
//! fixed buffer. It is strict where leniency enables request smuggling: every line must end
//! in CRLF, chunk sizes are bounded hex, and extensions and trailers have size limits.

use super::HttpError;

/// Longest chunk-size line (size + extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the chunk size.
    Size {
        digits: u8,
    },
    /// After the size digits: only CR, `;` or whitespace before a `;` may follow.
    AfterSize,
    /// Whitespace after the size: allowed only before an extension (`BWS ";"`).
    SizeBws,
    /// Inside chunk extensions (after a `;`) until CR.
    Ext,
    /// Inside a quoted extension value.
    ExtQuoted {
        escaped: bool,
    },
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line (or the final CRLF).
    TrailerStart,
    /// A trailer field name, up to its colon.
    TrailerName,
    /// A trailer field value, up to CR.
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// What one [`ChunkedDecoder::step`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input used (framing and payload).
    pub consumed: usize,
    /// Payload bytes: `input[data_start..data_start + data_len]`.
    pub data_start: usize,
    pub data_len: usize,
    /// The terminating chunk and trailer section were read.
    pub done: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
            remaining: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }
}

fn invalid(msg: &str) -> HttpError {
    HttpError::bad_request(format!("invalid chunked encoding: {msg}"))
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing bytes from `input` until it reaches payload (returned as one
    /// contiguous run), the end of the body, or the end of `input`.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, HttpError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let n =
                    (input.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Step {
                    consumed: i + n,
                    data_start: i,
                    data_len: n,
                    done: false,
                });
            }
            self.byte(input[i])?;
            i += 1;
            if self.state == State::Done {
                break;
            }
        }
        Ok(Step {
            consumed: i,
            data_start: i,
            data_len: 0,
            done: self.state == State::Done,
        })
    }

    fn byte(&mut self, b: u8) -> Result<(), HttpError> {
        match self.state {
            State::Size { digits } => {
                if let Some(d) = (b as char).to_digit(16) {
                    if digits >= 16 {
                        return Err(invalid("chunk size too large"));
                    }
                    // Leading zeros do not count against the 16-digit bound.
                    let digits = if self.size == 0 && d == 0 {
                        digits.max(1)
                    } else {
                        digits + 1
                    };
                    self.size = (self.size << 4) | u64::from(d);
                    self.state = State::Size { digits };
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(invalid("chunk size line too long"));
                    }
                } else if digits == 0 {
                    return Err(invalid("missing chunk size"));
                } else {
                    self.state = State::AfterSize;
                    return self.byte(b);
                }
            }
            State::AfterSize => match b {
                b'\r' => self.state = State::SizeLf,
                b' ' | b'\t' => self.state = State::SizeBws,
                b';' => self.state = State::Ext,
                _ => return Err(invalid("bad byte after chunk size")),
            },
            State::SizeBws => match b {
                b' ' | b'\t' => {}
                b';' => self.state = State::Ext,
                _ => return Err(invalid("whitespace after chunk size without an extension")),
            },
            State::Ext => match b {
                b'\r' => self.state = State::SizeLf,
                b'"' => self.state = State::ExtQuoted { escaped: false },
                b' ' | b'\t' | b';' | b'=' => {}
                c if is_tchar(c) => {}
                _ => return Err(invalid("bad byte in chunk extension")),
            },
            State::ExtQuoted { escaped } => match b {
                b'\r' | b'\n' | 0 => return Err(invalid("bad byte in quoted extension")),
                b'"' if !escaped => self.state = State::Ext,
                b'\\' if !escaped => self.state = State::ExtQuoted { escaped: true },
                _ => self.state = State::ExtQuoted { escaped: false },
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(invalid("chunk size line not ended by CRLF"));
                }
                self.line_len = 0;
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    self.remaining = self.size;
                    self.state = State::Data;
                }
            }
            State::Data => return Err(invalid("internal: data byte in framing state")),
            State::DataCr => {
                if b != b'\r' {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                self.size = 0;
                self.state = State::Size { digits: 0 };
            }
            State::TrailerStart => {
                if b == b'\r' {
                    self.state = State::FinalLf;
                } else if is_tchar(b) {
                    self.state = State::TrailerName;
                    self.count_trailer()?;
                } else {
                    return Err(invalid("malformed trailer line"));
                }
            }
            State::TrailerName => {
                self.count_trailer()?;
                match b {
                    b':' => self.state = State::TrailerLine,
                    c if is_tchar(c) => {}
                    _ => return Err(invalid("malformed trailer field name")),
                }
            }
            State::TrailerLine => match b {
                b'\r' => self.state = State::TrailerLf,
                b'\n' | 0 => return Err(invalid("malformed trailer line")),
                _ => self.count_trailer()?,
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(invalid("trailer line not ended by CRLF"));
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(invalid("last chunk not ended by CRLF"));
                }
                self.state = State::Done;
            }
            State::Done => return Err(invalid("bytes after the last chunk")),
        }
        if matches!(
            self.state,
            State::AfterSize | State::SizeBws | State::Ext | State::ExtQuoted { .. }
        ) {
            self.line_len += 1;
            if self.line_len > MAX_SIZE_LINE {
                return Err(invalid("chunk extension too long"));
            }
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), HttpError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILERS {
            return Err(invalid("trailer section too large"));
        }
        Ok(())
    }
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Writes `data` as one chunk (size line, data, CRLF) into `out`.
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let mut hex = [0u8; 16];
    let mut n = data.len();
    let mut i = hex.len();
    while n > 0 || i == hex.len() {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
    }
    out.extend_from_slice(&hex[i..]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes; returns the payload.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), HttpError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        while !d.is_done() {
            if pos == buf.len() {
                if fed == input.len() {
                    return Err(invalid("truncated"));
                }
                let end = (fed + piece).min(input.len());
                buf = input[fed..end].to_vec();
                fed = end;
                pos = 0;
            }
            let s = d.step(&buf[pos..])?;
            out.extend_from_slice(&buf[pos + s.data_start..pos + s.data_start + s.data_len]);
            pos += s.consumed;
        }
        Ok((out, fed - (buf.len() - pos)))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5 ;ext=\"a;b\"\r\nhello\r\n0006\r\n world\r\n0\r\nX-T: 1\r\nX-U:\r\n\r\nNEXT";
        for piece in 1..body.len() {
            let (out, used) = decode(body, piece).unwrap();
            assert_eq!(out, b"hello world");
            assert_eq!(&body[used..], b"NEXT");
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"-5\r\n",
            b"11111111111111111\r\n",
            b"5 5\r\nhello\r\n",
            b"0\r\nbad\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"0\r\nX-T 1\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
        ] {
            assert!(
                decode(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Whitespace after a size counts against the size-line limit too.
        let endless = [&b"5"[..], &[b' '; MAX_SIZE_LINE + 10]].concat();
        assert!(ChunkedDecoder::default().step(&endless).is_err());
    }

    #[test]
    fn encodes() {
        let mut v = Vec::new();
        encode_chunk(&mut v, &[b'a'; 26]);
        assert_eq!(&v[..4], b"1a\r\n");
        let (out, _) = decode(&[v.as_slice(), LAST_CHUNK].concat(), 7).unwrap();
        assert_eq!(out.len(), 26);
    }
}
