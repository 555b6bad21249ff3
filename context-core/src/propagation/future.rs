//! Futures (and streams) that run in a context on every poll.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use crate::context::{Context, KeptContext};
use crate::current::{LastPoll, Poller};

pin_project! {
    /// A future (or stream) that runs in its own [`Context`] on every poll.
    ///
    /// Made by [`FutureExt::with_context`], [`FutureExt::in_current_context`] and the spawn
    /// helpers. What the inner
    /// future sets stays in the wrapper's context, across `.await`s and whichever thread
    /// polls it, and never reaches the code that polls it. The inner future is also
    /// dropped inside the context, so its `Drop` sees the same values as its body.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// # use contextvars::{Context, ContextVar, FutureExt, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let ctx = Context::new().with_value(&USER, "ann");
    /// let seen = async { USER.get() }.with_context(ctx).await;
    /// assert_eq!(seen, Some("ann"));
    /// assert_eq!(USER.get(), None);
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct WithContext<F> {
        #[pin]
        inner: Option<F>,
        // The context, with what the read cache knew of it when the last poll ended: the next
        // poll, if on the same thread, reads on from there.
        kept: KeptContext,
    }

    impl<F> PinnedDrop for WithContext<F> {
        #[inline]
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if this.inner.is_some() {
                drop_unfinished(&mut this.kept.context, this.inner);
            }
        }
    }
}

/// [`WithContext`]'s drop, where the inner future never finished (a future dropped while
/// pending, an aborted task): it is dropped inside the context, with the span and
/// OpenTelemetry's context the context carries. Out of line: a finished future, the usual
/// case, is gone already, and the drop of every task's future stays one test.
#[cold]
#[inline(never)]
fn drop_unfinished<F>(context: &mut Context, mut inner: Pin<&mut Option<F>>) {
    let _entered = context.enter();
    inner.set(None);
}

impl<F> WithContext<F> {
    pub(crate) fn new(inner: F, context: Context) -> Self {
        WithContext {
            inner: Some(inner),
            kept: KeptContext::new(context),
        }
    }

    /// [`new`](Self::new), for a future made inside its context, entered with
    /// [`KeptContext::enter_for_poll`] as if for a poll: `kept`'s record is what that left.
    #[cfg_attr(not(feature = "tower"), allow(dead_code))]
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(crate) fn polled_before(inner: F, kept: KeptContext) -> Self {
        WithContext {
            inner: Some(inner),
            kept,
        }
    }

    /// The context the inner future runs in, with what it has set so far.
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.kept.context
    }

    /// The context, to replace it before the first poll (what a scope does).
    pub(crate) fn context_mut(self: Pin<&mut Self>) -> &mut Context {
        let this = self.project();
        this.kept.last.forget();
        &mut this.kept.context
    }

    /// Takes the context out, leaving an empty one: how a finished task hands its context to
    /// its output.
    #[cfg(feature = "tokio")]
    pub(crate) fn take_context(self: Pin<&mut Self>) -> Context {
        let this = self.project();
        this.kept.last.forget();
        std::mem::take(&mut this.kept.context)
    }

    /// Polls the inner future (or stream) with the context entered, and drops it there as
    /// soon as `finished` says it is done, so that `Drop` has nothing left to do and need not
    /// enter the context a second time. What `gone` returns once the inner one is gone.
    ///
    /// `MAY_CARRY`: whether the context may carry a span or OpenTelemetry's context. Where it
    /// cannot (a task `spawn` started while nothing was carried anywhere), nothing is checked.
    // Always: with the branch for a context that carries a span, LLVM stopped inlining it
    // into the spawned task's poll (12 instructions a spawn).
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn poll_in_context<R, const MAY_CARRY: bool>(
        self: Pin<&mut Self>,
        poll: impl FnOnce(Pin<&mut F>) -> R,
        finished: impl FnOnce(&R) -> bool,
        gone: impl FnOnce() -> R,
    ) -> R {
        // A context that carries something never keeps a stamp from its last poll (see
        // `poll_carrying`), so the test of whether the stamp kept is still good, which every
        // poll makes anyway, is the only one a poll of a context that carries nothing pays:
        // only a poll without a good stamp (the first one, one on another thread) asks whether
        // the context carries anything. (Projected before anything is read: a shared borrow of
        // the whole wrapper would also cover the inner future, whose borrows of itself, an
        // `async` block holding a pinned future, it must leave alone.)
        let mut this = self.project();
        // Gone: nothing would run in the context. Asked before entering it, so that the poll
        // below knows the future is there and hands its output back as it is, not in an
        // `Option` to take apart after (a poll that reads: 6 instructions). Asked as the poll
        // asks, through `as_pin_mut`: a shared borrow of the whole `Option` would cover the
        // future's borrows of itself.
        if this.inner.as_mut().as_pin_mut().is_none() {
            return gone();
        }
        let kept = this.kept;
        let mut start = kept.last.start();
        if !start.is_good() {
            if MAY_CARRY && kept.context.carries() {
                return poll_carrying(
                    &mut kept.context,
                    &mut kept.last,
                    this.inner,
                    start.poller(),
                    poll,
                    finished,
                );
            }
            start = start.without_stamp();
        }
        debug_assert!(
            !kept.context.carries(),
            "a context that carries kept a stamp"
        );
        let output = {
            let _entered = kept.enter_for_poll(start);
            poll_inner(this.inner, poll, finished)
        };
        // Never `None`: the future was there when the poll began (`poll_inner` answers
        // `None` for a task's poll, which asks nothing first).
        output.unwrap_or_else(gone)
    }
}

