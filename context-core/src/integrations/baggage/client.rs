//! The client side: a tower layer that writes the current context's baggage into every
//! outgoing request.

use std::task::{Context as TaskContext, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::inject;

/// Writes the current context's baggage into the `baggage` header of every request that
/// goes through the wrapped HTTP client service, as [`inject`] does: the variables declared
/// with `#[context_var(baggage = "…")]` that are set, and the metadata entries opted into
/// baggage (including the entries the server received and no variable claimed), merged with
/// the entries the request already carries.
///
/// Works with any tower service that takes `http::Request<B>`: hyper-util's client,
/// `tower::service_fn`, a tonic channel. The context is the one the service's `call` runs
/// in: the request's, when called from a handler served through `ContextLayer`.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::BaggageLayer;
/// use contextvars::metadata::{MetadataFlags, set_metadata_with};
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// /// Answers with the `baggage` header it was sent: a stand-in for an HTTP client.
/// struct Echo;
/// impl Service<http::Request<()>> for Echo {
///     type Response = String;
///     type Error = ();
///     type Future = std::future::Ready<Result<String, ()>>;
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), ()>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, request: http::Request<()>) -> Self::Future {
///         let header = request.headers().get("baggage").map(|v| v.to_str().unwrap().to_owned());
///         std::future::ready(Ok(header.unwrap_or_default()))
///     }
/// }
///
/// let mut client = BaggageLayer::new().layer(Echo);
/// set_metadata_with("region", "eu-west", MetadataFlags::BAGGAGE);
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let sent = client.call(http::Request::new(())).await.unwrap();
/// assert_eq!(sent, "region=eu-west");
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct BaggageLayer {
    _private: (),
}

impl BaggageLayer {
    /// The layer.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// let layer = contextvars::baggage::BaggageLayer::new();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub const fn new() -> Self {
        BaggageLayer { _private: () }
    }
}

impl<S> Layer<S> for BaggageLayer {
    type Service = BaggageService<S>;

    fn layer(&self, inner: S) -> BaggageService<S> {
        BaggageService { inner }
    }
}

/// The service made by [`BaggageLayer`]: writes the current context's baggage into each
/// request, then calls the wrapped client.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::BaggageLayer;
/// use tower_layer::Layer;
///
/// let service = BaggageLayer::new().layer("client");
/// assert_eq!(*service.get_ref(), "client");
/// ```
#[derive(Debug, Clone)]
pub struct BaggageService<S> {
    inner: S,
}

impl<S> BaggageService<S> {
    /// The wrapped client.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::baggage::BaggageLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(*BaggageLayer::new().layer(7).get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped client, unwrapped.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::baggage::BaggageLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(BaggageLayer::new().layer(7).into_inner(), 7);
    /// ```
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<http::Request<B>> for BaggageService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        inject(request.headers_mut());
        self.inner.call(request)
    }
}
