// coregate: socket reads as io_uring operations (patch 0005).
//
// One multishot `IORING_OP_RECV` per connection, armed once, with buffers picked by the kernel
// from a per-thread provided-buffer ring when data arrives. A read then costs one completion:
// no readiness poll re-armed after every read (`vfs_poll`, a wait-queue entry, `fget`), no
// `recv` syscall, and an idle connection holds no read buffer. The readiness path stays as the
// fallback: when the kernel has no buffer left (`ENOBUFS`) or the ring could not be set up.
//
// Every buffer the kernel hands out is owned by a `RecvBuf` and goes back to the ring when
// that is dropped, so a connection closed with unread data returns its buffers.

use std::{
    alloc::{self, Layout},
    cell::Cell,
    collections::VecDeque,
    io,
    os::unix::io::RawFd,
    ptr::NonNull,
    rc::Rc,
    sync::atomic::{AtomicU16, Ordering},
    task::Waker,
};

const IORING_REGISTER_PBUF_RING: libc::c_uint = 22;
const IORING_UNREGISTER_PBUF_RING: libc::c_uint = 23;
pub(crate) const IORING_CQE_F_BUFFER: u32 = 1 << 0;
pub(crate) const IORING_CQE_F_MORE: u32 = 1 << 1;
const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;
const IOU_PBUF_RING_INC: u16 = 2;
pub(crate) const IORING_RECV_MULTISHOT: u16 = 1 << 1;
pub(crate) const BUFFER_GROUP: u16 = 0xc0;

/// A connection stops reading ahead (its multishot receive is cancelled) once this many
/// buffers wait unread: one slow reader must not take the whole ring.
const MAX_QUEUED: usize = 16;

#[repr(C)]
struct BufEntry {
    addr: u64,
    len: u32,
    bid: u16,
    // In entry 0 this is the ring's tail (`struct io_uring_buf_ring`); never written here.
    resv: u16,
}

#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// The provided-buffer ring of one thread's main io_uring.
pub(crate) struct BufRing {
    entries: NonNull<BufEntry>,
    data: NonNull<u8>,
    count: u16,
    size: usize,
    tail: Cell<u16>,
    /// The ring it was registered with, until the reactor goes away.
    ring_fd: Cell<Option<RawFd>>,
    /// Per buffer: how far the kernel has filled it. With incremental consumption
    /// (`IOU_PBUF_RING_INC`, Linux 6.12) the kernel packs one receive after another into a
    /// buffer, so a few hundred bytes of request take a few hundred bytes of ring, not a
    /// whole buffer: thousands of connections receiving in one loop turn fit.
    filled: Box<[Cell<u32>]>,
    /// Per buffer: received pieces not yet read.
    pieces: Box<[Cell<u32>]>,
    /// Per buffer: the kernel has moved on to another one.
    done: Box<[Cell<bool>]>,
}

