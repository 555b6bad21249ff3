//! A tower layer that runs every request in a context of its own (feature `tower`).
//!
//! A server (axum, tonic, hyper) serves each connection in a task spawned with plain
//! `tokio::spawn`, which has no context. [`ContextLayer`] gives each request one: a fresh copy
//! of a base context captured when the layer is built, entered for the service's `call`, every
//! poll of the response future and its drop, with an optional hook that sets variables from
//! the request ([`ContextLayer::on_request`], [`ContextLayer::on_request_async`]) and an option
//! to poll streaming bodies in it too ([`ContextLayer::body_in_context`]). A layer called
//! inside another layer's request, through any executor the request's context went to, builds
//! on that request's context instead of its base; the request's context carries a binding of
//! its own, `contextvars.tower.request`, that marks it so. [`AcrossWorkerLayer`] (or
//! [`CarryContextLayer`] and [`ReenterContextLayer`]) carries each request's context past a
//! shared worker such as `tower::buffer::Buffer`.
//!
//! The `contextvars` crate's documentation of this module tells the whole story with its
//! macros (the layer goes outermost, axum, tonic and hyper, nested layers, shared workers);
//! the items here are the runtime part.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::context::Context;
use crate::future::{FutureExt, WithContext};
use crate::var::{ContextVar, Key, NoDefault};

// Feature `baggage`: the client layer, and the types `ContextLayer::accept_baggage` makes
// (defined with the rest of the baggage support, in `crate::baggage`).
#[cfg(feature = "baggage")]
#[cfg_attr(docsrs, doc(cfg(feature = "baggage")))]
pub use crate::baggage::{AcceptBaggage, AcceptBaggageLayer, BaggageLayer, BaggageService};

/// Runs every request of the wrapped service in a fresh copy of a base context.
///
/// See the [module docs](self) for the whole story. `H` is the request hook
/// ([`on_request`](Self::on_request)), `M` says what happens to the response
/// ([`body_in_context`](Self::body_in_context)), `A` is the asynchronous hook
/// ([`on_request_async`](Self::on_request_async)), if there is one instead of `H`.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::ContextLayer;
///
/// // Requests start with a copy of the context current here.
/// let layer = ContextLayer::new();
/// # let _ = layer;
/// ```
pub struct ContextLayer<H = NoHook, M = KeepResponse, A = NoHook> {
    base: Context,
    hook: Arc<H>,
    response: M,
    async_hook: A,
}

impl ContextLayer {
    /// A layer whose requests start with a copy of the current context, snapshotted now.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct REGION {}
    /// # impl Key for REGION { type Value = &'static str; type Default = NoDefault; }
    /// # static REGION: ContextVar<REGION> = ContextVar::new("region");
    ///
    /// let _region = REGION.set("eu-west");
    /// let layer = ContextLayer::new();
    /// let _later = REGION.set("us-east"); // not seen by requests: the snapshot is taken
    /// assert_eq!(layer.base().get(&REGION), Some(&"eu-west"));
    /// ```
    #[must_use]
    pub fn new() -> Self {
        ContextLayer::with_base(Context::current())
    }

    /// A layer whose requests start with a copy of `base`.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::Context;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::with_base(Context::new());
    /// assert!(layer.base().is_empty());
    /// ```
    #[must_use]
    pub fn with_base(base: Context) -> Self {
        ContextLayer {
            base,
            hook: Arc::new(NoHook),
            response: KeepResponse,
            async_hook: NoHook,
        }
    }
}

