//! Spawning tokio tasks that inherit the spawner's context.
//!
//! Each helper snapshots the caller's context at the call, as asyncio's `create_task` does:
//! later sets by the caller are invisible to the task, and the task's sets are invisible to
//! the caller.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
use tokio::task::{AbortHandle, Id, JoinError};

use crate::carried;
#[cfg(feature = "tracing")]
use crate::carried::TaskSpan;
use crate::context::Context;
use crate::current;
use crate::future::{FutureExt, WithContext, poll_inner};
use crate::map::Map;

/// [`tokio::spawn`] in a snapshot of the caller's context, taken at the call.
///
/// # Panics
/// As [`tokio::spawn`]: when called outside a tokio runtime.
///
/// [`tokio::spawn`]: https://docs.rs/tokio/1/tokio/fn.spawn.html
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = USER.set("ann");
/// let child = contextvars::spawn(async {
///     let _ = USER.set("bob"); // stays in the child
///     USER.get()
/// });
/// let _later = USER.set("cid"); // too late for the child's snapshot
/// assert_eq!(child.await.unwrap(), Some("bob"));
/// assert_eq!(USER.get(), Some("cid"));
/// # });
/// ```
#[track_caller]
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let bindings = current::snapshot();
    if carried::any() {
        return spawn_carrying(future, bindings);
    }
    // Nothing was ever carried: the task's context carries nothing, and never will. Its
    // future is a type of its own (`Finishing<_, CarriesNothing>`), which the carrying spawn never
    // makes: this stays the one call of its `tokio::spawn`, which LLVM then inlines here.
    let context = Context::from_map(bindings);
    JoinHandle {
        inner: tokio::spawn(Finishing::<F, CarriesNothing> {
            inner: future.with_context(context),
            carries: PhantomData,
        }),
    }
}

/// [`spawn`] where something is carried: `bindings`, the snapshot, carry what is current here,
/// or the task carries the span itself ([`TaskSpan`]). Its tasks' futures are other types than
/// [`spawn`]'s own, so that its `tokio::spawn` calls are other functions.
#[cold]
#[inline(never)]
#[track_caller]
fn spawn_carrying<F>(future: F, bindings: Map) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    #[cfg(feature = "tracing")]
    if let Some(span) = TaskSpan::for_spawn(&bindings) {
        return JoinHandle {
            inner: tokio::spawn(InSpan {
                span,
                context: Context::from_map(bindings),
                inner: Some(future),
            }),
        };
    }
    let context = Context::carrying(bindings);
    if context.carries() {
        // A task whose context carries something (its spawner's span, where the spawner's
        // context carries that span already) keeps no read-cache stamp between polls: no
        // `WithContext`, whose record of it would make the task larger for nothing.
        return JoinHandle {
            inner: tokio::spawn(Carrying {
                context,
                inner: Some(future),
            }),
        };
    }
    JoinHandle {
        inner: tokio::spawn(finish_in_context(future.with_context(context))),
    }
}

/// [`tokio::task::spawn_blocking`] with `f` running in a snapshot of the caller's context.
///
/// # Panics
/// As [`tokio::task::spawn_blocking`]: when called outside a tokio runtime.
///
/// [`tokio::task::spawn_blocking`]: https://docs.rs/tokio/1/tokio/task/fn.spawn_blocking.html
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = USER.set("ann");
/// let seen = contextvars::spawn_blocking(|| USER.get()).await.unwrap();
/// assert_eq!(seen, Some("ann"));
/// # });
/// ```
#[track_caller]
pub fn spawn_blocking<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let mut context = Context::current();
    JoinHandle {
        inner: tokio::task::spawn_blocking(move || {
            let output = context.run(f);
            // The values go inside the task: a panic of a value's `Drop` is the task's.
            drop(context);
            Finished::new(output)
        }),
    }
}

