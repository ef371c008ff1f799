//! Starting the drain, from whichever asks first: SIGTERM/SIGINT, or a successor process
//! taking over the addresses (`serve --takeover`, see [`crate::takeover`]). Also the signal
//! thread, which turns SIGHUP into a reload.

use crate::reload::Reloader;
use crate::shard::Control;
use crate::stats::aggregate::Query;
use crossbeam_channel::Sender;
use signal_hook::consts::{SIGHUP, SIGUSR1};
use signal_hook::iterator::Signals;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Everything a drain stops. Cheap to clone; every clone starts the same drain.
#[derive(Clone)]
pub struct Drainer {
    /// Set once the drain started (the main thread reads it when shards end).
    pub started: Arc<AtomicBool>,
    pub controls: Vec<Sender<Control>>,
    pub queries: Sender<Query>,
    /// Set (with the listener shut down) when a successor takes the admin address over.
    pub admin_stop: Arc<AtomicBool>,
    /// A handle on the admin listener (a dup of its fd), once it is bound.
    pub admin: Arc<Mutex<Option<TcpListener>>>,
}

impl Drainer {
    pub fn new(controls: Vec<Sender<Control>>, queries: Sender<Query>) -> Drainer {
        Drainer {
            started: Arc::new(AtomicBool::new(false)),
            controls,
            queries,
            admin_stop: Arc::new(AtomicBool::new(false)),
            admin: Arc::new(Mutex::new(None)),
        }
    }

    /// Starts the drain (once: later calls do nothing) and says why. With a `successor`,
    /// the admin listener closes too: the successor answers on it from now on, and
    /// balancers must see its `/health`, not this process's 503.
    pub fn start(&self, why: &str, successor: bool) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        coregate_runtime::log::info(&format!("{why}: draining"));
        let _ = self.queries.send(Query::Draining);
        if successor {
            self.admin_stop.store(true, Ordering::SeqCst);
            if let Ok(Some(listener)) = self.admin.lock().map(|mut a| a.take()) {
                // SAFETY: shutdown has no memory-safety preconditions; the fd is a dup the
                // `listener` owns, open until it drops below. Shutting the socket down wakes
                // the admin thread's blocking accept, which then sees `admin_stop`.
                unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        for c in &self.controls {
            let _ = c.try_send(Control::Drain);
        }
    }
}

/// Runs the signal thread: SIGHUP reloads (until a drain begins), SIGUSR1 reopens the
/// access log and the usage export, the first SIGTERM or SIGINT drains, a second one exits at once.
pub fn spawn_signal_thread(
    mut signals: Signals,
    mut reloader: Reloader,
    drainer: Drainer,
    logs: Vec<Sender<crate::access_log::Message>>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("coregate-signals".into())
        .spawn(move || {
            let mut stops = 0;
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    for log in &logs {
                        let _ = log.send(crate::access_log::Message::Reopen);
                    }
                    continue;
                }
                if sig == SIGHUP {
                    // Reloads stop once the drain began: the shards are on their way out.
                    match drainer.started.load(Ordering::SeqCst) {
                        false => reloader.reload(),
                        true => coregate_runtime::log::warn("SIGHUP while draining: ignored"),
                    }
                    continue;
                }
                stops += 1;
                if stops == 1 {
                    drainer.start(&format!("signal {sig}"), false);
                } else {
                    coregate_runtime::log::warn(
                        "second signal: exiting without waiting for the drain",
                    );
                    // The operator asked twice: leave now, whatever the shards are doing.
                    #[allow(clippy::exit)]
                    std::process::exit(130);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the signal thread: {e}"))
}