impl<H, M, A> ContextLayer<H, M, A> {
    /// Runs `hook` for every request, inside the request's new context and before the inner
    /// service's `call`: what it sets is what the request sees. It receives the request
    /// mutably, so it can also add to it (a generated request id in a header or an
    /// extension).
    ///
    /// Any `Fn(&mut Request)` is a hook; name the request type in the closure's argument.
    /// The hook replaces any earlier one, asynchronous or not.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct REQUEST_ID {}
    /// # impl Key for REQUEST_ID { type Value = String; type Default = NoDefault; }
    /// # static REQUEST_ID: ContextVar<REQUEST_ID> = ContextVar::new("request_id");
    ///
    /// let layer = ContextLayer::new().on_request(|request: &mut http::Request<()>| {
    ///     let id = match request.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
    ///         Some(id) => id.to_string(),
    ///         None => {
    ///             let id = "generated-id".to_string(); // a UUID in real code
    ///             request.headers_mut().insert("x-request-id", id.parse().unwrap());
    ///             id
    ///         }
    ///     };
    ///     let _ = REQUEST_ID.set(id);
    /// });
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn on_request<H2>(self, hook: H2) -> ContextLayer<H2, M> {
        ContextLayer {
            base: self.base,
            hook: Arc::new(hook),
            response: self.response,
            async_hook: NoHook,
        }
    }

    /// Runs the asynchronous `hook` for every request, in the request's new context, before
    /// the inner service is called: what its future sets is what the request sees. The future
    /// answers `Ok(request)` to go on (the request may have been changed) or
    /// `Err(response)` to answer the request itself without calling the inner service (a 404
    /// for an unknown tenant, a 401); an early answer goes through
    /// [`body_in_context`](Self::body_in_context) like any other.
    ///
    /// Any `Fn(Request) -> impl Future<Output = Result<Request, Response>>` is an
    /// asynchronous hook; name the request type in the closure's argument. It replaces any
    /// earlier hook. Since the inner service is called from the response future, it must be
    /// `Clone` (as axum's routers, handlers and the usual tower middleware are).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use std::convert::Infallible;
    ///
    /// use contextvars::tower::ContextLayer;
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct TENANT {}
    /// # impl Key for TENANT { type Value = String; type Default = NoDefault; }
    /// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// /// An asynchronous tenant directory (a database in real code).
    /// async fn find_tenant(id: &str) -> Option<String> {
    ///     (id == "acme").then(|| id.to_string())
    /// }
    ///
    /// let layer = ContextLayer::new().on_request_async(|request: http::Request<()>| async move {
    ///     let id = request.headers().get("x-tenant-id").and_then(|v| v.to_str().ok());
    ///     match find_tenant(id.unwrap_or_default()).await {
    ///         Some(tenant) => {
    ///             let _ = TENANT.set(tenant);
    ///             Ok(request)
    ///         }
    ///         None => Err(http::Response::builder().status(404).body(String::new()).unwrap()),
    ///     }
    /// });
    /// let mut service = layer.layer(tower_service_fn());
    /// # fn tower_service_fn() -> impl Service<http::Request<()>, Response = http::Response<String>, Error = Infallible, Future = std::future::Ready<Result<http::Response<String>, Infallible>>> + Clone {
    /// #     #[derive(Clone)] struct Hello;
    /// #     impl Service<http::Request<()>> for Hello {
    /// #         type Response = http::Response<String>;
    /// #         type Error = Infallible;
    /// #         type Future = std::future::Ready<Result<http::Response<String>, Infallible>>;
    /// #         fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> { std::task::Poll::Ready(Ok(())) }
    /// #         fn call(&mut self, _: http::Request<()>) -> Self::Future {
    /// #             std::future::ready(Ok(http::Response::new(format!("hello {}", TENANT.get().unwrap()))))
    /// #         }
    /// #     }
    /// #     Hello
    /// # }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let request = |tenant| http::Request::get("/").header("x-tenant-id", tenant).body(()).unwrap();
    /// let known = service.call(request("acme")).await.unwrap();
    /// assert_eq!(known.body(), "hello acme");
    /// let unknown = service.call(request("nobody")).await.unwrap();
    /// assert_eq!(unknown.status(), 404);
    /// # });
    /// ```
    #[must_use]
    pub fn on_request_async<F>(self, hook: F) -> ContextLayer<NoHook, M, AsyncHook<F>> {
        ContextLayer {
            base: self.base,
            hook: Arc::new(NoHook),
            response: self.response,
            async_hook: AsyncHook(Arc::new(hook)),
        }
    }

