//! Starting the drain, from whichever asks first: SIGTERM/SIGINT, or a successor process
//! taking over the addresses (`serve --takeover`, see [`crate::takeover`]). A signal's drain
//! first waits out `server.drain_delay_ms` with `/health` at 503 and the listeners open, so
//! that balancers stop sending before connections are refused. Also the signal thread, which
//! turns SIGHUP into a reload.

use crate::reload::Reloader;
use crate::shard::Control;
use crate::stats::aggregate::Query;
use crossbeam_channel::{bounded, Receiver, Sender};
use signal_hook::consts::{SIGHUP, SIGUSR1};
use signal_hook::iterator::Signals;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// `server.drain_delay_ms` of the config the shards serve (a reload updates it).
    pub delay_ms: Arc<AtomicU64>,
    /// Ends a drain delay early: a successor that takes over already accepts.
    cut_delay: (Sender<()>, Receiver<()>),
}

impl Drainer {
    pub fn new(controls: Vec<Sender<Control>>, queries: Sender<Query>) -> Drainer {
        Drainer {
            started: Arc::new(AtomicBool::new(false)),
            controls,
            queries,
            admin_stop: Arc::new(AtomicBool::new(false)),
            admin: Arc::new(Mutex::new(None)),
            delay_ms: Arc::new(AtomicU64::new(0)),
            cut_delay: bounded(1),
        }
    }

    /// Starts the drain (once: later calls only hand the admin address over) and says
    /// why. Admin `/health` turns 503 at once; the shards close their listeners after
    /// `server.drain_delay_ms`, so that a balancer's health check sees the 503 while new
    /// connections are still served. With a `successor` there is no delay (it already
    /// accepts on the same addresses), and the admin listener closes too: the successor
    /// answers on it from now on, and balancers must see its `/health`, not this 503.
    pub fn start(&self, why: &str, successor: bool) {
        let first = !self.started.swap(true, Ordering::SeqCst);
        if successor {
            self.hand_admin_over();
            // A drain already waiting out its delay (SIGTERM came first) stops waiting.
            let _ = self.cut_delay.0.try_send(());
        }
        if !first {
            return;
        }
        let _ = self.queries.send(Query::Draining);
        let delay = match successor {
            true => Duration::ZERO,
            false => Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)),
        };
        if delay.is_zero() {
            coregate_runtime::log::info(&format!("{why}: draining"));
            return self.close_listeners();
        }
        coregate_runtime::log::info(&format!(
            "{why}: draining; admin /health answers 503, the listeners close in {} ms \
             (server.drain_delay_ms)",
            delay.as_millis()
        ));
        let this = self.clone();
        let waiting = std::thread::Builder::new()
            .name("coregate-drain-delay".into())
            .spawn(move || {
                let _ = this.cut_delay.1.recv_timeout(delay);
                coregate_runtime::log::info("drain delay over: closing the listeners");
                this.close_listeners();
            });
        if waiting.is_err() {
            coregate_runtime::log::warn("cannot wait out the drain delay: draining now");
            self.close_listeners();
        }
    }

    /// Has every shard stop accepting and drain.
    fn close_listeners(&self) {
        for c in &self.controls {
            let _ = c.try_send(Control::Drain);
        }
    }

    /// Closes the admin listener for a successor that binds the same address.
    fn hand_admin_over(&self) {
        self.admin_stop.store(true, Ordering::SeqCst);
        if let Ok(Some(listener)) = self.admin.lock().map(|mut a| a.take()) {
            // SAFETY: shutdown has no memory-safety preconditions; the fd is a dup the
            // `listener` owns, open until it drops below. Shutting the socket down wakes
            // the admin thread's blocking accept, which then sees `admin_stop`.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
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
