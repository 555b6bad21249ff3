//! Gathering futures that run concurrently inside one task, each in its own context.

mod ready;

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};

use self::ready::ReadyQueue;

use crate::future::{FutureExt, WithContext};

/// Runs `futures` concurrently inside the calling task, each in its own copy of the current
/// context (taken now), and resolves to their outputs in the order given: Python's
/// `asyncio.gather`, `futures::future::join_all` with a context per branch.
///
/// The branches of `tokio::join!`, `select!` or a `FuturesUnordered` are polled by one task
/// and so share its context: what one branch sets, the others read. `gather` gives each
/// branch a context of its own instead, so a branch's sets (and scope guards) never reach
/// another branch or the caller.
///
/// Each branch is polled when it is woken, and only then: a wake of one branch polls that
/// branch alone, however many others are waiting (as `FuturesUnordered` does). Every poll of a
/// branch runs in the branch's own context, and a branch is dropped in it too, whether it
/// finished, the gather was dropped before the end, or a branch panicked. Inside a tokio task,
/// once the task has used up its cooperative-scheduling budget, the branches still to poll
/// wait for the task's next poll.
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = u32; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let _token = USER.set(0);
/// let seen = contextvars::gather((1..=3).map(|user| async move {
///     let _ = USER.set(user);
///     tokio::task::yield_now().await; // the other branches run and set theirs
///     USER.get()
/// }))
/// .await;
/// assert_eq!(seen, [Some(1), Some(2), Some(3)]);
/// assert_eq!(USER.get(), Some(0));
/// # });
/// ```
pub fn gather<I>(futures: I) -> Gather<<I::Item as IntoFuture>::IntoFuture>
where
    I: IntoIterator,
    I::Item: IntoFuture,
{
    let futures: Vec<_> = futures
        .into_iter()
        .map(|future| Box::pin(future.into_future().in_current_context()))
        .collect();
    let ready = ReadyQueue::new(futures.len());
    let branches = futures
        .into_iter()
        .enumerate()
        .map(|(index, future)| Branch::Running {
            future,
            waker: ready.waker(index),
        })
        .collect::<Vec<_>>();
    Gather {
        running: branches.len(),
        due: (0..branches.len()).collect(),
        branches,
        ready,
    }
}

/// The future of [`gather`]: the outputs of every branch, in order.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Gather<F: Future> {
    branches: Vec<Branch<F>>,
    /// Branches to poll, woken and not polled since: every branch at the start.
    due: VecDeque<usize>,
    ready: Arc<ReadyQueue>,
    /// How many branches have not finished.
    running: usize,
}

enum Branch<F: Future> {
    Running {
        future: Pin<Box<WithContext<F>>>,
        /// Wakes this branch alone (and, through it, the gather's task).
        waker: Waker,
    },
    Done(Option<F::Output>),
}

// The branches are boxed and the outputs are moved freely: nothing in a `Gather` is pinned.
impl<F: Future> Unpin for Gather<F> {}

impl<F: Future> Future for Gather<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Vec<F::Output>> {
        let this = &mut *self;
        // The branches woken since the last poll join those still due; a branch woken while
        // this poll runs waits for the next one, so that one poll polls each branch once.
        this.ready.take_woken(cx.waker(), &mut this.due);
        let mut polled = false;
        while let Some(&index) = this.due.front() {
            // Once the task has used up its tokio budget, a branch would only be told to wait
            // (and polled again for nothing): the rest wait for the next poll of the task.
            if polled && out_of_budget() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.due.pop_front();
            let Branch::Running { future, waker } = &mut this.branches[index] else {
                continue;
            };
            polled = true;
            this.ready.polling(index);
            if let Poll::Ready(output) = future.as_mut().poll(&mut TaskContext::from_waker(waker)) {
                this.ready.finished(index);
                // The branch's future is already gone, dropped in its context as it finished.
                this.branches[index] = Branch::Done(Some(output));
                this.running -= 1;
            }
        }
        if this.running > 0 {
            return Poll::Pending;
        }
        Poll::Ready(
            this.branches
                .iter_mut()
                .map(|branch| match branch {
                    Branch::Done(output) => {
                        output.take().expect("`Gather` polled after it completed")
                    }
                    Branch::Running { .. } => unreachable!("every branch has finished"),
                })
                .collect(),
        )
    }
}

/// Whether the task polling us has used up its budget of tokio's cooperative scheduling.
fn out_of_budget() -> bool {
    #[cfg(feature = "tokio")]
    return !tokio::task::coop::has_budget_remaining();
    #[cfg(not(feature = "tokio"))]
    false
}

impl<F: Future> fmt::Debug for Gather<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gather")
            .field("branches", &self.branches.len())
            .field("running", &self.running)
            .field("due", &self.due.len())
            .finish_non_exhaustive()
    }
}