    /// Wraps the body of every `http::Response` in a [`ContextBody`], so that a body that
    /// streams after the handler has returned still polls in the request's context (a copy
    /// of it as the handler left it). The wrapped service must answer with
    /// `http::Response<B>`, as axum, tonic and hyper services do.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new().body_in_context();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn body_in_context(self) -> ContextLayer<H, BodyInContext, A> {
        ContextLayer {
            base: self.base,
            hook: self.hook,
            response: BodyInContext,
            async_hook: self.async_hook,
        }
    }

    /// The context every request starts from (a copy of it).
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// # use contextvars::{Context, ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct REGION {}
    /// # impl Key for REGION { type Value = &'static str; type Default = NoDefault; }
    /// # static REGION: ContextVar<REGION> = ContextVar::new("region");
    ///
    /// let layer = ContextLayer::with_base(Context::new().with_value(&REGION, "eu-west"));
    /// assert_eq!(layer.base().get(&REGION), Some(&"eu-west"));
    /// ```
    #[must_use]
    pub fn base(&self) -> &Context {
        &self.base
    }
}

impl Default for ContextLayer {
    fn default() -> Self {
        ContextLayer::new()
    }
}

impl<H, M: Clone, A: Clone> Clone for ContextLayer<H, M, A> {
    fn clone(&self) -> Self {
        ContextLayer {
            base: self.base.clone(),
            hook: Arc::clone(&self.hook),
            response: self.response.clone(),
            async_hook: self.async_hook.clone(),
        }
    }
}

impl<H, M: fmt::Debug, A> fmt::Debug for ContextLayer<H, M, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextLayer")
            .field("base", &self.base)
            .field("hook", &std::any::type_name::<H>())
            .field("response", &self.response)
            .field("async_hook", &std::any::type_name::<A>())
            .finish()
    }
}

impl<S, H, M: Clone> Layer<S> for ContextLayer<H, M, NoHook> {
    type Service = ContextService<S, H, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner,
            base: marked(self.base.clone()),
            hook: Arc::clone(&self.hook),
            response: self.response.clone(),
        }
    }
}

impl<S, M: Clone, F> Layer<S> for ContextLayer<NoHook, M, AsyncHook<F>> {
    type Service = ContextService<AsyncHookService<S, F>, NoHook, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService {
            inner: AsyncHookService {
                inner,
                hook: Arc::clone(&self.async_hook.0),
            },
            base: marked(self.base.clone()),
            hook: Arc::new(NoHook),
            response: self.response.clone(),
        }
    }
}

/// What a [`ContextLayer`] does for every request: sets variables from it.
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

/// The hook of a layer built without [`ContextLayer::on_request`]: does nothing.
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

/// An asynchronous request hook, set with [`ContextLayer::on_request_async`]: given the
/// request, a future that may set variables (it runs in the request's context) and answers
/// `Ok(request)` to go on or `Err(response)` to answer early.
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

/// The asynchronous hook of a layer built with [`ContextLayer::on_request_async`]: an
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

/// What a [`ContextLayer`] does with each response once the service's future has produced
/// it, given the request's context as the future left it.
///
/// [`KeepResponse`] passes it on; [`BodyInContext`] wraps an `http::Response`'s body in a
/// [`ContextBody`].
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::{KeepResponse, WrapResponse};
///
/// let response = KeepResponse.wrap_response("done", &Context::new());
/// assert_eq!(response, "done");
/// ```
pub trait WrapResponse<Response> {
    /// The response the layer's service answers with.
    type Output;

