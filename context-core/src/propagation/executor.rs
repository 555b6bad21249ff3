//! Running a closure on any thread pool or executor in a snapshot of the caller's context,
//! and awaiting its result: Python's `loop.run_in_executor(pool, copy_context().run, f)`.
//!
//! The pool is reached through one function that submits a boxed job (`|job|
//! pool.execute(job)`, `|job| rayon::spawn(job)`, `|job| { std::thread::spawn(job); }`), so
//! any pool works without this crate knowing it. The result comes back through a one-shot
//! slot (a mutex and a waker), so the returned future works on any async runtime.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};

use crate::context::{Context, DropContained};

/// A job for an executor: a boxed closure to call once, on any thread.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs `f` on an executor in a snapshot of the caller's context, taken at the call, and
/// returns a future of its result.
///
/// `submit` is called at once, on the caller's thread, with the job to run: hand it to the
/// pool (`|job| pool.execute(job)`). The job runs `f` in a copy of the caller's context, as
/// [`Context::wrap`] does: `f` sees the caller's values, and what it sets stays in the job
/// (neither the caller nor the next job on that worker sees it).
///
/// The future resolves to `f`'s result, or to a [`JobError`]:
///
/// - where `f` panics, the panic is caught on the pool's thread (the worker lives on) and
///   the future resolves to an error that [`is_panic`](JobError::is_panic); re-raise it in
///   the caller with `std::panic::resume_unwind(err.into_panic())`;
/// - where the executor drops the job without running it (its queue is shut down, or
///   `submit` drops it), the future resolves to an error that
///   [`is_dropped`](JobError::is_dropped), instead of waiting forever.
///
/// Dropping the future does not cancel the job: it runs all the same, and its result is
/// dropped on the pool's thread (as with a detached `JoinHandle`). The future needs no
/// particular async runtime.
///
/// # Panics
/// Where `submit` panics: the panic reaches the caller, and the job, dropped while
/// unwinding, never runs.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct REQUEST_ID {}
/// # impl Key for REQUEST_ID { type Value = u64; type Default = NoDefault; }
/// # static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
/// use std::sync::mpsc;
///
/// // A pool of one worker thread: anything that takes a boxed `FnOnce` will do.
/// let (queue, jobs) = mpsc::channel::<contextvars::Job>();
/// std::thread::spawn(move || jobs.into_iter().for_each(|job| job()));
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let _request = REQUEST_ID.scoped(7);
/// let seen = contextvars::run_in_executor(
///     |job| queue.send(job).unwrap(),
///     || REQUEST_ID.get(), // runs on the worker, in a copy of this context
/// );
/// assert_eq!(seen.await.unwrap(), Some(7));
///
/// // A job the executor drops gives an error, not a future that never resolves.
/// let dropped = contextvars::run_in_executor(drop, || 1);
/// assert!(dropped.await.unwrap_err().is_dropped());
/// # });
/// ```
pub fn run_in_executor<F, R>(submit: impl FnOnce(Job), f: F) -> RunInExecutor<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Waiting(None)),
    });
    let sender = Sender(Some(Arc::clone(&slot)));
    // A job its executor drops unrun (a queue shut down) may hold the last reference to the
    // context's values, whose task has ended: their `Drop` panics stay in the job.
    let work = DropContained::new(Context::current().run_later(f));
    submit(Box::new(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(work.into_inner()));
        sender.send(outcome.map_err(|payload| JobError(Failure::Panicked(payload))));
    }));
    RunInExecutor { slot }
}

/// The future of [`run_in_executor`]: resolves to the job's result, or to a [`JobError`]
/// where the job panicked or was dropped without running.
#[must_use = "the job runs anyway; await this future to get its result"]
pub struct RunInExecutor<R> {
    slot: Arc<Slot<R>>,
}

impl<R> Future for RunInExecutor<R> {
    type Output = Result<R, JobError>;

