//! Accepting connections: each shard's own SO_REUSEPORT listener and its accept loop.
//!
//! The listener is built with socket2 (glommio's `bind` fixes the backlog at 1024) and
//! adopted into glommio. The accept loop holds one permit of the shard's connection cap
//! per open connection: at the cap it still accepts, answers 503 (JSON, `Retry-After`) and
//! closes, so a client past the cap learns it in a millisecond instead of waiting in the
//! backlog until its own timeout (the count is `accept_paused`). It never spins on EMFILE.

use crate::shard::Shard;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Accepts until the shard starts draining, spawning one task per connection. `slots` is
/// the shard's connection cap, shared by its plain and TLS listeners; `tls` is set for the
/// TLS listener, whose certificates come from the shard's current config generation (a
/// reload changes them for the next handshake).
pub async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    slots: Rc<Semaphore>,
    max_connections: usize,
    tls: bool,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let accept = async { Some(listener.accept().await) };
        let drained = async {
            shard.drain.wait().await;
            None
        };
        let Some(result) = futures_lite::future::or(accept, drained).await else {
            return;
        };
        // At the cap, a connection is answered and closed at once rather than left in the
        // backlog, where its client would wait, unanswered, until its own timeout.
        let permit = match slots.try_acquire_static_permit(1) {
            Ok(p) => Some(p),
            Err(_) => {
                warn_rate_limited(&mut last_warning, || {
                    format!(
                        "shard {}: at its cap of {max_connections} connections; new ones \
                         get 503 until one closes (raise RLIMIT_NOFILE or \
                         server.max_connections_per_shard; http.first_byte_timeout_ms closes \
                         connections that send nothing)",
                        shard.id
                    )
                });
                None
            }
        };
        match result {
            Ok(stream) => match permit {
                Some(permit) => {
                    let tls = tls.then(|| shard.config().server_tls.clone()).flatten();
                    let serve = crate::session::serve(shard.clone(), stream, tls, permit);
                    glommio::spawn_local(serve).detach();
                }
                None => shed(&shard, &stream, tls),
            },
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

/// Turns a connection away at the cap: a plain client gets a 503 (JSON, `Retry-After`) in
/// one non-blocking send; a TLS client, which could not read it before a handshake, gets the
/// close. What the client already sent is read first, so that the close is a FIN and the
/// 503 is not lost to a reset.
fn shed(shard: &Shard, stream: &glommio::net::TcpStream, tls: bool) {
    use std::os::fd::AsRawFd;
    shard.stats.borrow_mut().counters.accept_paused += 1;
    let fd = stream.as_raw_fd();
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        // SAFETY: recv(2) writes at most `sink.len()` bytes into `sink`, which outlives the
        // call; the fd is the accepted socket, owned by `stream`.
        let n = unsafe { libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            break;
        }
    }
    if tls {
        return;
    }
    let body = coregate_http1::reply::json_error(
        503,
        "overloaded",
        "the gateway is at its connection limit; retry shortly",
        None,
    );
    let reply = coregate_http1::reply::Reply {
        status: 503,
        content_type: "application/json",
        body: &body,
        extra: &["Retry-After: 1"],
    };
    let mut out = Vec::with_capacity(256);
    let date = shard.date.borrow();
    reply.write(
        &mut out,
        date.get(),
        coregate_http1::reply::Persist::Close,
        false,
    );
    // SAFETY: send(2) only reads `out`, which outlives the call; MSG_DONTWAIT keeps the
    // accept loop from blocking, MSG_NOSIGNAL from raising SIGPIPE.
    let _ = unsafe {
        libc::send(
            fd,
            out.as_ptr().cast(),
            out.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
}

fn warn_rate_limited(last: &mut Option<Instant>, msg: impl FnOnce() -> String) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(5)) {
        *last = Some(now);
        coregate_runtime::log::warn(&msg());
    }
}
