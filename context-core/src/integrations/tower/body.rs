//! What the layer does with each response: passes it on (`KeepResponse`, the default), or
//! wraps an `http::Response`'s body in a `ContextBody` that streams, and is dropped, in the
//! request's context (`BodyInContext`, set by `ContextLayer::body_in_context`).

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use pin_project_lite::pin_project;

use crate::context::Context;

/// What a [`ContextLayer`](super::ContextLayer) does with each response once the service's future
/// has produced it, given the request's context as the future left it.
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

/// Passes responses on untouched: the default of [`ContextLayer`](super::ContextLayer).
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

/// Wraps an `http::Response`'s body in a [`ContextBody`] that polls in (a copy of) the request's
/// context: set by [`ContextLayer::body_in_context`](super::ContextLayer::body_in_context).
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

pin_project! {
    /// An HTTP body that polls, and is dropped, inside a context: the request's, for bodies that
    /// stream after the handler has returned. Made by
    /// [`ContextLayer::body_in_context`](super::ContextLayer::body_in_context), or by hand with
    /// [`ContextBody::new`].
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
