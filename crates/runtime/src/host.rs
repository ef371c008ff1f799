//! Facts about the host that the gateway, the mock provider and the load generator all read:
//! resource limits, kernel settings, and the memory each executor asks for. A leaf module:
//! it knows nothing of configs, so every part can ask it without import circles.

/// Registered-buffer memory each shard's executor asks glommio for (counted against
/// RLIMIT_MEMLOCK; `coregate doctor` checks it).
pub const IO_MEMORY_PER_SHARD: usize = 2 << 20;

/// The trimmed contents of a (proc or sys) file, when readable.
pub fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The soft and hard values of a resource limit.
pub fn rlimit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    (unsafe { libc::getrlimit(resource, &mut lim) } == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Whether the process runs as root (some kernel settings can then be changed).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// net.ipv4.ip_local_port_range, when readable.
pub fn port_range() -> Option<(u32, u32)> {
    let range = read_trim("/proc/sys/net/ipv4/ip_local_port_range")?;
    let mut it = range.split_whitespace().map(|v| v.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the resulting soft limit.
pub fn raise_nofile_limit() -> u64 {
    let Some((soft, hard)) = rlimit(libc::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    let want = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
        hard
    } else {
        soft
    }
}

/// Returns the calling thread's free allocator memory to the OS (mimalloc's `mi_collect`).
/// mimalloc keeps freed pages in the thread's heap for reuse and gives them back only when
/// that thread allocates again; a shard that just lost thousands of connections and then
/// idles would hold their memory for good. Costs a walk of the thread's heap: call it
/// rarely (after many connections closed), never per request.
pub fn release_free_memory() {
    crate::spare::release_all();
    // SAFETY: mi_collect has no preconditions; it only works on the calling thread's heap
    // (and on abandoned segments when forced), and is harmless when mimalloc is not the
    // global allocator (its heap is then empty).
    unsafe { libmimalloc_sys::mi_collect(true) };
}