/// [`WithContext::poll_in_context`] where the context carries a span or OpenTelemetry's
/// context: out of line, so that the poll of a context that carries neither stays as small as
/// it was. Entered the usual way, under no stamp, and none is kept for the next poll, which
/// then comes here again. The caller found the inner future there.
#[cold]
#[inline(never)]
fn poll_carrying<F, R>(
    context: &mut Context,
    last: &mut LastPoll,
    inner: Pin<&mut Option<F>>,
    poller: Poller,
    poll: impl FnOnce(Pin<&mut F>) -> R,
    finished: impl FnOnce(&R) -> bool,
) -> R {
    last.forget();
    let _entered = context.enter_for_poll_carrying(poller);
    poll_inner(inner, poll, finished).expect("the caller found the future there")
}

/// Polls `inner` (the context is entered) and drops it as soon as `finished` says it is done.
#[inline]
pub(crate) fn poll_inner<F, R>(
    mut inner: Pin<&mut Option<F>>,
    poll: impl FnOnce(Pin<&mut F>) -> R,
    finished: impl FnOnce(&R) -> bool,
) -> Option<R> {
    let output = poll(inner.as_mut().as_pin_mut()?);
    if finished(&output) {
        inner.set(None);
    }
    Some(output)
}

/// What polling a `WithContext` whose future is gone does.
#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("`WithContext` polled after it completed")
}

impl<F: Future> Future for WithContext<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        self.poll_in_context::<_, true>(
            |inner| inner.poll(cx),
            Poll::is_ready,
            || polled_after_completion(),
        )
    }
}

#[cfg(feature = "tokio")]
impl<F: Future> WithContext<F> {
    /// [`poll`](Future::poll), for a wrapper whose context carries nothing and never will: a
    /// task that `contextvars::spawn` started while nothing was carried anywhere (nothing can
    /// make a context carry something later). Asks nothing about what the context carries.
    #[inline]
    pub(crate) fn poll_uncarried(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<F::Output> {
        self.poll_in_context::<_, false>(
            |inner| inner.poll(cx),
            Poll::is_ready,
            || polled_after_completion(),
        )
    }
}

#[cfg(feature = "stream")]
impl<S: futures_core::Stream> futures_core::Stream for WithContext<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<S::Item>> {
        // An ended stream is dropped; polling on keeps saying it has ended.
        self.poll_in_context::<_, true>(
            |inner| inner.poll_next(cx),
            |item| matches!(item, Poll::Ready(None)),
            || Poll::Ready(None),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner
            .as_ref()
            .map_or((0, Some(0)), futures_core::Stream::size_hint)
    }
}

// `kept.last` is left out: what the read cache knew at the last poll, nothing a user reads.
#[allow(clippy::missing_fields_in_debug)]
impl<F: std::fmt::Debug> std::fmt::Debug for WithContext<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithContext")
            .field("inner", &self.inner)
            .field("context", &self.kept.context)
            .finish()
    }
}

/// Runs futures and streams in a context: `fut.with_context(ctx)`,
/// `fut.in_current_context()`.
///
/// Implemented for every type, like `tracing::Instrument`; the wrapper is a `Future` when
/// the inner type is one and a `Stream` when it is one (feature `stream`).
///
/// ```
/// # use context_core as contextvars;
/// # use contextvars::{ContextVar, FutureExt, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct TENANT {}
/// # impl Key for TENANT { type Value = u32; type Default = NoDefault; }
/// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
/// # tokio::runtime::Builder::new_multi_thread().build().unwrap().block_on(async {
/// let _token = TENANT.set(7);
/// // Plain `tokio::spawn`, carrying the spawner's context along.
/// let seen = tokio::spawn(async { TENANT.get() }.in_current_context()).await.unwrap();
/// assert_eq!(seen, Some(7));
/// # });
/// ```
pub trait FutureExt: Sized {
    /// Runs `self` in `context` on every poll; the inner future is dropped inside it too.
    /// What it sets stays in `context` and never reaches the caller.
    fn with_context(self, context: Context) -> WithContext<Self> {
        WithContext::new(self, context)
    }

    /// Runs `self` in a snapshot of the current context, taken now, at the call, not at the
    /// first poll: a future made here and spawned later still sees this context's values.
    fn in_current_context(self) -> WithContext<Self> {
        WithContext::new(self, Context::current())
    }
}

impl<T> FutureExt for T {}
