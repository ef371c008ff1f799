//! A `multipart/form-data` upload (RFC 7578 over RFC 2046 §5.1.1) followed as it streams by,
//! for OpenAI-style transcription requests: the first file part's content goes to a
//! [`WavReader`], everything else is counted as unmetered bytes.
//!
//! The state is bounded whatever the body: the delimiter (`CRLF--boundary`, at most 74
//! bytes) and its match table, how much of it the bytes so far end with, and one part
//! header line (cut at [`LINE_MAX`]). A delimiter split across the body's pieces is found
//! like any other; bytes that began to look like one and turned out not to be are passed on
//! as content then.

use super::{Measured, WavReader};

/// RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
const BOUNDARY_MAX: usize = 70;
/// Longest part header line kept; the rest of a longer one is not looked at.
const LINE_MAX: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter (a preamble, usually empty).
    Preamble,
    /// Just after a delimiter: `--` closes the body, anything else is padding to the CRLF.
    AfterDelimiter,
    /// The first `-` of a close delimiter.
    Dash,
    /// Transport padding up to the CRLF that ends a delimiter line.
    Padding,
    Headers,
    Body,
    /// After the close delimiter: ignored.
    Epilogue,
}

#[derive(Debug)]
pub struct Multipart {
    /// `CRLF--boundary`: what ends a part's content (and the preamble).
    delimiter: Vec<u8>,
    /// `fallback[i]`: the longest proper prefix of `delimiter[..=i]` that is also its
    /// suffix (the KMP table), so a failed partial match resumes without looking back.
    fallback: Vec<usize>,
    /// How many bytes of `delimiter` the bytes so far end with.
    matched: usize,
    state: State,
    /// The part header line being read.
    line: Vec<u8>,
    /// The headers read so far name a file (`filename`) or audio (`Content-Type: audio/*`).
    names_file: bool,
    /// The part whose content is being read is the file part.
    in_file: bool,
    /// A file part has begun: later ones are counted as unmetered bytes.
    file_seen: bool,
    file: WavReader,
    total: u64,
}

