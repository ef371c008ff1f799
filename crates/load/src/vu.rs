//! A virtual user: one keep-alive connection and its loop of requests, paced by the
//! loop mode; and the per-shard sweep that enforces `--timeout` for all of a shard's VUs
//! with one timer.

use super::client::{dial, ClientConn, Failure};
use super::options::Mode;
use super::record::ErrorClass;
use super::worker::ShardState;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Pause after a failed connect before the VU tries again (keeps a refused target from
/// turning the generator into a busy loop).
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// What the shard knows of one VU: its stop flag, and the exchange it has in flight, so
/// that [`sweep`] can time it out.
#[derive(Default)]
pub(super) struct VuSlot {
    pub(super) stop: Cell<bool>,
    /// When the exchange in flight started waiting, and on which socket.
    busy: Cell<Option<(Instant, i32)>>,
    timed_out: Cell<bool>,
}

/// How often a shard looks for exchanges past `--timeout` (its precision).
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// Enforces `--timeout` for every VU of a shard with one timer, instead of a glommio timer
/// armed and cancelled on every read: an exchange waiting longer has its socket shut down,
/// which ends the pending read, and the VU reports a timeout.
pub(super) async fn sweep(st: Rc<ShardState>) {
    while !st.stopping.get() {
        glommio::timer::sleep(SWEEP_EVERY).await;
        let now = Instant::now();
        for slot in st.vus.borrow().iter() {
            if let Some((since, fd)) = slot.busy.get() {
                if now.saturating_duration_since(since) >= st.cfg.timeout {
                    slot.timed_out.set(true);
                    slot.busy.set(None);
                    // SAFETY: shutdown(2) on the VU's open socket; the VU owns and later
                    // closes it. No memory is involved.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                }
            }
        }
    }
}

impl ShardState {
    /// One exchange starting `now`, registered in the VU's slot so that [`sweep`] can time
    /// it out.
    async fn exchange(
        &self,
        slot: &VuSlot,
        c: &mut ClientConn,
        target: usize,
        is_head: bool,
        now: Instant,
    ) -> Result<super::client::Response, Failure> {
        slot.busy.set(Some((now, c.fd())));
        let (request, timeout) = (&self.requests[target], self.cfg.timeout);
        let result = match self.ws.get(target).and_then(Option::as_ref) {
            Some(plan) => {
                c.exchange_ws(request, plan, timeout, self.cfg.connect_timeout)
                    .await
            }
            None => {
                c.exchange(request, is_head, timeout, self.cfg.connect_timeout)
                    .await
            }
        };
        slot.busy.set(None);
        if slot.timed_out.replace(false) {
            // The sweep shut the socket down: whatever the read saw, the cause is the
            // timeout (unless the connect itself failed first).
            return match result {
                Err(f)
                    if matches!(
                        f.class,
                        ErrorClass::ConnectRefused | ErrorClass::ConnectTimeout
                    ) =>
                {
                    Err(f)
                }
                _ => Err(Failure {
                    class: ErrorClass::Timeout,
                    errno: None,
                }),
            };
        }
        result
    }
}

/// A reused connection that failed before any response byte.
fn stale(result: &Result<super::client::Response, Failure>) -> bool {
    matches!(result, Err(f) if matches!(f.class, ErrorClass::Closed | ErrorClass::Reset))
}

impl ShardState {
    /// Opens a VU's connection, counting it as open (and, inside a window, as opened).
    fn open(&self, dest: SocketAddr, source: Option<IpAddr>) -> Result<ClientConn, Failure> {
        let c = dial(dest, source)?;
        self.open_connections.set(self.open_connections.get() + 1);
        if self.measuring.get() {
            self.record.borrow_mut().connections_opened += 1;
        }
        Ok(c)
    }

    /// Marks a VU's first attempt as finished, once (the ramp waits for all of them).
    fn first_attempt_done(&self, pending: &mut bool) {
        if std::mem::take(pending) {
            self.connecting.set(self.connecting.get() - 1);
        }
    }
}

/// One virtual user: a connection and a loop of requests on it.
pub(super) async fn virtual_user(st: Rc<ShardState>, local: usize, slot: Rc<VuSlot>) {
    let stop = &slot.stop;
    let global = local * st.shards + st.id;
    let target = global % st.requests.len().max(1);
    let dest = st.cfg.targets[target].addr;
    // Every (source, target) pair gets VUs, even when the two counts share a factor.
    let source = match st.cfg.sources.len() {
        0 => None,
        n => Some(st.cfg.sources[(global / st.requests.len().max(1)) % n]),
    };
    let is_head = st.cfg.request.is_head();
    let mut conn: Option<ClientConn> = None;
    let mut connecting = true;
    let mut epoch = u64::MAX;
    let mut next_send = Instant::now();
    // Set after a cool-down: the server may have closed the idle connection meanwhile.
    let mut was_idle = false;
    while !stop.get() {
        if st.paused.get() {
            was_idle = true;
            glommio::timer::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match st.open(dest, source) {
                Ok(c) => conn.insert(c),
                Err(f) => {
                    st.note(&Err(f), Duration::ZERO);
                    st.first_attempt_done(&mut connecting);
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                    continue;
                }
            },
        };
        let began = match st.cfg.mode {
            Mode::Closed { .. } => Instant::now(),
            Mode::Open { .. } => {
                let (start, interval) = st.schedule.get();
                if epoch != st.epoch.get() {
                    // Spread the VUs' first sends evenly over one interval.
                    epoch = st.epoch.get();
                    let frac = global as f64 / st.total_vus.get().max(1) as f64;
                    next_send = start + interval.mul_f64(frac.min(1.0));
                }
                let intended = next_send;
                next_send += interval;
                let now = Instant::now();
                if intended > now {
                    glommio::timer::sleep(intended - now).await;
                    if stop.get() {
                        break;
                    }
                } else if now - intended > Duration::from_millis(1) && st.measuring.get() {
                    st.record.borrow_mut().late_sends += 1;
                }
                intended
            }
        };
        // Closed loop: the send time is `began`; open loop: now (began is the intention).
        let now = match st.cfg.mode {
            Mode::Closed { .. } => began,
            Mode::Open { .. } => Instant::now(),
        };
        let mut result = st.exchange(&slot, c, target, is_head, now).await;
        if std::mem::take(&mut was_idle) && c.reused() && stale(&result) {
            // Closed by the server while the VU idled through a cool-down: not a failure
            // of this request. Reconnect (paced) and send it again, once.
            st.open_connections.set(st.open_connections.get() - 1);
            conn = None;
            glommio::timer::sleep(RECONNECT_BACKOFF).await;
            result = match st.open(dest, source) {
                Ok(fresh) => {
                    let fresh = conn.insert(fresh);
                    st.exchange(&slot, fresh, target, is_head, Instant::now())
                        .await
                }
                Err(f) => Err(f),
            };
        }
        st.first_attempt_done(&mut connecting);
        st.note(&result, began.elapsed());
        let reuse = matches!(&result, Ok(r) if r.keep_alive);
        if !reuse && conn.take().is_some() {
            st.open_connections.set(st.open_connections.get() - 1);
            if let Err(f) = result {
                if matches!(
                    f.class,
                    ErrorClass::ConnectRefused | ErrorClass::ConnectTimeout
                ) {
                    glommio::timer::sleep(RECONNECT_BACKOFF).await;
                }
            }
        }
        if let Mode::Closed { think } = st.cfg.mode {
            if !think.is_zero() {
                glommio::timer::sleep(think).await;
            }
        }
    }
    if conn.is_some() {
        st.open_connections.set(st.open_connections.get() - 1);
    }
    st.first_attempt_done(&mut connecting);
    st.live.set(st.live.get() - 1);
}