/// [`tokio::task::spawn_local`] in a snapshot of the caller's context, taken at the call.
///
/// # Panics
/// As [`tokio::task::spawn_local`]: when called outside a `LocalSet` (or a local runtime).
///
/// [`tokio::task::spawn_local`]: https://docs.rs/tokio/1/tokio/task/fn.spawn_local.html
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let local = tokio::task::LocalSet::new();
/// local.block_on(&rt, async {
///     let _token = USER.set("ann");
///     let seen = contextvars::spawn_local(async { USER.get() }).await.unwrap();
///     assert_eq!(seen, Some("ann"));
/// });
/// ```
#[track_caller]
pub fn spawn_local<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    JoinHandle {
        inner: tokio::task::spawn_local(finish_in_context(future.in_current_context())),
    }
}

/// Runs `future` in its context, and drops that context's values inside the task when it
/// finishes, before its output is handed over: a panic of a value's `Drop` is then a panic
/// of the task, which its `JoinHandle` reports as it does a panic of its body.
fn finish_in_context<F: Future>(future: WithContext<F>) -> Finishing<F, MayCarry> {
    Finishing {
        inner: future,
        carries: PhantomData,
    }
}

/// Whether the context of a [`Finishing`] task may carry a span or OpenTelemetry's context.
trait Carries {
    const MAY_CARRY: bool;
}

/// It may: the task's polls check.
struct MayCarry;

/// It carries nothing, and never will: [`spawn`]'s tasks started while nothing was carried
/// anywhere (nothing makes a context carry something later). Their polls check nothing.
struct CarriesNothing;

impl Carries for MayCarry {
    const MAY_CARRY: bool = true;
}

impl Carries for CarriesNothing {
    const MAY_CARRY: bool = false;
}

pin_project! {
    /// A spawned task's future: [`finish_in_context`], written out by hand (one poll layer
    /// less than an `async fn`). `C` says whether its context may carry anything.
    struct Finishing<F, C> {
        #[pin]
        inner: WithContext<F>,
        carries: PhantomData<C>,
    }
}

#[cfg(feature = "tracing")]
pin_project! {
    /// A spawned task that carries its span itself ([`TaskSpan`]): [`Finishing`] with the
    /// span entered around each poll, and around the drop of a task that never finished, as
    /// `Instrumented` does. The future and its context are held here, not in a
    /// [`WithContext`], which would leave one more layer to poll and to drop.
    struct InSpan<F> {
        span: TaskSpan,
        // Carries nothing: the span is carried here instead (see `spawn_carrying`), and
        // writes never make bindings carry anything.
        context: Context,
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for InSpan<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                let _span = this.span.enter();
                {
                    let _entered = this.context.enter_bindings();
                    this.inner.set(None);
                }
                drop(std::mem::take(this.context));
            }
        }
    }
}

pin_project! {
    /// A spawned task whose context carries a span or OpenTelemetry's context: [`Finishing`]
    /// with the context entered the way `Context::run` enters it (what it carries first),
    /// and without the read cache's record of the last poll, which such a context never
    /// keeps. As [`InSpan`], the future and its context are held here.
    struct Carrying<F> {
        context: Context,
        #[pin]
        inner: Option<F>,
    }

    impl<F> PinnedDrop for Carrying<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                {
                    let _entered = this.context.enter();
                    this.inner.set(None);
                }
                drop(std::mem::take(this.context));
            }
        }
    }
}

/// Polls a task's future, with its context entered by the caller, and drops it there as soon
/// as it is done, as `WithContext` does.
#[inline]
fn poll_task<F: Future>(inner: Pin<&mut Option<F>>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
    poll_inner(inner, |inner| inner.poll(cx), Poll::is_ready)
        .expect("a task is not polled after it completed")
}

/// What a task's poll hands over: once its future is done, the context's values go inside the
/// task (as in `Finishing`), before the output.
#[inline]
fn finish<T>(context: &mut Context, output: Poll<T>) -> Poll<Finished<T>> {
    output.map(|output| {
        drop(std::mem::take(context));
        Finished::new(output)
    })
}

impl<F: Future> Future for Carrying<F> {
    type Output = Finished<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = {
            let _entered = this.context.enter();
            poll_task(this.inner, cx)
        };
        finish(this.context, output)
    }
}

