//! The request hooks: `on_request` runs a closure on each request inside the request's new
//! context, before the inner service's `call`; `on_request_async` runs a future there instead,
//! which may answer the request itself (a service and a future of their own do that).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

/// What a [`ContextLayer`](super::ContextLayer) does for every request: sets variables from it.
///
/// Implemented by every `Fn(&mut Request)` and by [`NoHook`]. The hook runs inside the
/// request's new context, before the inner service's `call`.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::OnRequest;
/// # use contextvars::{Context, ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct PATH {}
/// # impl Key for PATH { type Value = String; type Default = NoDefault; }
/// # static PATH: ContextVar<PATH> = ContextVar::new("path");
///
/// /// A hook as a type, for when a closure will not do.
/// struct RecordPath;
///
/// impl OnRequest<http::Request<()>> for RecordPath {
///     fn on_request(&self, request: &mut http::Request<()>) {
///         let _ = PATH.set(request.uri().path().to_string());
///     }
/// }
///
/// let mut request = http::Request::get("/users/7").body(()).unwrap();
/// let seen = Context::new().run(|| {
///     RecordPath.on_request(&mut request);
///     PATH.get()
/// });
/// assert_eq!(seen.as_deref(), Some("/users/7"));
/// ```
pub trait OnRequest<Request> {
    /// Called with each request, inside its new context.
    fn on_request(&self, request: &mut Request);
}

impl<Request, F: Fn(&mut Request)> OnRequest<Request> for F {
    fn on_request(&self, request: &mut Request) {
        self(request);
    }
}

/// The hook of a layer built without [`ContextLayer::on_request`](super::ContextLayer::on_request):
/// does nothing.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{NoHook, OnRequest};
///
/// let mut request = ();
/// NoHook.on_request(&mut request); // nothing happens
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl<Request> OnRequest<Request> for NoHook {
    fn on_request(&self, _: &mut Request) {}
}

/// An asynchronous request hook, set with
/// [`ContextLayer::on_request_async`](super::ContextLayer::on_request_async): given the request, a
/// future that may set variables (it runs in the request's context) and answers `Ok(request)` to go
/// on or `Err(response)` to answer early.
///
/// Implemented by every `Fn(Request) -> impl Future<Output = Result<Request, Response>>`;
/// implement it on a type of your own when a closure will not do.
///
/// ```
/// # use context_core as contextvars;
/// use std::future::{Ready, ready};
///
/// use contextvars::tower::OnRequestAsync;
///
/// /// Refuses requests without a body.
/// struct RequireBody;
///
/// impl OnRequestAsync<String, &'static str> for RequireBody {
///     type Future = Ready<Result<String, &'static str>>;
///
///     fn on_request(&self, request: String) -> Self::Future {
///         ready(if request.is_empty() { Err("empty") } else { Ok(request) })
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(RequireBody.on_request(String::new()).await, Err("empty"));
/// # });
/// ```
pub trait OnRequestAsync<Request, Response> {
    /// What the hook does for one request.
    type Future: Future<Output = Result<Request, Response>>;

    /// Called with each request, inside its new context; the future is polled there too.
    fn on_request(&self, request: Request) -> Self::Future;
}

impl<Request, Response, F, Fut> OnRequestAsync<Request, Response> for F
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Result<Request, Response>>,
{
    type Future = Fut;

    fn on_request(&self, request: Request) -> Fut {
        self(request)
    }
}

/// The asynchronous hook of a layer built with
/// [`ContextLayer::on_request_async`](super::ContextLayer::on_request_async): an
/// [`OnRequestAsync`], shared by the layer's services.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{AsyncHook, ContextLayer, NoHook};
///
/// let layer: ContextLayer<NoHook, _, AsyncHook<_>> =
///     ContextLayer::new().on_request_async(|request: String| async { Ok::<_, ()>(request) });
/// # let _ = layer;
/// ```
pub struct AsyncHook<F>(Arc<F>);

impl<F> AsyncHook<F> {
    /// Shares `hook` among the services of a layer.
    pub(super) fn new(hook: F) -> Self {
        AsyncHook(Arc::new(hook))
    }
}