impl BufRing {
    /// Registers `count` (a power of two) buffers of `size` bytes with the ring `ring_fd`.
    /// `None` before Linux 6.12 (no incremental buffers) or with `COREGATE_NO_MULTISHOT_RECV`.
    pub(crate) fn register(ring_fd: RawFd, count: u16, size: usize) -> Option<Rc<BufRing>> {
        if std::env::var_os("COREGATE_NO_MULTISHOT_RECV").is_some() || !count.is_power_of_two() {
            return None;
        }
        let entries = alloc_zeroed(Self::entries_layout(count)?)?.cast::<BufEntry>();
        let Some(data) = Self::data_layout(count, size).and_then(alloc_zeroed) else {
            // SAFETY: allocated just above with this layout.
            unsafe { alloc::dealloc(entries.as_ptr().cast(), Self::entries_layout(count)?) };
            return None;
        };
        let per_buffer = |v| (0..count).map(|_| Cell::new(v)).collect();
        let ring = BufRing {
            entries,
            data,
            count,
            size,
            tail: Cell::new(0),
            ring_fd: Cell::new(None),
            filled: per_buffer(0),
            pieces: per_buffer(0),
            done: (0..count).map(|_| Cell::new(false)).collect(),
        };
        for bid in 0..count {
            ring.give_back(bid);
        }
        let register = |flags: u16| {
            let reg = BufReg {
                ring_addr: entries.as_ptr() as u64,
                ring_entries: u32::from(count),
                bgid: BUFFER_GROUP,
                flags,
                resv: [0; 3],
            };
            // SAFETY: io_uring_register(2) reads one `io_uring_buf_reg` from `reg`; the
            // ring memory it names is page aligned and stays allocated until `self` is
            // dropped, after `retire` unregistered it.
            unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    ring_fd,
                    IORING_REGISTER_PBUF_RING,
                    &reg as *const BufReg,
                    1,
                )
            }
        };
        // Only where the kernel packs receives (6.12+): with a whole buffer per receive,
        // 5,000 connections receiving in one loop turn emptied the ring and most reads fell
        // back to the poll path, costing more than that path alone (PATCHES.md, patch 5).
        let rc = register(IOU_PBUF_RING_INC);
        if rc != 0 {
            log::debug!("no provided-buffer ring: {}", io::Error::last_os_error());
            return None;
        }
        ring.ring_fd.set(Some(ring_fd));
        Some(Rc::new(ring))
    }

    fn entries_layout(count: u16) -> Option<Layout> {
        Layout::from_size_align(usize::from(count) * std::mem::size_of::<BufEntry>(), 4096).ok()
    }

    fn data_layout(count: u16, size: usize) -> Option<Layout> {
        Layout::from_size_align(usize::from(count) * size, 4096).ok()
    }

    /// Unregisters the ring from the kernel while its io_uring is still open. Buffers still
    /// held by streams stay valid memory; they are no longer handed back.
    pub(crate) fn retire(&self) {
        if let Some(fd) = self.ring_fd.take() {
            let reg = BufReg {
                ring_addr: 0,
                ring_entries: 0,
                bgid: BUFFER_GROUP,
                flags: 0,
                resv: [0; 3],
            };
            // SAFETY: as in `register`; the kernel only reads `bgid` here.
            unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    fd,
                    IORING_UNREGISTER_PBUF_RING,
                    &reg as *const BufReg,
                    1,
                )
            };
        }
    }

    /// Takes a completion's buffer: where its `len` bytes lie in buffer `bid`.
    fn take(&self, bid: u16, len: usize, kernel_keeps_it: bool) -> Option<(usize, usize)> {
        let i = usize::from(bid);
        let (filled, pieces, done) = (self.filled.get(i)?, &self.pieces[i], &self.done[i]);
        let start = filled.get() as usize;
        let end = (start + len).min(self.size);
        filled.set(end as u32);
        done.set(!kernel_keeps_it);
        if end > start {
            pieces.set(pieces.get() + 1);
        } else if !kernel_keeps_it && pieces.get() == 0 {
            self.recycle(bid);
        }
        (end > start).then_some((start, end))
    }

    /// One received piece of buffer `bid` was read.
    fn piece_read(&self, bid: u16) {
        let i = usize::from(bid);
        let pieces = &self.pieces[i];
        pieces.set(pieces.get().saturating_sub(1));
        if pieces.get() == 0 && self.done[i].get() {
            self.recycle(bid);
        }
    }

    fn recycle(&self, bid: u16) {
        let i = usize::from(bid);
        self.filled[i].set(0);
        self.done[i].set(false);
        if self.ring_fd.get().is_some() {
            self.give_back(bid);
        }
    }

    /// Publishes buffer `bid` to the kernel again.
    fn give_back(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.count - 1));
        // SAFETY: `slot` < count, inside the entries allocation. Only addr, len and bid are
        // written: the kernel reads the tail from entry 0's last field.
        unsafe {
            let e = self.entries.as_ptr().add(slot);
            std::ptr::addr_of_mut!((*e).addr).write(self.buf_ptr(bid) as u64);
            std::ptr::addr_of_mut!((*e).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: the tail is the u16 at byte 14 of the (page-aligned) ring, shared with the
        // kernel, which reads it with acquire semantics; the entry above must be visible first.
        unsafe {
            let p = self
                .entries
                .as_ptr()
                .cast::<u8>()
                .add(14)
                .cast::<AtomicU16>();
            (*p).store(tail, Ordering::Release);
        }
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset stays inside the data allocation.
        unsafe { self.data.as_ptr().add(usize::from(bid) * self.size) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        self.retire();
        // SAFETY: both were allocated in `register` with these layouts, and the kernel no
        // longer knows them (retired, or the ring is gone).
        unsafe {
            if let Some(l) = Self::entries_layout(self.count) {
                alloc::dealloc(self.entries.as_ptr().cast(), l);
            }
            if let Some(l) = Self::data_layout(self.count, self.size) {
                alloc::dealloc(self.data.as_ptr(), l);
            }
        }
    }
}

fn alloc_zeroed(layout: Layout) -> Option<NonNull<u8>> {
    if layout.size() == 0 {
        return None;
    }
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { alloc::alloc_zeroed(layout) })
}