    /// Turns the inner service's `response` into the layer's; `context` is the request's.
    fn wrap_response(&self, response: Response, context: &Context) -> Self::Output;
}

/// Passes responses on untouched: the default of [`ContextLayer`].
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::{KeepResponse, WrapResponse};
///
/// assert_eq!(KeepResponse.wrap_response(7, &Context::new()), 7);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepResponse;

impl<Response> WrapResponse<Response> for KeepResponse {
    type Output = Response;

    fn wrap_response(&self, response: Response, _: &Context) -> Response {
        response
    }
}

/// Wraps an `http::Response`'s body in a [`ContextBody`] that polls in (a copy of) the
/// request's context: set by [`ContextLayer::body_in_context`].
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::{BodyInContext, WrapResponse};
///
/// let response = http::Response::new("hello");
/// let wrapped = BodyInContext.wrap_response(response, &Context::new());
/// assert_eq!(*wrapped.body().get_ref(), "hello");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct BodyInContext;

impl<B> WrapResponse<http::Response<B>> for BodyInContext {
    type Output = http::Response<ContextBody<B>>;

    fn wrap_response(&self, response: http::Response<B>, context: &Context) -> Self::Output {
        response.map(|body| ContextBody::new(body, context.clone()))
    }
}

/// The service made by [`ContextLayer`]: runs each request in a fresh copy of the base
/// context.
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
    base: Context,
    hook: Arc<H>,
    response: M,
}

impl<S, H, M> ContextService<S, H, M> {
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
            base: self.base.clone(),
            hook: Arc::clone(&self.hook),
            response: self.response.clone(),
        }
    }
}