impl<F> Clone for AsyncHook<F> {
    fn clone(&self) -> Self {
        AsyncHook(Arc::clone(&self.0))
    }
}

impl<F> fmt::Debug for AsyncHook<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<F>())
    }
}

/// The inner service of a [`ContextLayer`](super::ContextLayer) with an
/// [asynchronous hook](super::ContextLayer::on_request_async): called in the request's context, it
/// runs the hook's future, then the wrapped service, unless the hook answered early.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{AsyncHookService, ContextLayer, ContextService, NoHook};
/// use tower_layer::Layer;
///
/// let layer = ContextLayer::new().on_request_async(|n: u32| async move { Ok::<_, u32>(n) });
/// let service = layer.layer("inner");
/// assert_eq!(*service.get_ref().get_ref(), "inner");
/// ```
pub struct AsyncHookService<S, F> {
    inner: S,
    hook: Arc<F>,
}

impl<S, F> AsyncHookService<S, F> {
    /// Runs `hook` before `inner`.
    pub(super) fn new(inner: S, hook: &AsyncHook<F>) -> Self {
        AsyncHookService {
            inner,
            hook: Arc::clone(&hook.0),
        }
    }

    /// The wrapped service.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    ///
    /// let layer = ContextLayer::new().on_request_async(|n: u32| async move { Ok::<_, u32>(n) });
    /// assert_eq!(*layer.layer(7).get_ref().get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, F> Clone for AsyncHookService<S, F> {
    fn clone(&self) -> Self {
        AsyncHookService {
            inner: self.inner.clone(),
            hook: Arc::clone(&self.hook),
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for AsyncHookService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncHookService")
            .field("inner", &self.inner)
            .field("hook", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, F, Request> Service<Request> for AsyncHookService<S, F>
where
    S: Service<Request> + Clone,
    F: OnRequestAsync<Request, S::Response>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HookThenCall<F::Future, S, S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The service made ready by `poll_ready` goes with the request; a clone stays for
        // the next one.
        let ready = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, ready);
        HookThenCall {
            state: State::Hook {
                hook: self.hook.on_request(request),
                service: Some(service),
            },
        }
    }
}

pin_project! {
    /// The future of an [`AsyncHookService`], polled in the request's context: the hook's
    /// future, then the inner service's call and its future, unless the hook answered early.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// let service = tower_service_fn();
    /// # fn tower_service_fn() -> impl Service<u32, Response = u32, Error = (), Future = std::future::Ready<Result<u32, ()>>> + Clone {
    /// #     #[derive(Clone)] struct Double;
    /// #     impl Service<u32> for Double {
    /// #         type Response = u32; type Error = (); type Future = std::future::Ready<Result<u32, ()>>;
    /// #         fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> { std::task::Poll::Ready(Ok(())) }
    /// #         fn call(&mut self, n: u32) -> Self::Future { std::future::ready(Ok(2 * n)) }
    /// #     }
    /// #     Double
    /// # }
    /// let mut service = ContextLayer::new()
    ///     .on_request_async(|n: u32| async move { if n > 0 { Ok(n) } else { Err(0) } })
    ///     .layer(service);
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert_eq!(service.call(21).await, Ok(42));
    /// assert_eq!(service.call(0).await, Ok(0)); // answered by the hook
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct HookThenCall<H, S, F> {
        #[pin]
        state: State<H, S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<H, S, F> {
        Hook {
            #[pin]
            hook: H,
            service: Option<S>,
        },
        Call {
            #[pin]
            call: F,
        },
    }
}

impl<H, S, Request> Future for HookThenCall<H, S, S::Future>
where
    H: Future<Output = Result<Request, S::Response>>,
    S: Service<Request>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Hook { hook, service } => match ready!(hook.poll(cx)) {
                    Ok(request) => {
                        let mut service = service.take().expect("the hook finishes once");
                        let call = service.call(request);
                        state.set(State::Call { call });
                    }
                    Err(response) => return Poll::Ready(Ok(response)),
                },
                StateProj::Call { call } => return call.poll(cx),
            }
        }
    }
}

impl<H, S, F> fmt::Debug for HookThenCall<H, S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Hook { .. } => "hook",
            State::Call { .. } => "call",
        };
        f.debug_struct("HookThenCall")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