/// Received bytes in one ring buffer; handed back to the ring when dropped.
pub(crate) struct RecvBuf {
    ring: Rc<BufRing>,
    bid: u16,
    start: usize,
    end: usize,
}

impl RecvBuf {
    fn bytes(&self) -> &[u8] {
        // SAFETY: the kernel wrote `end` bytes into buffer `bid` and gave it to us; it will
        // not write there until `give_back`, which only `drop` calls.
        unsafe {
            std::slice::from_raw_parts(
                self.ring.buf_ptr(self.bid).add(self.start),
                self.end - self.start,
            )
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.ring.piece_read(self.bid);
    }
}

/// What one connection's multishot receive delivered and the reader has not taken yet.
/// Shared by the stream and the in-flight source; the completion handler fills it.
pub(crate) struct RecvQueue {
    ring: Rc<BufRing>,
    bufs: VecDeque<RecvBuf>,
    /// The errno that ended input (a reset, ...), reported after the buffered bytes.
    end: Option<i32>,
    eof: bool,
    /// The kernel ran out of buffers: the next read goes through the readiness path.
    pub(crate) no_buffers: bool,
    /// A multishot receive is in the kernel (its last completion not yet seen).
    pub(crate) armed: bool,
    /// Set when this queue asked the kernel to stop reading ahead.
    pub(crate) held_back: bool,
    waker: Option<Waker>,
}

impl std::fmt::Debug for RecvQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvQueue")
            .field("bufs", &self.bufs.len())
            .field("armed", &self.armed)
            .field("eof", &self.eof)
            .finish()
    }
}

impl RecvQueue {
    pub(crate) fn new(ring: Rc<BufRing>) -> RecvQueue {
        RecvQueue {
            ring,
            bufs: VecDeque::new(),
            end: None,
            eof: false,
            no_buffers: false,
            armed: false,
            held_back: false,
            waker: None,
        }
    }

    /// Takes one completion. Returns whether the reader should stop reading ahead (too
    /// many buffers unread) and whether a task was woken.
    pub(crate) fn complete(&mut self, res: i32, flags: u32) -> (bool, bool) {
        if flags & IORING_CQE_F_BUFFER != 0 {
            let bid = (flags >> 16) as u16;
            let len = usize::try_from(res).unwrap_or(0);
            if let Some((start, end)) = self.ring.take(bid, len, flags & IORING_CQE_F_BUF_MORE != 0)
            {
                self.bufs.push_back(RecvBuf {
                    ring: self.ring.clone(),
                    bid,
                    start,
                    end,
                });
            }
        }
        match res {
            0 => self.eof = true,
            r if r < 0 => match -r {
                libc::ENOBUFS => self.no_buffers = true,
                libc::ECANCELED => {}
                e => self.end = Some(e),
            },
            _ => {}
        }
        if flags & IORING_CQE_F_MORE == 0 {
            self.armed = false;
        }
        let hold = self.armed && !self.held_back && self.bufs.len() >= MAX_QUEUED;
        if hold {
            self.held_back = true;
        }
        let woke = match self.waker.take() {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        };
        (hold, woke)
    }

    /// Copies received bytes into `out`; how many.
    pub(crate) fn copy_out(&mut self, out: &mut [u8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let Some(front) = self.bufs.front_mut() else {
                break;
            };
            let src = front.bytes();
            let k = src.len().min(out.len() - n);
            out[n..n + k].copy_from_slice(&src[..k]);
            n += k;
            front.start += k;
            if front.start == front.end {
                self.bufs.pop_front();
            }
        }
        n
    }

    pub(crate) fn has_input(&self) -> bool {
        !self.bufs.is_empty() || self.eof || self.end.is_some()
    }

    /// After the buffered bytes: `Some(Ok(0))` at end of input, `Some(Err)` after an error.
    pub(crate) fn ended(&self) -> Option<io::Result<usize>> {
        if let Some(errno) = self.end {
            return Some(Err(io::Error::from_raw_os_error(errno)));
        }
        self.eof.then_some(Ok(0))
    }

    pub(crate) fn set_waker(&mut self, waker: &Waker) {
        match &self.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }
}
