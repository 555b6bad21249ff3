//! `ContextLayer`: the layer a user writes, and its builder (the base context, the hooks, the
//! response's body). It wraps every service in a `ContextService`.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::body::{BodyInContext, KeepResponse};
use super::hooks::{AsyncHook, AsyncHookService, NoHook};
use super::service::ContextService;
use crate::context::Context;

/// Runs every request of the wrapped service in a fresh copy of a base context.
///
/// See the [module docs](index.html) for the whole story. `H` is the request hook
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
            // A request carries the span current where it is served, not where the layer was
            // built.
            base: base.without_carried(),
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
            async_hook: AsyncHook::new(hook),
        }
    }

    /// Wraps the body of every `http::Response` in a [`ContextBody`](super::ContextBody), so that a
    /// body that streams after the handler has returned still polls in the request's context (a
    /// copy of it as the handler left it). The wrapped service must answer with
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
        ContextService::new(
            inner,
            &self.base,
            Arc::clone(&self.hook),
            self.response.clone(),
        )
    }
}

impl<S, M: Clone, F> Layer<S> for ContextLayer<NoHook, M, AsyncHook<F>> {
    type Service = ContextService<AsyncHookService<S, F>, NoHook, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ContextService::new(
            AsyncHookService::new(inner, &self.async_hook),
            &self.base,
            Arc::new(NoHook),
            self.response.clone(),
        )
    }
}