impl<S: fmt::Debug, H, M: fmt::Debug> fmt::Debug for ContextService<S, H, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextService")
            .field("inner", &self.inner)
            .field("base", &self.base)
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
        self.base.clone().run(|| inner.poll_ready(cx))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let mut context = request_context(&self.base);
        let (hook, inner) = (&self.hook, &mut self.inner);
        let future = context.run(|| {
            hook.on_request(&mut request);
            inner.call(request)
        });
        ResponseFuture {
            inner: future.with_context(context),
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

impl<F, M> ResponseFuture<F, M> {
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

/// The inner service of a [`ContextLayer`] with an
/// [asynchronous hook](ContextLayer::on_request_async): called in the request's context, it
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

/// The key of [`IN_REQUEST`].
struct InRequest {}

impl Key for InRequest {
    type Value = ();
    type Default = NoDefault;
}

/// Marks a request's context, as a layer of this module enters it: a `ContextLayer` called
/// where the current context has it (from the outer service's `call` or its response future,
/// or from a task or a thread the request's context flowed to) builds on that context instead
/// of its base. A binding rather than a flag of the thread or task, so it goes wherever the
/// context goes (`contextvars::spawn`, `spawn_local`, `spawn_blocking`, `in_current_context`,
/// the runtime hooks) and nowhere else, whichever thread polls, and nothing has to be undone
/// when a call or a poll panics or a request future is dropped.
static IN_REQUEST: ContextVar<InRequest> = ContextVar::new("contextvars.tower.request");

/// `context`, marked as a request's (each request of a layer starts from a copy of it).
fn marked(context: Context) -> Context {
    context.with_value(&IN_REQUEST, ())
}

/// The context a new request starts in: a copy of the request context it is called in, if
/// an outer layer entered one, else a copy of `base` (marked).
fn request_context(base: &Context) -> Context {
    if IN_REQUEST.is_set() {
        Context::current()
    } else {
        base.clone()
    }
}

/// A request that can carry a [`Context`] past a worker task: [`CarryContextLayer`] puts
/// one in, [`ReenterContextLayer`] takes it out.
///
/// Implemented for `http::Request<B>`, which keeps it in its extensions (under a private
/// type, so it meets no extension of yours). Implement it for another request type by giving
/// it a field for the context:
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::CarriesContext;
///
/// struct Job {
///     name: String,
///     context: Option<Context>,
/// }
///
/// impl CarriesContext for Job {
///     fn put_context(&mut self, context: Context) {
///         self.context = Some(context);
///     }
///
///     fn take_context(&mut self) -> Option<Context> {
///         self.context.take()
///     }
/// }
/// ```
pub trait CarriesContext {
    /// Stores `context` in the request, replacing any stored before.
    fn put_context(&mut self, context: Context);

    /// Takes the stored context out of the request, if there is one.
    fn take_context(&mut self) -> Option<Context>;
}

/// The context an `http::Request` carries, in its extensions.
#[derive(Clone)]
struct Carried(Context);

impl<B> CarriesContext for http::Request<B> {
    fn put_context(&mut self, context: Context) {
        self.extensions_mut().insert(Carried(context));
    }

    fn take_context(&mut self) -> Option<Context> {
        self.extensions_mut()
            .remove::<Carried>()
            .map(|Carried(context)| context)
    }
}

/// Puts a snapshot of the current context (the request's, under a [`ContextLayer`]) into
/// every request, for a [`ReenterContextLayer`] below a worker task to enter again. Place it
/// right above the worker; [`AcrossWorkerLayer`] does that for you.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::{CarriesContext, CarryContextLayer};
/// use tower_layer::Layer;
/// use tower_service::Service;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
///
/// /// Hands the request back, as a channel to a worker would.
/// struct Pass;
/// impl Service<http::Request<()>> for Pass {
///     type Response = http::Request<()>;
///     type Error = ();
///     type Future = std::future::Ready<Result<http::Request<()>, ()>>;
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, request: http::Request<()>) -> Self::Future {
///         std::future::ready(Ok(request))
///     }
/// }
///
/// let mut service = CarryContextLayer.layer(Pass);
/// let _user = USER.set("ann");
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut request = service.call(http::Request::new(())).await.unwrap();
/// let carried = request.take_context().unwrap();
/// assert_eq!(carried.get(&USER), Some(&"ann"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CarryContextLayer;

impl<S> Layer<S> for CarryContextLayer {
    type Service = CarryContext<S>;

    fn layer(&self, inner: S) -> CarryContext<S> {
        CarryContext { inner }
    }
}

/// The service made by [`CarryContextLayer`]: puts a snapshot of the current context into
/// every request, then calls the inner service.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{CarryContext, CarryContextLayer};
/// use tower_layer::Layer;
///
/// let service: CarryContext<&str> = CarryContextLayer.layer("worker");
/// assert_eq!(*service.get_ref(), "worker");
/// ```
#[derive(Debug, Clone)]
pub struct CarryContext<S> {
    inner: S,
}

impl<S> CarryContext<S> {
    /// The wrapped service.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::CarryContextLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(*CarryContextLayer.layer(7).get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Request> Service<Request> for CarryContext<S>
where
    S: Service<Request>,
    Request: CarriesContext,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> S::Future {
        request.put_context(Context::current());
        self.inner.call(request)
    }
}

/// Runs the inner service's `call`, and every poll and the drop of its future, in the
/// context the request carries (put there by a [`CarryContextLayer`] above a worker task):
/// the request's context, on the worker's side. Place it right below the worker;
/// [`AcrossWorkerLayer`] does that for you.
///
/// A request that carries no context (no [`CarryContextLayer`] above the worker) is served
/// in a copy of the request context it is called in, if a layer of this module entered one
/// (so that this layer placed where no worker is changes nothing), else in an empty context
/// of its own: the inner service's `set` never panics in the worker, which would close it for
/// every later request. `poll_ready` belongs to no request: it runs in an empty context of
/// its own, and what it sets is dropped.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::Context;
/// use contextvars::tower::{CarriesContext, ReenterContextLayer};
/// use tower_layer::Layer;
/// use tower_service::Service;
/// # use contextvars::{ContextVar, Key, NoDefault};
/// # #[allow(non_camel_case_types)] struct USER {}
/// # impl Key for USER { type Value = &'static str; type Default = NoDefault; }
/// # static USER: ContextVar<USER> = ContextVar::new("user");
///
/// /// Answers with the user its `call` sees.
/// struct WhoAmI;
/// impl Service<http::Request<()>> for WhoAmI {
///     type Response = Option<&'static str>;
///     type Error = ();
///     type Future = std::future::Ready<Result<Option<&'static str>, ()>>;
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, _: http::Request<()>) -> Self::Future {
///         std::future::ready(Ok(USER.get()))
///     }
/// }
///
/// let mut service = ReenterContextLayer.layer(WhoAmI);
/// let mut request = http::Request::new(());
/// request.put_context(Context::new().with_value(&USER, "ann"));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(service.call(request).await, Ok(Some("ann")));
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ReenterContextLayer;

impl<S> Layer<S> for ReenterContextLayer {
    type Service = ReenterContext<S>;

    fn layer(&self, inner: S) -> ReenterContext<S> {
        ReenterContext { inner }
    }
}

/// The service made by [`ReenterContextLayer`]: calls the inner service, and polls its
/// future, in the context the request carries.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{ReenterContext, ReenterContextLayer};
/// use tower_layer::Layer;
///
/// let service: ReenterContext<&str> = ReenterContextLayer.layer("inner");
/// assert_eq!(*service.get_ref(), "inner");
/// ```
#[derive(Debug, Clone)]
pub struct ReenterContext<S> {
    inner: S,
}

impl<S> ReenterContext<S> {
    /// The wrapped service.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ReenterContextLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(*ReenterContextLayer.layer(7).get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, Request> Service<Request> for ReenterContext<S>
where
    S: Service<Request>,
    Request: CarriesContext,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, KeepResponse>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        let inner = &mut self.inner;
        Context::new().run(|| inner.poll_ready(cx))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let context = request
            .take_context()
            .unwrap_or_else(|| request_context(&Context::new()));
        // A context carried by hand (not from a `ContextLayer`'s request) is a request's here
        // too: a layer below builds on it.
        let mut context = if context.contains(&IN_REQUEST) {
            context
        } else {
            marked(context)
        };
        let inner = &mut self.inner;
        let future = context.run(|| inner.call(request));
        ResponseFuture {
            inner: future.with_context(context),
            response: KeepResponse,
        }
    }
}

/// Carries each request's context across a worker task: wraps the worker's layer `L` (say
/// `tower::buffer::BufferLayer`) between a [`CarryContextLayer`] above it and a
/// [`ReenterContextLayer`] below it, so that the services under the worker run each request
/// in that request's context. What the services under the worker set stays below it.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::{AcrossWorkerLayer, CarryContext, ReenterContext};
/// use tower_layer::{Layer, layer_fn};
///
/// /// Stands for a worker's layer, such as `BufferLayer::new(1024)`.
/// let worker = layer_fn(|inner| vec![inner]);
/// let service: CarryContext<Vec<ReenterContext<&str>>> =
///     AcrossWorkerLayer::new(worker).layer("inner");
/// assert_eq!(*service.get_ref()[0].get_ref(), "inner");
/// ```
#[derive(Debug, Clone)]
pub struct AcrossWorkerLayer<L> {
    worker: L,
}

impl<L> AcrossWorkerLayer<L> {
    /// Wraps the worker's layer.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::AcrossWorkerLayer;
    /// use tower_layer::Identity;
    ///
    /// let layer = AcrossWorkerLayer::new(Identity::new());
    /// # let _ = layer;
    /// ```
    pub fn new(worker: L) -> Self {
        AcrossWorkerLayer { worker }
    }
}

impl<S, L: Layer<ReenterContext<S>>> Layer<S> for AcrossWorkerLayer<L> {
    type Service = CarryContext<L::Service>;

    fn layer(&self, inner: S) -> Self::Service {
        CarryContext {
            inner: self.worker.layer(ReenterContext { inner }),
        }
    }
}

pin_project! {
    /// An HTTP body that polls, and is dropped, inside a context: the request's, for bodies
    /// that stream after the handler has returned. Made by [`ContextLayer::body_in_context`],
    /// or by hand with [`ContextBody::new`].
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use std::pin::Pin;
    /// use std::task::{Context as TaskContext, Poll};
    ///
    /// use contextvars::Context;
    /// use contextvars::tower::ContextBody;
    /// use http_body::{Body, Frame};
    /// # use contextvars::{ContextVar, Key, NoDefault};
    /// # #[allow(non_camel_case_types)] struct TENANT {}
    /// # impl Key for TENANT { type Value = &'static str; type Default = NoDefault; }
    /// # static TENANT: ContextVar<TENANT> = ContextVar::new("tenant");
    ///
    /// /// A body that writes the tenant it streams for, read when polled.
    /// struct TenantBody { done: bool }
    ///
    /// impl Body for TenantBody {
    ///     type Data = &'static [u8];
    ///     type Error = std::convert::Infallible;
    ///
    ///     fn poll_frame(
    ///         mut self: Pin<&mut Self>,
    ///         _: &mut TaskContext<'_>,
    ///     ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
    ///         if std::mem::replace(&mut self.done, true) {
    ///             return Poll::Ready(None);
    ///         }
    ///         let tenant = TENANT.get().unwrap_or("none");
    ///         Poll::Ready(Some(Ok(Frame::data(tenant.as_bytes()))))
    ///     }
    /// }
    ///
    /// let mut body = ContextBody::new(TenantBody { done: false }, Context::new().with_value(&TENANT, "acme"));
    /// let mut cx = TaskContext::from_waker(std::task::Waker::noop());
    /// let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else { panic!() };
    /// assert_eq!(frame.into_data().unwrap(), b"acme");
    /// ```
    pub struct ContextBody<B> {
        #[pin]
        inner: Option<B>,
        context: Context,
    }

    impl<B> PinnedDrop for ContextBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            if this.inner.is_some() {
                this.context.run(|| this.inner.set(None));
            }
        }
    }
}

