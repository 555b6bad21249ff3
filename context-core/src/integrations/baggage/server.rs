//! The server side: `ContextLayer::accept_baggage`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::error::BaggageError;
use super::{Accept, Policy, accept, accept_line, registry};
use crate::tower::ContextLayer;

impl<H, M, A> ContextLayer<H, M, A> {
    /// Reads each request's `baggage` header into the request's context, before the inner
    /// service runs: every variable declared with `#[context_var(baggage = "key")]` whose key
    /// the header holds is set, its value parsed with `FromStr`, and the entries no variable
    /// claims are kept in the request's [metadata map](crate::metadata), where
    /// [`get_metadata`](crate::metadata::get_metadata) reads them and outgoing requests
    /// ([`BaggageLayer`](crate::baggage::BaggageLayer), [`inject`](crate::baggage::inject))
    /// forward them.
    ///
    /// What the application sets itself always wins over an entry of the header: a variable
    /// or metadata key that the layer's base context or a request hook already holds is left
    /// as the application set it, and the entry for it is dropped (neither read nor
    /// forwarded). A key given more than once in a valid header is valid input: the last
    /// entry wins. A malformed entry is not hidden by a later one with its key: the header is
    /// malformed, as with that entry alone.
    ///
    /// Baggage is untrusted input: any caller can send any entry, and every service on the
    /// way can read and change it. Never decide authorization from it (a tenant, a role, a
    /// user id for access checks come from an authenticated source, set in a request hook).
    /// [`only_keys`](AcceptBaggageLayer::only_keys) limits what is read to a list of keys,
    /// and [`forward_unclaimed(false)`](AcceptBaggageLayer::forward_unclaimed) stops the
    /// entries no variable claims from being passed on.
    ///
    /// By default a bad header (over 8,192 bytes or 180 entries,
    /// not text, a malformed entry or property, a bad `%` escape in a value or a property,
    /// escapes that are not UTF-8, a value its variable's type does not parse) answers the request with
    /// `400 Bad Request` and a JSON body naming the offending entry
    /// ([`BaggageError::to_json`]); the inner service is not called, nothing is set from the
    /// header, and the connection stays open for the next request.
    /// [`ignore_bad_entries`](AcceptBaggageLayer::ignore_bad_entries) skips bad entries
    /// instead; [`reject_with`](AcceptBaggageLayer::reject_with) answers otherwise. Nothing
    /// panics on any input.
    ///
    /// Call it last, after [`on_request`](Self::on_request),
    /// [`on_request_async`](Self::on_request_async) and
    /// [`body_in_context`](Self::body_in_context). The request hooks run first (so a hook may
    /// remove or rewrite the header, for example at a trust boundary), then the header is
    /// read, then the inner service runs. The wrapped service must answer with
    /// `http::Response<B>` where `B: From<String>` (axum's `Body` is).
    ///
    /// # Panics
    /// If two variables in the program claim the same baggage key: which one a received entry
    /// sets would be a guess. The message names both.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new().body_in_context().accept_baggage();
    /// # let _ = layer;
    /// ```
    #[track_caller]
    pub fn accept_baggage(self) -> AcceptBaggageLayer<Self> {
        registry::assert_no_conflict();
        AcceptBaggageLayer {
            layer: self,
            acceptor: Acceptor {
                settings: Accept::new(),
                reject: Arc::new(JsonBadRequest),
            },
        }
    }
}

/// A [`ContextLayer`] that reads each request's `baggage` header into the request's context:
/// made by [`ContextLayer::accept_baggage`]. `R` makes the answer to a bad header
/// ([`JsonBadRequest`] unless [`reject_with`](Self::reject_with) says otherwise).
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::AcceptBaggageLayer;
/// use contextvars::tower::ContextLayer;
///
/// let layer: AcceptBaggageLayer<ContextLayer> = ContextLayer::new().accept_baggage();
/// # let _ = layer;
/// ```
pub struct AcceptBaggageLayer<L, R = JsonBadRequest> {
    layer: L,
    acceptor: Acceptor<R>,
}

