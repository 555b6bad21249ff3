//! Workloads where services spend their time, shared by `futures.rs`, `context.rs` and
//! `instructions.rs`: a gather of sleeping futures (alone, and with 4 permits shared by the
//! branches) beside `futures::future::join_all`, and a metadata map filled key by key.
//!
//! The sleepers sleep on a clock the driver turns by hand, one tick per poll of the whole
//! future, so that a run is the same every time (no timer, no runtime): what is measured is
//! the combinator's own work, polls and wakes.

#![allow(dead_code)] // each bench target uses part of it

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use contextvars::Context;
use contextvars::metadata::set_metadata;

/// How many futures a gather runs.
pub(crate) const BRANCHES: usize = 10_000;
/// Over how many ticks the plain sleepers wake.
pub(crate) const SLEEP_TICKS: u64 = 40;
/// How many branches hold a permit at once in the permit workload.
pub(crate) const PERMITS: usize = 4;

/// A clock turned by hand, and the wakers of what sleeps on it.
#[derive(Default)]
pub(crate) struct Clock {
    now: Cell<u64>,
    /// The wakers due at `now + 1`, `now + 2`, ...
    due: RefCell<VecDeque<Vec<Waker>>>,
}

impl Clock {
    /// Advances one tick and wakes what was due.
    fn tick(&self) {
        self.now.set(self.now.get() + 1);
        let due = self.due.borrow_mut().pop_front();
        for waker in due.into_iter().flatten() {
            waker.wake();
        }
    }

    /// Sleeps `ticks` ticks from the first poll.
    fn sleep(self: &Rc<Self>, ticks: u64) -> Sleep {
        Sleep {
            clock: Rc::clone(self),
            ticks,
            deadline: None,
        }
    }
}

struct Sleep {
    clock: Rc<Clock>,
    ticks: u64,
    deadline: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let now = self.clock.now.get();
        let ticks = self.ticks;
        let deadline = *self.deadline.get_or_insert(now + ticks);
        if now >= deadline {
            return Poll::Ready(());
        }
        let ahead = usize::try_from(deadline - now - 1).expect("a small number of ticks");
        let mut due = self.clock.due.borrow_mut();
        if due.len() <= ahead {
            due.resize_with(ahead + 1, Vec::new);
        }
        due[ahead].push(cx.waker().clone());
        Poll::Pending
    }
}

/// Polls `future` to its end, advancing `clock` one tick after each poll that is pending.
fn drive<F: Future>(clock: &Clock, future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = TaskContext::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        clock.tick();
    }
}

/// Which combinator runs the branches.
#[derive(Clone, Copy)]
pub(crate) enum Combinator {
    /// `contextvars::gather`: a context per branch.
    Gather,
    /// `futures::future::join_all`: the branches share the caller's context.
    JoinAll,
}

fn run_all<F: Future>(combinator: Combinator, clock: &Clock, branches: Vec<F>) -> usize {
    match combinator {
        Combinator::Gather => drive(clock, contextvars::gather(branches)).len(),
        Combinator::JoinAll => drive(clock, futures_util::future::join_all(branches)).len(),
    }
}

/// `BRANCHES` futures, each sleeping 1 to `SLEEP_TICKS` ticks, run to the end.
pub(crate) fn sleepers(combinator: Combinator) -> usize {
    let clock = Rc::new(Clock::default());
    let branches = (0..BRANCHES as u64)
        .map(|i| {
            let sleep = clock.sleep(1 + i % SLEEP_TICKS);
            async move {
                sleep.await;
                black_box(i)
            }
        })
        .collect();
    run_all(combinator, &clock, branches)
}

/// `BRANCHES` futures sharing `PERMITS` permits: each takes one, sleeps a tick, and gives it
/// back.
pub(crate) fn permits(combinator: Combinator) -> usize {
    let clock = Rc::new(Clock::default());
    let permits = Rc::new(tokio::sync::Semaphore::new(PERMITS));
    let branches = (0..BRANCHES as u64)
        .map(|i| {
            let (clock, permits) = (Rc::clone(&clock), Rc::clone(&permits));
            async move {
                let _permit = permits.acquire().await.expect("never closed");
                clock.sleep(1).await;
                black_box(i)
            }
        })
        .collect();
    run_all(combinator, &clock, branches)
}

/// `n` distinct metadata keys, in an order that is not sorted.
#[must_use]
pub(crate) fn metadata_keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("field-{}", (i * 7_919) % n))
        .collect()
}

/// Sets every key of `keys`, one by one, in a new context; the context is dropped after.
pub(crate) fn fill_metadata(keys: &[String]) {
    Context::new().run(|| {
        for key in keys {
            set_metadata(key.as_str(), "value");
        }
    });
}

/// The same keys inserted one by one into the standard library's `BTreeMap`, mutated in place
/// and holding each key and value in its own `Arc<str>` as the metadata does: the peer that
/// shows what a sorted map's set costs at each size on this machine.
pub(crate) fn fill_std_btreemap(keys: &[String]) {
    let mut map = std::collections::BTreeMap::new();
    for key in keys {
        map.insert(
            std::sync::Arc::<str>::from(key.as_str()),
            std::sync::Arc::<str>::from("value"),
        );
    }
    black_box(map);
}