impl Multipart {
    /// The reader for a body of this `Content-Type`, when it is `multipart/form-data` with
    /// a valid boundary. `fallback_rate` is the raw audio rate the query names, if any.
    pub fn for_content_type(content_type: &[u8], fallback_rate: Option<u64>) -> Option<Multipart> {
        let mut params = content_type.split(|&b| b == b';');
        let kind = params.next()?.trim_ascii();
        if !kind.eq_ignore_ascii_case(b"multipart/form-data") {
            return None;
        }
        let boundary = params.find_map(|p| {
            let (name, value) = p.split_at(p.iter().position(|&b| b == b'=')?);
            name.trim_ascii()
                .eq_ignore_ascii_case(b"boundary")
                .then(|| value[1..].trim_ascii())
        })?;
        let boundary = match boundary {
            [b'"', inner @ .., b'"'] => inner,
            b => b,
        };
        let valid = (1..=BOUNDARY_MAX).contains(&boundary.len())
            && boundary.iter().all(|&b| b.is_ascii_graphic() || b == b' ');
        if !valid {
            return None;
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        Some(Multipart {
            fallback: kmp_table(&delimiter),
            delimiter,
            // The first delimiter may open the body without a CRLF before it: read as if
            // one had come.
            matched: 2,
            state: State::Preamble,
            line: Vec::new(),
            names_file: false,
            in_file: false,
            file_seen: false,
            file: WavReader::new(fallback_rate),
            total: 0,
        })
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let mut rest = bytes;
        while let Some((&b, tail)) = rest.split_first() {
            match self.state {
                State::Preamble | State::Body => {
                    let used = self.content(rest);
                    rest = &rest[used..];
                    continue;
                }
                State::Epilogue => return,
                State::AfterDelimiter if b == b'-' => self.state = State::Dash,
                State::Dash if b == b'-' => self.state = State::Epilogue,
                State::AfterDelimiter | State::Dash | State::Padding => {
                    if b == b'\n' {
                        self.start_headers();
                    } else {
                        self.state = State::Padding;
                    }
                }
                State::Headers => self.header_byte(b),
            }
            rest = tail;
        }
    }

    /// Reads content up to and including the next delimiter; returns the bytes used.
    fn content(&mut self, bytes: &[u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if self.matched == 0 {
                // Nothing before the next CR can begin a delimiter: pass it on at once.
                let run = bytes[i..].iter().position(|&b| b == b'\r');
                let end = run.map_or(bytes.len(), |n| i + n);
                self.emit(&bytes[i..end]);
                i = end;
                if i == bytes.len() {
                    break;
                }
            }
            let b = bytes[i];
            i += 1;
            let before = self.matched;
            let mut m = before;
            while m > 0 && self.delimiter[m] != b {
                m = self.fallback[m - 1];
            }
            if self.delimiter[m] == b {
                m += 1;
            }
            // What no longer can be part of a delimiter: the first bytes of the partial
            // match so far followed by `b`.
            let released = before + 1 - m;
            if self.in_file && released > 0 {
                let held = released.min(before);
                self.file.feed(&self.delimiter[..held]);
                if released > before {
                    self.file.feed(&[b]);
                }
            }
            self.matched = m;
            if m == self.delimiter.len() {
                self.matched = 0;
                self.in_file = false;
                self.state = State::AfterDelimiter;
                return i;
            }
        }
        i
    }

    fn emit(&mut self, bytes: &[u8]) {
        if self.in_file && !bytes.is_empty() {
            self.file.feed(bytes);
        }
    }

    fn start_headers(&mut self) {
        self.state = State::Headers;
        self.line.clear();
        self.names_file = false;
    }

    fn header_byte(&mut self, b: u8) {
        if b != b'\n' {
            if self.line.len() < LINE_MAX {
                self.line.push(b);
            }
            return;
        }
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        if line.is_empty() {
            // The blank line: the part's content follows.
            self.in_file = self.names_file && !self.file_seen;
            self.file_seen |= self.in_file;
            self.state = State::Body;
            return;
        }
        self.names_file |= names_file(line);
        self.line.clear();
    }

    pub fn finish(&self) -> Measured {
        let file = self.file.finish();
        Measured {
            audio_ms: file.audio_ms,
            chars: 0,
            unmetered_bytes: file.unmetered_bytes + (self.total - self.file.total()),
        }
    }
}

/// Whether a part header says the part is a file: a `Content-Disposition` with a
/// `filename` (or `filename*`) parameter, or a `Content-Type` of `audio/*`.
fn names_file(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
    if name.eq_ignore_ascii_case(b"content-disposition") {
        return disposition_params(value)
            .any(|k| k.eq_ignore_ascii_case(b"filename") || k.eq_ignore_ascii_case(b"filename*"));
    }
    name.eq_ignore_ascii_case(b"content-type")
        && value.len() >= 6
        && value[..6].eq_ignore_ascii_case(b"audio/")
}

/// The parameter names of a `Content-Disposition` value (RFC 6266: `form-data; name="a";
/// filename="b"`), after its type; a `;` or `=` inside a quoted string is not a separator,
/// so `name="filename"` names no file.
fn disposition_params(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut segments = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in value.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                segments.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    segments.push(&value[start..]);
    segments.into_iter().skip(1).map(|seg| {
        let key = seg
            .iter()
            .position(|&b| b == b'=')
            .map_or(seg, |eq| &seg[..eq]);
        key.trim_ascii()
    })
}

/// The KMP failure table of `pattern` (see [`Multipart::fallback`]).
fn kmp_table(pattern: &[u8]) -> Vec<usize> {
    let mut table = vec![0; pattern.len()];
    let mut k = 0;
    for i in 1..pattern.len() {
        while k > 0 && pattern[i] != pattern[k] {
            k = table[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        table[i] = k;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::names_file;

    #[test]
    fn a_file_is_named_by_a_filename_parameter_not_by_the_word() {
        for file in [
            &b"Content-Disposition: form-data; name=\"file\"; filename=\"a.wav\""[..],
            b"content-disposition: form-data; name=file; FILENAME*=UTF-8''a%20b.wav",
            b"Content-Type: audio/wav",
        ] {
            assert!(names_file(file), "{}", String::from_utf8_lossy(file));
        }
        for field in [
            &b"Content-Disposition: form-data; name=\"filename\""[..],
            b"Content-Disposition: form-data; name=\"a;filename=x\"",
            b"Content-Disposition: form-data; name=\"q\\\";filename=\"",
            b"Content-Type: text/plain",
        ] {
            assert!(!names_file(field), "{}", String::from_utf8_lossy(field));
        }
    }
}