#[cfg(feature = "tracing")]
impl<F: Future> Future for InSpan<F> {
    type Output = Finished<F::Output>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _span = this.span.enter();
        let output = {
            let _entered = this.context.enter_bindings();
            poll_task(this.inner, cx)
        };
        // Still in the span: the context's values go inside it.
        finish(this.context, output)
    }
}

impl<F: Future, C: Carries> Future for Finishing<F, C> {
    type Output = Finished<F::Output>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let output = if C::MAY_CARRY {
            inner.as_mut().poll(cx)
        } else {
            inner.as_mut().poll_uncarried(cx)
        };
        match output {
            Poll::Ready(output) => {
                // Should a value's `Drop` panic, the output goes with the task's future.
                drop(inner.take_context());
                Poll::Ready(Finished::new(output))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A finished task's output. If nobody takes it (the handle was dropped), it is dropped inside
/// an empty context of its own, wherever tokio drops it: its `Drop` reads no task's values,
/// and what it sets goes nowhere.
struct Finished<T> {
    output: Option<T>,
}

impl<T> Finished<T> {
    fn new(output: T) -> Self {
        Finished {
            output: Some(output),
        }
    }

    #[inline]
    fn into_output(mut self) -> T {
        let output = self.output.take();
        // Nothing left for `Drop` to do: skip the call.
        std::mem::forget(self);
        output.expect("a finished task's output is taken once")
    }
}

impl<T> Drop for Finished<T> {
    /// Inlined: the output is nearly always taken, and this is then one compare.
    #[inline]
    fn drop(&mut self) {
        if let Some(output) = self.output.take() {
            drop_unclaimed(output);
        }
    }
}

/// Drops the output nobody took, inside an empty context of its own.
#[inline(never)]
fn drop_unclaimed<T>(output: T) {
    Context::new().run(|| drop(output));
}

/// An owned permission to await a task spawned by [`spawn`], [`spawn_blocking`] or
/// [`spawn_local`]: tokio's [`JoinHandle`][tokio-join-handle], with the same methods.
///
/// Awaiting it gives the task's output, or a [`JoinError`][join-error] if the task panicked
/// or was aborted. Dropping it detaches the task, which runs on.
///
/// **Where the task's values are dropped.** When the task finishes, the values of its
/// context are dropped inside the task, before its output is handed over, so their `Drop`
/// reads and sets the task's own variables. A value whose `Drop` panics makes the task's
/// handle give a panic [`JoinError`][join-error], as a panic in the task's body does; the
/// other values are still dropped, inside the task. The output is an ordinary value from then
/// on: awaited, it belongs to the awaiting code; when the handle is dropped without being
/// awaited, it is dropped inside an empty context of its own, wherever tokio drops it (in the
/// code that drops the handle, or on a worker after the task's last poll): its `Drop` reads no
/// task's values, and what it sets goes nowhere.
///
/// [tokio-join-handle]: https://docs.rs/tokio/1/tokio/task/struct.JoinHandle.html
/// [join-error]: https://docs.rs/tokio/1/tokio/task/struct.JoinError.html
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = USER.set("ann");
/// let handle = contextvars::spawn(async { USER.get() });
/// println!("task {} spawned", handle.id());
/// assert_eq!(handle.await.unwrap(), Some("ann"));
/// # });
/// ```
pub struct JoinHandle<T> {
    inner: tokio::task::JoinHandle<Finished<T>>,
}

impl<T> JoinHandle<T> {
    /// Aborts the task, as tokio's `JoinHandle::abort`: awaiting the handle then gives
    /// a cancelled [`JoinError`](https://docs.rs/tokio/1/tokio/task/struct.JoinError.html), unless the task
    /// finished first. The task's future is dropped
    /// inside its context.
    pub fn abort(&self) {
        self.inner.abort();
    }

    /// Whether the task has finished (completed, panicked or been aborted).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }

    /// A handle that can abort the task without owning its output.
    #[must_use]
    pub fn abort_handle(&self) -> AbortHandle {
        self.inner.abort_handle()
    }

    /// The task's id, as tokio's `JoinHandle::id`.
    #[must_use]
    pub fn id(&self) -> Id {
        self.inner.id()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.inner)
            .poll(cx)
            .map(|result| result.map(Finished::into_output))
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}