impl<B> ContextBody<B> {
    /// Wraps `body` so that it polls, and is dropped, in `context`. What the body sets while
    /// polled stays in `context`, from one poll to the next.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::Context;
    /// use contextvars::tower::ContextBody;
    ///
    /// let body = ContextBody::new(String::from("hi"), Context::new());
    /// assert_eq!(body.get_ref(), "hi");
    /// ```
    pub fn new(body: B, context: Context) -> Self {
        ContextBody {
            inner: Some(body),
            context,
        }
    }

    /// The wrapped body.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::Context;
    /// use contextvars::tower::ContextBody;
    ///
    /// assert_eq!(*ContextBody::new(3, Context::new()).get_ref(), 3);
    /// ```
    #[must_use]
    #[allow(
        clippy::missing_panics_doc,
        reason = "the body is taken out only by `drop`"
    )]
    pub fn get_ref(&self) -> &B {
        self.inner.as_ref().expect("the body is only taken on drop")
    }

    /// The context the body polls in.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::Context;
    /// use contextvars::tower::ContextBody;
    ///
    /// assert!(ContextBody::new((), Context::new()).context().is_empty());
    /// ```
    #[must_use]
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl<B: http_body::Body> http_body::Body for ContextBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let inner = this
            .inner
            .as_pin_mut()
            .expect("the body is only taken on drop");
        this.context.run(|| inner.poll_frame(cx))
    }

    fn is_end_stream(&self) -> bool {
        self.get_ref().is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.get_ref().size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for ContextBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextBody")
            .field("inner", &self.inner)
            .field("context", &self.context)
            .finish()
    }
}
