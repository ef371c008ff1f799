//! Read deadlines for every connection of a shard, enforced by one sweep per thread
//! instead of a timer per read.
//!
//! glommio's stream timeouts arm a timer (a `BTreeMap` insert, lookup and remove) for every
//! read that has to wait. Proxying a request waits on two reads, and with thousands of
//! connections those operations were a few percent of the request's CPU, growing with the
//! connection count. Here a waiting read only stores its deadline and waker in its
//! connection's [`Slot`]; one task per thread looks at every slot each [`TICK`] and wakes
//! the reads that are past their deadline, which then fail with `TimedOut`. A timeout can
//! fire up to one tick late, ample for timeouts of seconds; the socket is left as it was,
//! so a timed-out client can still be sent its 408.
//!
//! The slots live in a thread-local list: a shard is one thread and nothing here crosses
//! threads. The sweep starts with the first read that waits and ends when the thread has no
//! slots left.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

/// How often the sweep looks at the slots: the precision of every read timeout.
pub const TICK: Duration = Duration::from_millis(25);

/// What a connection's reads are waiting for, so that a drain can end some waits early
/// ([`cut`]) without a timer or a waker list of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WaitClass {
    #[default]
    Other,
    /// A client connection between requests (keep-alive idle).
    BetweenRequests,
    /// Either side of an upgraded connection (a tunnel).
    Tunnel,
}

/// One connection's read deadline.
#[derive(Default)]
pub struct Slot {
    deadline: Cell<Option<Instant>>,
    waker: RefCell<Option<Waker>>,
    fired: Cell<bool>,
    class: Cell<WaitClass>,
}

thread_local! {
    static SLOTS: RefCell<Vec<Weak<Slot>>> = const { RefCell::new(Vec::new()) };
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

impl Slot {
    /// A slot registered with this thread's sweep (it leaves when dropped).
    pub fn new() -> Rc<Slot> {
        let slot = Rc::new(Slot::default());
        SLOTS.with(|s| s.borrow_mut().push(Rc::downgrade(&slot)));
        slot
    }

    /// A read is waiting: the first wait of a read sets its deadline, `timeout` from now;
    /// later waits keep it and only update the waker.
    pub fn arm(&self, timeout: Duration, waker: &Waker) {
        if self.deadline.get().is_none() {
            self.deadline.set(Some(Instant::now() + timeout));
            if !SWEEPING.with(|s| s.replace(true)) {
                // The guard exists before the task first runs, so even a sweep dropped
                // unpolled (its executor stopping) clears the flag.
                let running = Sweeping;
                glommio::spawn_local(async move {
                    let _running = running;
                    sweep().await
                })
                .detach();
            }
        }
        let mut w = self.waker.borrow_mut();
        if !w.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }

    pub fn set_class(&self, class: WaitClass) {
        self.class.set(class);
    }

    /// Whether the sweep found the read in progress past its deadline.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// The read ended (or was dropped): clear it. The waker goes too, since it keeps the
    /// task that owns this slot alive.
    pub fn disarm(&self) {
        self.deadline.set(None);
        self.fired.set(false);
        self.waker.take();
    }
}

/// Disarms a slot when the read that armed it ends, including a read future that is
/// dropped while waiting (e.g. the losing side of a race).
pub struct Armed<'a>(pub &'a Slot);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// Marks the sweep stopped however it ends, including being dropped with its executor, so
/// that a later executor on this thread starts its own.
struct Sweeping;

impl Drop for Sweeping {
    fn drop(&mut self) {
        let _ = SWEEPING.try_with(|s| s.set(false));
    }
}

/// Brings the deadline of every read of `class` waiting now forward to `at` at the latest;
/// the sweep then ends them with `TimedOut` as usual. One pass over the thread's slots, for
/// a drain (keep-alive waits close soon, tunnels end at the drain deadline).
pub fn cut(class: WaitClass, at: Instant) {
    SLOTS.with(|s| {
        for slot in s.borrow().iter().filter_map(Weak::upgrade) {
            if slot.class.get() == class && slot.deadline.get().is_some_and(|d| d > at) {
                slot.deadline.set(Some(at));
            }
        }
    });
}

/// Drops the wakers of reads still waiting. A waiting read's slot holds its own task's
/// waker, so a task parked on a read when its executor stops would keep itself (and its
/// socket) alive: a shard calls this at the end of its run.
pub fn release_wakers() {
    let wakers: Vec<Waker> = SLOTS.with(|s| {
        s.borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|slot| slot.waker.take())
            .collect()
    });
    drop(wakers);
}

async fn sweep() {
    loop {
        glommio::timer::sleep(TICK).await;
        let now = Instant::now();
        let mut due = Vec::new();
        let idle = SLOTS.with(|s| {
            let mut slots = s.borrow_mut();
            slots.retain(|w| {
                let Some(slot) = w.upgrade() else {
                    return false;
                };
                if slot.deadline.get().is_some_and(|d| d <= now) {
                    slot.deadline.set(None);
                    slot.fired.set(true);
                    due.extend(slot.waker.take());
                }
                true
            });
            slots.is_empty()
        });
        // Woken outside the borrow of the list: a woken task may register a slot.
        for w in due {
            w.wake();
        }
        if idle {
            return;
        }
    }
}
