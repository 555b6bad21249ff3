//! Shared workers: a service behind a worker task (`tower::buffer::Buffer`, say) runs in the
//! worker's context, not the request's. `CarryContextLayer` puts each request's context into
//! the request above the worker, `ReenterContextLayer` enters it again below the worker, and
//! `AcrossWorkerLayer` places the two around a worker's layer.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, ready};

use pin_project_lite::pin_project;

use tower_layer::Layer;
use tower_service::Service;

use super::body::KeepResponse;
use super::nested::{as_request, request_context};
use super::service::ResponseFuture;
use crate::context::{Context, DropContained};

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

/// The context an `http::Request` carries, in its extensions. A request dropped in a worker's
/// queue (its caller went away) may hold the last reference to its values: their `Drop`
/// panics stay in the request, not in the worker.
#[derive(Clone)]
struct Carried(DropContained<Context>);

impl<B> CarriesContext for http::Request<B> {
    fn put_context(&mut self, context: Context) {
        self.extensions_mut()
            .insert(Carried(DropContained::new(context)));
    }

    fn take_context(&mut self) -> Option<Context> {
        self.extensions_mut()
            .remove::<Carried>()
            .map(|Carried(context)| context.into_inner())
    }
}

/// Declares one of the two layers around a worker: a unit struct, and the service it makes, a
/// plain wrapper of the inner service with `get_ref`, for any request that
/// [`CarriesContext`]. Each invocation gives the two structs with their docs, and in
/// `impl Service { … }` what its `Service` impl does differently: the future, `poll_ready`,
/// `call`.
macro_rules! worker_side {
    (
        $(#[$layer_doc:meta])*
        pub struct $layer:ident;

        $(#[$service_doc:meta])*
        pub struct $service:ident<S> { inner: S }

        impl Service { $($service_items:tt)* }
    ) => {
        $(#[$layer_doc])*
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $layer;

        impl<S> Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> $service<S> {
                $service { inner }
            }
        }

        $(#[$service_doc])*
        #[derive(Debug, Clone)]
        pub struct $service<S> {
            inner: S,
        }

        impl<S> $service<S> {
            /// The wrapped service.
            ///
            /// ```
            /// # use context_core as contextvars;
            #[doc = concat!("use contextvars::tower::", stringify!($layer), ";")]
            /// use tower_layer::Layer;
            ///
            #[doc = concat!("assert_eq!(*", stringify!($layer), ".layer(7).get_ref(), 7);")]
            /// ```
            #[must_use]
            pub fn get_ref(&self) -> &S {
                &self.inner
            }
        }

        impl<S, Request> Service<Request> for $service<S>
        where
            S: Service<Request>,
            Request: CarriesContext,
        {
            type Response = S::Response;
            type Error = S::Error;

            $($service_items)*
        }
    };
}

worker_side! {
    /// Puts a snapshot of the current context (the request's, under a
    /// [`ContextLayer`](super::ContextLayer)) into every request, for a [`ReenterContextLayer`]
    /// below a worker task to enter again. Place it right above the worker; [`AcrossWorkerLayer`]
    /// does that for you.
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
    pub struct CarryContextLayer;

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
    pub struct CarryContext<S> { inner: S }

    impl Service {
        type Future = S::Future;

        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut request: Request) -> S::Future {
            request.put_context(Context::current());
            self.inner.call(request)
        }
    }
}

worker_side! {
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
    pub struct ReenterContextLayer;

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
    pub struct ReenterContext<S> { inner: S }

    impl Service {
        type Future = ReenterFuture<S::Future>;

        fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            let inner = &mut self.inner;
            Context::new().run(|| inner.poll_ready(cx))
        }

        fn call(&mut self, mut request: Request) -> Self::Future {
            let context = request
                .take_context()
                .unwrap_or_else(|| request_context(&Context::new()));
            let inner = &mut self.inner;
            ReenterFuture {
                inner: Some(ResponseFuture::call_in(as_request(context), KeepResponse, || {
                    inner.call(request)
                })),
            }
        }
    }
}

pin_project! {
    /// The future of a [`ReenterContext`]: the inner service's future, polled and dropped in
    /// the context the request carried. Once it completes, it drops what it holds in the poll
    /// that completed it, where a panic of a value's `Drop` is the request's, as anywhere. A
    /// worker may drop it unfinished itself (`tower::buffer::Buffer` drops the future it made
    /// for a request whose caller went away), and it may then hold the last reference to the
    /// request's values: dropped unfinished, a panic of their `Drop` stays in it (the panic
    /// hook reports it) instead of ending the worker, which would fail every later request.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::{ReenterContextLayer, ReenterFuture};
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    ///
    /// struct Hello;
    /// impl Service<http::Request<()>> for Hello {
    ///     type Response = &'static str;
    ///     type Error = ();
    ///     type Future = std::future::Ready<Result<&'static str, ()>>;
    ///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
    ///         std::task::Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, _: http::Request<()>) -> Self::Future {
    ///         std::future::ready(Ok("hello"))
    ///     }
    /// }
    ///
    /// let mut service = ReenterContextLayer.layer(Hello);
    /// let future: ReenterFuture<_> = service.call(http::Request::new(()));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert_eq!(future.await, Ok("hello"));
    /// # });
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct ReenterFuture<F> {
        // `Some` until dropped: the drop takes it out inside `catch_unwind`.
        #[pin]
        inner: Option<ResponseFuture<F, KeepResponse>>,
    }

    impl<F> PinnedDrop for ReenterFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut inner = this.project().inner;
            // Nobody may wait for this future any more: the panic hook has printed the panic,
            // and it goes no further.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| inner.set(None)));
        }
    }
}

impl<F, R, E> Future for ReenterFuture<F>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut inner = self.project().inner;
        let output = ready!(
            inner
                .as_mut()
                .as_pin_mut()
                .expect("polled after it completed")
                .poll(cx)
        );
        // Dropped here, in the task that awaited it: a panic of a value's `Drop` is its panic.
        inner.set(None);
        Poll::Ready(output)
    }
}

impl<F> ReenterFuture<F> {
    /// The request's context, with what the services below the worker have set in it so far.
    ///
    /// # Panics
    /// Once the future has completed: its context is gone with it.
    #[must_use]
    pub fn context(&self) -> &Context {
        self.inner
            .as_ref()
            .expect("the context of a completed future")
            .context()
    }
}

impl<F: fmt::Debug> fmt::Debug for ReenterFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReenterFuture")
            .field("inner", &self.inner)
            .finish()
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
        CarryContextLayer.layer(self.worker.layer(ReenterContextLayer.layer(inner)))
    }
}
