//! A thread's spare connection buffers.
//!
//! Idle connections give their buffers back ([`crate::wire::Rx::park`]); the next connection
//! with input takes one from here. Reusing them saves the allocation's zero-fill (a 32 KiB
//! provider read buffer per response) and keeps the few buffers a busy thread touches hot
//! in cache, whatever the number of connections. Bounded: past [`MAX_SPARES`] buffers of
//! a kind, or past [`MAX_LEN`] bytes, a buffer is freed.

use std::cell::RefCell;

/// Spare buffers kept per kind (read buffers, write buffers) and thread.
const MAX_SPARES: usize = 64;
/// Larger buffers are freed rather than kept.
const MAX_LEN: usize = 64 * 1024;

thread_local! {
    static READ: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of exactly `len` bytes (its contents are stale bytes, never read before
/// being written: a reader tracks what it filled).
pub fn take_read(len: usize) -> Vec<u8> {
    READ.with(|s| {
        let mut spares = s.borrow_mut();
        match spares.iter().rposition(|b| b.len() == len) {
            Some(i) => spares.swap_remove(i),
            None => vec![0; len],
        }
    })
}

/// An empty write buffer with room for `capacity` bytes at least.
pub fn take_write(capacity: usize) -> Vec<u8> {
    WRITE.with(|s| match s.borrow_mut().pop() {
        Some(mut b) if b.capacity() >= capacity => {
            b.clear();
            b
        }
        _ => Vec::with_capacity(capacity),
    })
}

/// Keeps `buf` for another connection's read (see [`take_read`]).
pub fn give_read(buf: Vec<u8>) {
    let len = buf.len();
    keep(&READ, buf, len);
}

/// Keeps `buf` for another connection's writes (see [`take_write`]).
pub fn give_write(buf: Vec<u8>) {
    let capacity = buf.capacity();
    keep(&WRITE, buf, capacity);
}

fn keep(spares: &'static std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>, buf: Vec<u8>, size: usize) {
    if size == 0 || size > MAX_LEN {
        return;
    }
    spares.with(|s| {
        let mut spares = s.borrow_mut();
        if spares.len() < MAX_SPARES {
            spares.push(buf);
        }
    });
}

/// Frees every spare buffer (after a connection storm; see the shard's memory collection).
pub fn release_all() {
    READ.with(|s| *s.borrow_mut() = Vec::new());
    WRITE.with(|s| *s.borrow_mut() = Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_and_sizes_are_kept_apart() {
        give_read(vec![7u8; 4096]);
        let b = take_read(4096);
        assert_eq!(b.len(), 4096);
        assert_eq!(b[0], 7, "the spare, not a fresh allocation");
        assert_eq!(take_read(4096)[0], 0, "none left: a fresh one");
        give_read(vec![1u8; 16]);
        assert_eq!(take_read(32).len(), 32);
        let mut w = Vec::with_capacity(8192);
        w.extend_from_slice(b"abc");
        give_write(w);
        let w = take_write(4096);
        assert!(w.is_empty() && w.capacity() >= 8192);
        release_all();
    }
}
