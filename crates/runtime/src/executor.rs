//! "Pin a thread, build its io_uring executor, run a future": the one way every shard of the
//! gateway, the mock provider and the load generator starts.

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use std::future::Future;

/// Pins the current thread to `core` (when given) and builds a glommio executor named `name`
/// with [`crate::host::IO_MEMORY_PER_SHARD`] of registered buffers. The error names what
/// failed and where to look; the caller reports it (usually on its ready channel).
pub fn pinned_executor(name: &str, core: Option<usize>) -> Result<LocalExecutor, String> {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(format!("{name}: cannot pin thread to core {id}"));
        }
    }
    // Placement::Unbound: the thread is already pinned above (glommio's own placement
    // would pin again, and would refuse cores outside its topology view).
    LocalExecutorBuilder::new(Placement::Unbound)
        .name(name)
        .io_memory(crate::host::IO_MEMORY_PER_SHARD)
        .make()
        .map_err(|e| {
            format!(
                "{name}: cannot start the io_uring executor: {e} \
                 (io_uring disabled, or RLIMIT_MEMLOCK too low? run `coregate doctor`)"
            )
        })
}

/// Runs `main` on a pinned executor on the current thread; an executor that cannot start
/// is reported through `on_error` (the caller's ready channel) and the thread returns.
pub fn run_pinned<F, T>(name: &str, core: Option<usize>, on_error: impl FnOnce(String), main: F)
where
    F: Future<Output = T> + 'static,
    T: 'static,
{
    match pinned_executor(name, core) {
        Ok(executor) => {
            executor.run(main);
        }
        Err(e) => on_error(e),
    }
}

/// Whether the current thread's executor reads sockets through multishot io_uring receives
/// (glommio patch 5: Linux 6.12+ and `COREGATE_NO_MULTISHOT_RECV` unset) rather than
/// readiness polls; for the start-up log and `coregate doctor`. Call it on an executor.
pub fn multishot_receives() -> bool {
    glommio::executor().multishot_recv()
}

/// The read path [`multishot_receives`] names, in words for logs and the doctor.
pub fn socket_reads(multishot: bool) -> &'static str {
    match multishot {
        true => "multishot io_uring receives into a provided-buffer ring",
        false => "readiness polls and recv (glommio's path)",
    }
}
