//! Owning the data-plane addresses, and handing them to a new process (binary upgrade).
//!
//! SO_REUSEPORT, which every shard needs, lets any process of the same user bind a served
//! port again. So each address is *claimed*: an abstract Unix socket named after it
//! (`coregate-listen 127.0.0.1:8080`), held for the life of the process: no file to clean
//! up, released when the process dies, scoped to the network namespace like the address.
//! A second `serve` on a claimed address is refused, as nginx would refuse it (EADDRINUSE).
//!
//! The claim socket is also how an upgrade happens. `serve --takeover` starts beside the
//! running process on the same addresses, and once all its shards listen it connects to the
//! claim socket and asks for a drain. The old process (after checking the caller runs as
//! its own user, or root) answers with its pid, releases its claims and its admin listener
//! and drains: its listeners close at once, so new connections go to the new process (and
//! with `net.ipv4.tcp_migrate_req = 1` the ones already queued on them move too), while its
//! requests in flight and tunnels finish. The new process takes the claims and the admin
//! address as soon as they are free.

use crate::config::Config;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// What the old process is asked and answers.
const DRAIN: &str = "drain";

/// The addresses this process serves (by config key), as claim names.
fn claim_names(config: &Config) -> Result<Vec<(&'static str, String, String)>, String> {
    let s = &config.server;
    let mut out = Vec::new();
    for (key, addr) in [
        ("server.listen", &s.listen),
        ("server.tls_listen", &s.tls_listen),
    ] {
        if addr.is_empty() {
            continue;
        }
        // Keyed by the address as bound (`localhost:80` is `127.0.0.1:80`); a wildcard and
        // a specific address on one port are different keys, as they are to bind(2).
        let bound = crate::config::parse_addr(addr)?;
        out.push((key, addr.clone(), format!("coregate-listen {bound}")));
    }
    Ok(out)
}

fn bind_claim(name: &str) -> std::io::Result<UnixListener> {
    SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixListener::bind_addr(&a))
}

/// Claims every data-plane address. An address another coregate claims is an error naming
/// its key, unless `takeover` (then it is returned in the second list, to be taken over).
pub fn claim(config: &Config, takeover: bool) -> Result<(Vec<UnixListener>, Vec<String>), String> {
    if config.server.allow_shared_listen {
        return Ok((Vec::new(), Vec::new()));
    }
    let (mut claims, mut held) = (Vec::new(), Vec::new());
    for (key, addr, name) in claim_names(config)? {
        match bind_claim(&name) {
            Ok(l) => claims.push(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && takeover => held.push(name),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(format!(
                    "{key}: another coregate already serves {addr}; a second one would \
                     silently take part of its connections (SO_REUSEPORT). Stop it first, \
                     or start the new one with `serve --takeover` to replace it without \
                     failing a request"
                ))
            }
            Err(e) => coregate_runtime::log::warn(&format!(
                "cannot claim {addr} for this process ({e}); a second coregate on it would \
                 not be refused"
            )),
        }
    }
    Ok((claims, held))
}

/// Answers takeover requests on this process's claims: `on_drain` runs once, for the first
/// request from a process of the same user (or root); the claims are released with it.
pub fn serve_claims(claims: Vec<UnixListener>, on_drain: impl Fn() + Send + Sync + 'static) {
    let on_drain = std::sync::Arc::new(on_drain);
    for listener in claims {
        let on_drain = on_drain.clone();
        let spawned = std::thread::Builder::new()
            .name("coregate-claim".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    if answer(stream) {
                        on_drain();
                        // Dropping the listener frees the name for the new process.
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            coregate_runtime::log::warn(&format!("cannot serve takeover requests: {e}"));
        }
    }
}

/// Reads one request from a would-be successor; true when it asked for a drain and may.
fn answer(mut stream: UnixStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if !same_user(&stream) {
        let _ = stream.write_all(b"refused: not the same user\n");
        return false;
    }
    let mut line = String::new();
    if BufReader::new(&stream).read_line(&mut line).is_err() || line.trim() != DRAIN {
        return false;
    }
    stream
        .write_all(format!("ok {}\n", std::process::id()).as_bytes())
        .is_ok()
}

/// Whether the peer runs as this process's user, or as root.
fn same_user(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the size of `cred`, as
    // SO_PEERCRED requires; the fd is open for the life of `stream`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == me || cred.uid == 0)
}

/// Asks the process holding each claim in `held` to drain; returns the pids that agreed.
pub fn ask_to_drain(held: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    for name in held {
        let asked = SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| UnixStream::connect_addr(&a))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(format!("{DRAIN}\n").as_bytes())?;
                let mut reply = String::new();
                BufReader::new(&s).read_line(&mut reply)?;
                Ok(reply)
            });
        match asked {
            Ok(reply) => match reply.trim().strip_prefix("ok ").map(str::parse::<u32>) {
                Some(Ok(pid)) if !pids.contains(&pid) => pids.push(pid),
                Some(Ok(_)) => {}
                _ => coregate_runtime::log::warn(&format!(
                    "takeover: the process holding {name:?} answered {:?}",
                    reply.trim()
                )),
            },
            // Already released: its holder is draining (asked through another address).
            Err(e) => coregate_runtime::log::info(&format!("takeover: {name:?}: {e}")),
        }
    }
    pids
}

/// Takes the claims in `held` as soon as their old holder lets them go (it does when it
/// starts draining; at worst when it exits), then serves them as [`serve_claims`] does.
pub fn claim_when_free(
    held: Vec<String>,
    within: Duration,
    on_drain: impl Fn() + Send + Sync + 'static,
) {
    if held.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("coregate-claim".into())
        .spawn(move || {
            let end = Instant::now() + within;
            let mut claims = Vec::new();
            for name in held {
                loop {
                    match bind_claim(&name) {
                        Ok(l) => break claims.push(l),
                        Err(_) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(100))
                        }
                        Err(e) => {
                            coregate_runtime::log::warn(&format!(
                                "takeover: could not claim {name:?} ({e}); a second coregate \
                                 on it would not be refused"
                            ));
                            break;
                        }
                    }
                }
            }
            serve_claims(claims, on_drain);
        });
    if let Err(e) = spawned {
        coregate_runtime::log::warn(&format!("takeover: cannot start the claim thread: {e}"));
    }
}
