//! TTS characters from a JSON body as it streams by.

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
    pub(super) fn feed(&mut self, bytes: &[u8]) {
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
