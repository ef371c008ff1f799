//! Linked into every fuzz target: an allocator that refuses any single allocation over
//! 256 MiB, so that an allocation sized by the input is a crash (Rust aborts on the refusal;
//! libFuzzer keeps the input). libFuzzer's own -malloc_limit_mb needs a sanitizer's malloc
//! hooks, which a stable build without ASan lacks: without this, such an allocation would go
//! unnoticed until its pages were touched, and then only -rss_limit_mb would see it.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation allowed, as fuzz/run.sh's -malloc_limit_mb=256.
pub const MAX_ALLOCATION: usize = 256 << 20;

/// The system allocator with the cap.
pub struct Capped;

// SAFETY: every call goes to System unchanged, except that a request over the cap gets a
// null pointer, which GlobalAlloc allows for any request it cannot serve.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's guarantees for `layout` are System's preconditions too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` and `layout` are as for dealloc; the caller guarantees `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