impl<L, R> AcceptBaggageLayer<L, R> {
    /// Skips what is bad instead of answering: a bad entry is left out (the others are
    /// set), a bad header as a whole (over the limits, not text) is left out whole, and each
    /// error is passed to `report`, in the request's context, which is the place to log it:
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new()
    ///     .accept_baggage()
    ///     .ignore_bad_entries(|err| tracing::warn!(%err, "baggage entry ignored"));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn ignore_bad_entries(
        mut self,
        report: impl Fn(&BaggageError) + Send + Sync + 'static,
    ) -> Self {
        self.acceptor.settings.policy = Policy::Ignore(Arc::new(report));
        self
    }

    /// Reads only the entries with these keys from a header; the others are left out
    /// whole: not set, not kept, not forwarded, and not checked beyond the header's syntax
    /// and limits (a bad value under another key is no error). Calling it again replaces
    /// the list.
    ///
    /// Baggage is untrusted input: list what this service needs from its callers, and
    /// nothing it would trust for a decision.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new()
    ///     .accept_baggage()
    ///     .only_keys(["request.source", "campaign"]);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn only_keys<K: Into<String>>(mut self, keys: impl IntoIterator<Item = K>) -> Self {
        self.acceptor.settings.only_keys(keys);
        self
    }

    /// Whether the entries no variable claims are forwarded (the default: `true`). With
    /// `false` they are still kept in the request's [metadata map](crate::metadata), where
    /// [`get_metadata`](crate::metadata::get_metadata) reads them, but are not opted into
    /// baggage, so [`inject`](crate::baggage::inject) and
    /// [`BaggageLayer`](crate::baggage::BaggageLayer) do not send them on: a service at a
    /// trust boundary passes on only what it sets itself.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new().accept_baggage().forward_unclaimed(false);
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn forward_unclaimed(mut self, forward: bool) -> Self {
        self.acceptor.settings.forward = forward;
        self
    }

    /// Answers a bad header with `reject(&error)` instead of the JSON `400`: for a protocol
    /// with errors of its own (gRPC wants `grpc-status` 3, `INVALID_ARGUMENT`), or a body type
    /// that is not `From<String>`.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new().accept_baggage().reject_with(|err| {
    ///     let mut response = http::Response::new(err.to_string());
    ///     *response.status_mut() = http::StatusCode::UNPROCESSABLE_ENTITY;
    ///     response
    /// });
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn reject_with<F, B>(self, reject: F) -> AcceptBaggageLayer<L, F>
    where
        F: Fn(&BaggageError) -> http::Response<B>,
    {
        AcceptBaggageLayer {
            layer: self.layer,
            acceptor: Acceptor {
                settings: self.acceptor.settings,
                reject: Arc::new(reject),
            },
        }
    }

    /// The [`ContextLayer`] inside.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    ///
    /// let layer = ContextLayer::new().accept_baggage();
    /// assert!(layer.get_ref().base().is_empty());
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &L {
        &self.layer
    }
}

impl<L: Clone, R> Clone for AcceptBaggageLayer<L, R> {
    fn clone(&self) -> Self {
        AcceptBaggageLayer {
            layer: self.layer.clone(),
            acceptor: self.acceptor.clone(),
        }
    }
}

impl<L: fmt::Debug, R> fmt::Debug for AcceptBaggageLayer<L, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("AcceptBaggageLayer");
        debug.field("layer", &self.layer);
        self.acceptor.debug_fields(&mut debug);
        debug.finish()
    }
}

impl fmt::Debug for Accept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Accept")
            .field("policy", &self.policy)
            .field("only_keys", &self.keys)
            .field("forward_unclaimed", &self.forward)
            .finish()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::Reject => "Reject",
            Policy::Ignore(_) => "Ignore",
        })
    }
}

impl<S, L: Layer<AcceptBaggage<S, R>>, R> Layer<S> for AcceptBaggageLayer<L, R> {
    type Service = L::Service;

    fn layer(&self, inner: S) -> L::Service {
        self.layer.layer(AcceptBaggage {
            inner,
            acceptor: Arc::new(self.acceptor.clone()),
        })
    }
}

/// How a server answers a bad `baggage` header: implemented by [`JsonBadRequest`] (the
/// default) and by every `Fn(&BaggageError) -> http::Response<B>`
/// ([`AcceptBaggageLayer::reject_with`]).
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::{BaggageError, JsonBadRequest, Reject};
///
/// let response: http::Response<String> = JsonBadRequest.reject(&BaggageError::NotText);
/// assert_eq!(response.status(), 400);
/// assert_eq!(response.headers()["content-type"], "application/json");
/// ```
pub trait Reject<B> {
    /// The answer to a request whose header is refused for `error`.
    fn reject(&self, error: &BaggageError) -> http::Response<B>;
}

impl<B, F: Fn(&BaggageError) -> http::Response<B>> Reject<B> for F {
    fn reject(&self, error: &BaggageError) -> http::Response<B> {
        self(error)
    }
}

/// The default answer to a bad `baggage` header: `400 Bad Request`, `application/json`, the
/// body [`BaggageError::to_json`]. For any body type that is `From<String>` (axum's `Body`,
/// `String`, `Full<Bytes>`).
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::baggage::{BaggageError, JsonBadRequest, Reject};
///
/// let error = BaggageError::BadEscape { key: "tenant".into() };
/// let response: http::Response<String> = JsonBadRequest.reject(&error);
/// assert!(response.body().contains(r#""entry":"tenant""#));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBadRequest;