    /// # Panics
    /// When polled again after it returned `Ready`.
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut state = self.slot.lock();
        match mem::replace(&mut *state, State::Taken) {
            State::Done(outcome) => Poll::Ready(outcome),
            State::Waiting(waker) => {
                let waker = match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => waker,
                    _ => cx.waker().clone(),
                };
                *state = State::Waiting(Some(waker));
                Poll::Pending
            }
            State::Taken => panic!("`RunInExecutor` polled after it returned `Ready`"),
        }
    }
}

impl<R> fmt::Debug for RunInExecutor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &*self.slot.lock() {
            State::Waiting(_) => "waiting",
            State::Done(_) => "done",
            State::Taken => "taken",
        };
        f.debug_struct("RunInExecutor")
            .field("state", &state)
            .finish()
    }
}

/// Why a [`run_in_executor`] job gave no result: it panicked, or the executor dropped it
/// without running it.
pub struct JobError(Failure);

enum Failure {
    Dropped,
    Panicked(Box<dyn Any + Send + 'static>),
}

impl JobError {
    /// Whether the job panicked.
    #[must_use]
    pub fn is_panic(&self) -> bool {
        matches!(self.0, Failure::Panicked(_))
    }

    /// Whether the executor dropped the job without running it.
    #[must_use]
    pub fn is_dropped(&self) -> bool {
        matches!(self.0, Failure::Dropped)
    }

    /// The panic's payload, for `std::panic::resume_unwind`, or this error where the job
    /// did not panic.
    ///
    /// # Errors
    /// `self`, where the job was dropped without running.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send + 'static>, JobError> {
        match self.0 {
            Failure::Panicked(payload) => Ok(payload),
            Failure::Dropped => Err(self),
        }
    }

    /// The panic's payload, for `std::panic::resume_unwind`.
    ///
    /// # Panics
    /// Where the job did not panic (it was dropped): check [`is_panic`](Self::is_panic)
    /// first, or use [`try_into_panic`](Self::try_into_panic).
    #[must_use]
    #[track_caller]
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.try_into_panic()
            .expect("`JobError::into_panic` on a job that did not panic but was dropped")
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Failure::Dropped => f.write_str(
                "the executor dropped the job without running it (is the pool shut down?)",
            ),
            Failure::Panicked(payload) => match panic_message(payload.as_ref()) {
                Some(message) => write!(f, "the job panicked: {message}"),
                None => f.write_str("the job panicked"),
            },
        }
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Failure::Dropped => f.write_str("JobError::Dropped"),
            Failure::Panicked(payload) => f
                .debug_tuple("JobError::Panicked")
                .field(&panic_message(payload.as_ref()).unwrap_or(".."))
                .finish(),
        }
    }
}

impl std::error::Error for JobError {}

/// The message of a panic made with a string, as `panic!` makes them.
fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// Where the job's outcome waits for the future.
struct Slot<R> {
    state: Mutex<State<R>>,
}

enum State<R> {
    /// No outcome yet; the waker of the last poll.
    Waiting(Option<Waker>),
    Done(Result<R, JobError>),
    /// The future has returned the outcome.
    Taken,
}

impl<R> Slot<R> {
    /// No code panics while holding the lock, but a waker may: a poisoned lock still holds
    /// a consistent state.
    fn lock(&self) -> MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn complete(&self, outcome: Result<R, JobError>) {
        let waiting = mem::replace(&mut *self.lock(), State::Done(outcome));
        // Wake after the lock is released: the poll it causes takes the lock again.
        if let State::Waiting(Some(waker)) = waiting {
            waker.wake();
        }
    }
}

/// The job's end of the slot. Dropped without sending (the job was dropped unrun), it
/// completes the future with an error, so that nobody waits forever.
struct Sender<R>(Option<Arc<Slot<R>>>);

impl<R> Sender<R> {
    fn send(mut self, outcome: Result<R, JobError>) {
        if let Some(slot) = self.0.take() {
            slot.complete(outcome);
        }
    }
}

impl<R> Drop for Sender<R> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.complete(Err(JobError(Failure::Dropped)));
        }
    }
}
