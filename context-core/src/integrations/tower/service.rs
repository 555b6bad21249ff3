//! The service a `ContextLayer` makes, and its response future: a request's `call`, every
//! poll of its future and the future's drop run in the request's context (which starts where
//! `nested.rs` says).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::body::{KeepResponse, WrapResponse};
use super::hooks::{NoHook, OnRequest};
use super::nested::{marked, request_context};
use crate::context::{Context, KeptContext};
use crate::future::{FutureExt, WithContext};

/// The service made by [`ContextLayer`](super::ContextLayer): runs each request in a fresh copy of
/// the base context.
///
/// `poll_ready` runs in a copy of the base context too (so that readiness code may read
/// app-wide values), and nothing it sets is kept.
///
/// ```
/// # use context_core as contextvars;
/// use std::convert::Infallible;
/// use std::future::{Ready, ready};
/// use std::task::{Context as TaskContext, Poll};
///
/// use contextvars::tower::{ContextLayer, ContextService};
/// use contextvars::{ContextVar, Key, WithDefault};
/// use tower_layer::Layer;
/// use tower_service::Service;
/// # #[allow(non_camel_case_types)] struct HITS {}
/// # impl Key for HITS { type Value = u32; type Default = WithDefault; }
/// static HITS: ContextVar<HITS> = ContextVar::with_default("hits", || 0);
///
/// /// Counts hits in its context; `call` does the work, not the future.
/// #[derive(Clone)]
/// struct Counter;
///
/// impl Service<()> for Counter {
///     type Response = u32;
///     type Error = Infallible;
///     type Future = Ready<Result<u32, Infallible>>;
///
///     fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
///         Poll::Ready(Ok(()))
///     }
///
///     fn call(&mut self, (): ()) -> Self::Future {
///         let hits = HITS.get() + 1;
///         let _ = HITS.set(hits);
///         ready(Ok(hits))
///     }
/// }
///
/// let mut service: ContextService<Counter> = ContextLayer::new().layer(Counter);
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// // Each request starts from the base: nothing carries over.
/// assert_eq!(service.call(()).await, Ok(1));
/// assert_eq!(service.call(()).await, Ok(1));
/// # });
/// ```
pub struct ContextService<S, H = NoHook, M = KeepResponse> {
    inner: S,
    /// Shared by every clone of the service: a router that clones it for each request (axum's
    /// does) then takes one reference, not one for the base and another for the hook.
    shared: Arc<Shared<H>>,
    response: M,
}

/// What the clones of a [`ContextService`] share.
struct Shared<H> {
    /// The context each request starts from, marked as a request's.
    base: Context,
    hook: Arc<H>,
}

impl<S, H, M> ContextService<S, H, M> {
    /// Wraps `inner`; its requests start from `base`, marked as a request's context.
    pub(super) fn new(inner: S, base: &Context, hook: Arc<H>, response: M) -> Self {
        ContextService {
            inner,
            shared: Arc::new(Shared {
                base: marked(base.clone()),
                hook,
            }),
            response,
        }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    ///
    /// let service = ContextLayer::new().layer("inner");
    /// assert_eq!(*service.get_ref(), "inner");
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    ///
    /// let mut service = ContextLayer::new().layer(1);
    /// *service.get_mut() += 1;
    /// assert_eq!(service.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(ContextLayer::new().layer("inner").into_inner(), "inner");
    /// ```
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, H, M: Clone> Clone for ContextService<S, H, M> {
    fn clone(&self) -> Self {
        ContextService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            response: self.response.clone(),
        }
    }
}

impl<S: fmt::Debug, H, M: fmt::Debug> fmt::Debug for ContextService<S, H, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .field("base", &self.shared.base)
            .field("hook", &std::any::type_name::<H>())
            .field("response", &self.response)
            .finish()
    }
}

