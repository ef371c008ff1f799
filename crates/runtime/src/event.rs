//! A one-shot, shard-local event: tasks wait on it, one call fires it for all.
//! Single-threaded by construction (`Rc`/`Cell`), like everything a shard owns.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Event {
    fired: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl Event {
    pub fn fire(&self) {
        self.fired.set(true);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once [`Event::fire`] has been called.
    pub fn wait(&self) -> Wait<'_> {
        Wait { event: self }
    }
}

pub struct Wait<'a> {
    event: &'a Event,
}

impl Future for Wait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.fired.get() {
            return Poll::Ready(());
        }
        let mut wakers = self.event.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
