//! What the tests make and read as files: a WAV body, the lines a gateway thread appends
//! to a log or an export, and a process's resident memory from /proc.

use std::time::{Duration, Instant};

/// A WAV file of `data` bytes of 16-bit mono audio at `rate` Hz.
pub fn wav(rate: u32, data: usize) -> Vec<u8> {
    let mut b = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0".to_vec();
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(b"\x02\0\x10\0data");
    b.extend_from_slice(&(data as u32).to_le_bytes());
    b.extend(std::iter::repeat_n(0u8, data));
    b
}

/// The whole lines of a file a gateway thread appends to (up to its last newline: the
/// writer may be halfway through the next line); empty when it does not exist yet.
pub fn whole_lines(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text[..text.rfind('\n').map_or(0, |i| i + 1)].to_string()
}

/// [`whole_lines`] once there are at least `n` of them, or after 5 s (shards hand their
/// lines to the writer every tick).
pub fn wait_lines(path: &std::path::Path, n: usize) -> String {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let text = whole_lines(path);
        if text.lines().count() >= n || Instant::now() > end {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
