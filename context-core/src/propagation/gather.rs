//! Gathering futures that run concurrently inside one task, each in its own context.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

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
    Gather {
        branches: futures
            .into_iter()
            .map(|future| Branch::Running(Box::pin(future.into_future().in_current_context())))
            .collect(),
    }
}

/// The future of [`gather`]: the outputs of every branch, in order.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct Gather<F: Future> {
    branches: Vec<Branch<F>>,
}

enum Branch<F: Future> {
    Running(Pin<Box<WithContext<F>>>),
    Done(Option<F::Output>),
}

// The branches are boxed and the outputs are moved freely: nothing in a `Gather` is pinned.
impl<F: Future> Unpin for Gather<F> {}

impl<F: Future> Future for Gather<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Vec<F::Output>> {
        let mut pending = false;
        for branch in &mut self.branches {
            if let Branch::Running(future) = branch {
                match future.as_mut().poll(cx) {
                    Poll::Ready(output) => *branch = Branch::Done(Some(output)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(
            self.branches
                .iter_mut()
                .map(|branch| match branch {
                    Branch::Done(output) => {
                        output.take().expect("`Gather` polled after it completed")
                    }
                    Branch::Running(_) => unreachable!("every branch has finished"),
                })
                .collect(),
        )
    }
}

impl<F: Future> fmt::Debug for Gather<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let running = self
            .branches
            .iter()
            .filter(|branch| matches!(branch, Branch::Running(_)))
            .count();
        f.debug_struct("Gather")
            .field("branches", &self.branches.len())
            .field("running", &running)
            .finish()
    }
}
