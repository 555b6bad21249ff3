//! The library's own bookkeeping in a context (which request a context serves, how a baggage
//! entry arrived) flows with it but is not part of the mapping view: `len`, `is_empty`, `iter`
//! and `Debug` show the application's variables only.

use std::convert::Infallible;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Request, Response};
use contextvars::tower::ContextLayer;
use contextvars::{Context, context_var};
use tower::{Layer, ServiceExt, service_fn};

#[context_var(baggage = "tenant")]
static TENANT: String;

type View = (usize, bool, String, Vec<&'static str>);

/// What the last handler saw of its context's mapping view.
static SEEN: Mutex<Option<View>> = Mutex::new(None);

/// A handler that records its context's mapping view.
async fn view(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    let ctx = Context::current();
    let names = ctx.iter().map(|(name, _)| name).collect();
    *SEEN.lock().unwrap() = Some((ctx.len(), ctx.is_empty(), format!("{ctx:?}"), names));
    Ok(Response::new(Body::empty()))
}

fn seen() -> View {
    SEEN.lock().unwrap().take().expect("the handler ran")
}

// The two tests share `SEEN`: one test function, two scenarios.
#[tokio::test]
async fn the_mapping_view_shows_only_the_applications_bindings() {
    a_request_context_shows_only_the_applications_bindings().await;
    baggage_received_as_written_elsewhere_adds_no_binding_to_the_view().await;
}

async fn a_request_context_shows_only_the_applications_bindings() {
    let service = ContextLayer::new().layer(service_fn(view));
    service.oneshot(Request::new(Body::empty())).await.unwrap();
    let (len, empty, debug, names) = seen();
    assert_eq!((len, empty), (0, true), "{debug} {names:?}");
    assert_eq!(debug, "Context {}");
}

async fn baggage_received_as_written_elsewhere_adds_no_binding_to_the_view() {
    // An escape written in lowercase and a property: forwarding them byte for byte needs a
    // record of how they came, which must stay out of the view.
    let request = Request::builder()
        .header("baggage", "tenant=a%2cb;p=1")
        .body(Body::empty())
        .unwrap();
    let service = ContextLayer::new().accept_baggage().layer(service_fn(view));
    service.oneshot(request).await.unwrap();
    let (len, _, debug, names) = seen();
    assert_eq!(names, ["TENANT"], "{debug}");
    assert_eq!(len, 1);
    assert_eq!(debug, r#"Context {"TENANT": "a,b"}"#);
}