impl<S, H, M, Request> Service<Request> for ContextService<S, H, M>
where
    S: Service<Request>,
    H: OnRequest<Request>,
    M: WrapResponse<S::Response> + Clone,
{
    type Response = M::Output;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, M>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        let inner = &mut self.inner;
        self.shared.base.clone().run(|| inner.poll_ready(cx))
    }

    // Never inlined: inlined into axum's service around it, the inner service's future was
    // moved once more on its way out (+64 instructions a request in `memcpy`), and whether the
    // compiler inlines it moves with unrelated changes.
    #[inline(never)]
    fn call(&mut self, mut request: Request) -> Self::Future {
        let context = request_context(&self.shared.base);
        if context.carries() {
            return self.call_carrying(context, request);
        }
        // Entered by hand rather than with `Context::run`: the request is not moved into a
        // closure on its way to the inner service (a request is a few hundred bytes). Entered
        // as for a poll, whose record the response future keeps: its first poll reads on from
        // what the read cache knew when the call left the context, every binding of a small
        // context included, so that the handler's first reads of what the hook and the inner
        // services' calls set (`accept_baggage`'s values) hit.
        let mut kept = KeptContext::new(context);
        let future = {
            // A fresh record: no stamp kept, so the call enters under none.
            let start = kept.last.start().without_stamp();
            let _entered = kept.enter_for_poll(start).primed_on_leaving();
            self.shared.hook.on_request(&mut request);
            self.inner.call(request)
        };
        ResponseFuture {
            // Moved field by field: moved whole, the compiler kept the whole response in a
            // place of its own (where `kept` was) and copied it out once more, future and all.
            inner: WithContext::polled_before(
                future,
                KeptContext {
                    context: kept.context,
                    last: kept.last,
                },
            ),
            response: self.response.clone(),
        }
    }
}

pin_project! {
    /// The future of a [`ContextService`]: the inner service's future, polled (and dropped)
    /// in the request's context; its response goes through the layer's [`WrapResponse`].
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use std::convert::Infallible;
    /// use std::future::{Ready, ready};
    /// use std::task::{Context as TaskContext, Poll};
    ///
    /// use contextvars::tower::{ContextLayer, KeepResponse, ResponseFuture};
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// #[derive(Clone)]
    /// struct Hello;
    ///
    /// impl Service<()> for Hello {
    ///     type Response = &'static str;
    ///     type Error = Infallible;
    ///     type Future = Ready<Result<&'static str, Infallible>>;
    ///
    ///     fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///
    ///     fn call(&mut self, (): ()) -> Self::Future {
    ///         ready(Ok("hello"))
    ///     }
    /// }
    ///
    /// let future: ResponseFuture<_, KeepResponse> = ContextLayer::new().layer(Hello).call(());
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert_eq!(future.await, Ok("hello"));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ResponseFuture<F, M> {
        #[pin]
        inner: WithContext<F>,
        response: M,
    }
}

impl<S, H, M: Clone> ContextService<S, H, M> {
    /// [`call`](Service::call) in a request context that carries a span or OpenTelemetry's
    /// context, entered with them: out of line, as the future's polls of such a context are.
    #[cold]
    #[inline(never)]
    fn call_carrying<Request>(
        &mut self,
        mut context: Context,
        mut request: Request,
    ) -> ResponseFuture<S::Future, M>
    where
        S: Service<Request>,
        H: OnRequest<Request>,
    {
        let future = {
            let _entered = context.enter();
            self.shared.hook.on_request(&mut request);
            self.inner.call(request)
        };
        ResponseFuture {
            inner: future.with_context(context),
            response: self.response.clone(),
        }
    }
}

impl<F, M> ResponseFuture<F, M> {
    /// Runs `call` (the inner service's `call`) in `context`, and keeps its future, to poll
    /// and drop it in `context` too.
    pub(super) fn call_in(mut context: Context, response: M, call: impl FnOnce() -> F) -> Self {
        let future = context.run(call);
        ResponseFuture {
            inner: future.with_context(context),
            response,
        }
    }

    /// The request's context, with what the service has set in it so far.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use std::future::{Ready, ready};
    /// use std::task::{Context as TaskContext, Poll};
    ///
    /// use contextvars::tower::ContextLayer;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct USER {}
    /// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
    /// # static USER: ContextVar<USER> = ContextVar::new("user");
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// struct Nop;
    /// impl Service<()> for Nop {
    ///     type Response = ();
    ///     type Error = ();
    ///     type Future = Ready<Result<(), ()>>;
    ///     fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), ()>> {
    ///         Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, (): ()) -> Self::Future {
    ///         ready(Ok(()))
    ///     }
    /// }
    ///
    /// let mut service = ContextLayer::new()
    ///     .on_request(|_: &mut ()| {
    ///         let _ = USER.set("ann");
    ///     })
    ///     .layer(Nop);
    /// let future = service.call(());
    /// assert_eq!(future.context().get(&USER), Some(&"ann"));
    /// ```
    #[must_use]
    pub fn context(&self) -> &Context {
        self.inner.context()
    }
}

impl<F, M, R, E> Future for ResponseFuture<F, M>
where
    F: Future<Output = Result<R, E>>,
    M: WrapResponse<R>,
{
    type Output = Result<M::Output, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = ready!(this.inner.as_mut().poll(cx));
        let context = this.inner.as_ref().get_ref().context();
        Poll::Ready(result.map(|response| this.response.wrap_response(response, context)))
    }
}

impl<F: fmt::Debug, M: fmt::Debug> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .field("response", &self.response)
            .finish()
    }
}