impl<B: From<String>> Reject<B> for JsonBadRequest {
    fn reject(&self, error: &BaggageError) -> http::Response<B> {
        let mut response = http::Response::new(B::from(error.to_json()));
        *response.status_mut() = http::StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// What the layer hands each of its services: how the header is read, and how a bad one is
/// answered.
struct Acceptor<R> {
    settings: Accept,
    reject: Arc<R>,
}

impl<R> Acceptor<R> {
    /// Reads the `baggage` header of `headers` into the current context, or makes the answer
    /// to a bad one.
    fn accept<B>(&self, headers: &http::HeaderMap) -> Result<(), http::Response<B>>
    where
        R: Reject<B>,
    {
        // Straight from the map, not through `Carrier::get_all`, which collects the lines.
        let lines = headers.get_all(super::BAGGAGE);
        let mut iter = lines.iter();
        let accepted = match (iter.next(), iter.next()) {
            (None, _) => return Ok(()),
            (Some(line), None) => accept_line(line, &self.settings),
            (Some(_), Some(_)) => accept(
                lines
                    .iter()
                    .map(|line| line.to_str().map_err(|_| line.as_bytes())),
                &self.settings,
            ),
        };
        accepted.map_err(|err| self.reject.reject(&err))
    }

    /// Adds the settings and the answer's type to the `Debug` of the layer or the service.
    fn debug_fields(&self, debug: &mut fmt::DebugStruct<'_, '_>) {
        debug
            .field("settings", &self.settings)
            .field("reject", &std::any::type_name::<R>());
    }
}

impl<R> Clone for Acceptor<R> {
    fn clone(&self) -> Self {
        Acceptor {
            settings: self.settings.clone(),
            reject: Arc::clone(&self.reject),
        }
    }
}

/// The service inside a [`ContextLayer`] that
/// [accepts baggage](ContextLayer::accept_baggage): called in the request's context, it reads
/// the `baggage` header into it, then calls the wrapped service, or answers itself.
///
/// ```
/// # use context_core as contextvars;
/// use contextvars::tower::ContextLayer;
/// use tower_layer::Layer;
///
/// let service = ContextLayer::new().accept_baggage().layer("inner");
/// assert_eq!(*service.get_ref().get_ref(), "inner");
/// ```
pub struct AcceptBaggage<S, R = JsonBadRequest> {
    inner: S,
    /// Shared by the service's clones (a server clones its service for each request): one
    /// count to raise and lower.
    acceptor: Arc<Acceptor<R>>,
}

impl<S, R> AcceptBaggage<S, R> {
    /// The wrapped service.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::tower::ContextLayer;
    /// use tower_layer::Layer;
    ///
    /// assert_eq!(*ContextLayer::new().accept_baggage().layer(7).get_ref().get_ref(), 7);
    /// ```
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, R> Clone for AcceptBaggage<S, R> {
    fn clone(&self) -> Self {
        AcceptBaggage {
            inner: self.inner.clone(),
            acceptor: Arc::clone(&self.acceptor),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for AcceptBaggage<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("AcceptBaggage");
        debug.field("inner", &self.inner);
        self.acceptor.debug_fields(&mut debug);
        debug.finish()
    }
}

impl<S, R, ReqBody, ResBody> Service<http::Request<ReqBody>> for AcceptBaggage<S, R>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    R: Reject<ResBody>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = AcceptFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let state = match self.acceptor.accept(request.headers()) {
            Ok(()) => State::Called {
                future: self.inner.call(request),
            },
            Err(response) => State::Rejected {
                response: Some(response),
            },
        };
        AcceptFuture { state }
    }
}

pin_project! {
    /// The future of [`AcceptBaggage`]: the wrapped service's, or the answer to a bad header.
    ///
    /// ```
    /// # use context_core as contextvars;
    /// use contextvars::baggage::AcceptFuture;
    ///
    /// fn is_a_future<F: std::future::Future>(_: &F) {}
    /// # let _ = is_a_future::<AcceptFuture<std::future::Ready<Result<http::Response<String>, ()>>, String>>;
    /// ```
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct AcceptFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Called {
            #[pin]
            future: F,
        },
        Rejected {
            response: Option<http::Response<B>>,
        },
    }
}

impl<F, B, E> Future for AcceptFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future } => future.poll(cx),
            StateProj::Rejected { response } => Poll::Ready(Ok(response
                .take()
                .expect("an `AcceptFuture` is not polled after it is ready"))),
        }
    }
}

impl<F, B> fmt::Debug for AcceptFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("AcceptFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
