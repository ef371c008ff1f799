//! Accepting connections: each shard's own SO_REUSEPORT listener and its accept loop.
//!
//! The listener is built with socket2 (glommio's `bind` fixes the backlog at 1024) and
//! adopted into glommio. The accept loop holds one permit of the shard's connection cap
//! per open connection: at the cap it stops accepting — the kernel queues new connections
//! in the backlog — until a connection ends. It never spins on EMFILE.

use crate::shard::Shard;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts until the shard starts draining, spawning one task per connection. `slots` is
/// the shard's connection cap, shared by its plain and TLS listeners; `tls` is set for the
/// TLS listener.
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    slots: Rc<Semaphore>,
    max_connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let permit = match slots.try_acquire_static_permit(1) {
            Ok(p) => p,
            Err(_) => {
                shard.stats.borrow_mut().counters.accept_paused += 1;
                warn_rate_limited(&mut last_warning, || {
                    format!(
                        "shard {}: at its cap of {max_connections} connections; \
                         not accepting until one closes (raise RLIMIT_NOFILE or \
                         server.max_connections_per_shard)",
                        shard.id
                    )
                });
                let acquire = async { Some(slots.acquire_static_permit(1).await) };
                let drained = async {
                    shard.drain.wait().await;
                    None
                };
                match futures_lite::future::or(acquire, drained).await {
                    Some(Ok(p)) => p,
                    _ => return,
                }
            }
        };
        let accept = async { Some(listener.accept().await) };
        let drained = async {
            shard.drain.wait().await;
            None
        };
        let Some(result) = futures_lite::future::or(accept, drained).await else {
            return;
        };
        match result {
            Ok(stream) => {
                let serve = crate::session::serve(shard.clone(), stream, tls.clone(), permit);
                glommio::spawn_local(serve).detach();
            }
            Err(e) => {
                let e: io::Error = e.into();
                shard.stats.borrow_mut().counters.accept_errors += 1;
                match e.raw_os_error() {
                    Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS)
                    | Some(libc::ENOMEM) => {
                        warn_rate_limited(&mut last_warning, || {
                            format!(
                                "shard {}: accept failed: {e} — the process is out of file \
                                 descriptors or memory; backing off (check `ulimit -n` and \
                                 `coregate doctor`)",
                                shard.id
                            )
                        });
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                    // The peer gave up before we accepted (ECONNABORTED etc.): carry on.
                    _ => {}
                }
            }
        }
    }
}

fn warn_rate_limited(last: &mut Option<Instant>, msg: impl FnOnce() -> String) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5)) {
        *last = Some(now);
        coregate_runtime::log::warn(&msg());
    }
}
