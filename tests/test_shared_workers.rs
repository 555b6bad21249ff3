//! Shared workers: `tower::buffer::Buffer` calls the services below it from one worker task,
//! spawned with plain `tokio::spawn`, for every request. With `AcrossWorkerLayer` (or
//! `CarryContextLayer` above the worker and `ReenterContextLayer` below it), the services
//! under the worker run each request's `call`, and its future, in that request's context, may
//! `set` there, and never take the worker down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::StatusCode;
use contextvars::context_var;
use contextvars::tower::{AcrossWorkerLayer, CarryContextLayer, ContextLayer, ReenterContextLayer};
use tower::buffer::{Buffer, BufferLayer};
use tower::limit::{ConcurrencyLimit, ConcurrencyLimitLayer};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

#[path = "support/http.rs"]
mod http;

#[context_var]
static TENANT: String;

/// Set by the service under the worker, in its `call`.
#[context_var]
static MARK: String;

fn tenant_hook(request: &mut Request) {
    if let Some(tenant) = request
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
    {
        let _ = TENANT.set(tenant.to_string());
    }
}

/// A service that does work in `poll_ready` and `call` (reads the tenant, sets `MARK`: a
/// `set` panics where no context is current) and in its future (after awaits, in a spawned
/// task).
#[derive(Clone)]
struct WorksInCall;

impl Service<Request> for WorksInCall {
    type Response = String;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<String, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        // Under a worker, readiness belongs to no request: this runs in a context of its own.
        let _ = MARK.set("set while getting ready".into());
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request) -> Self::Future {
        let in_call = TENANT.get().unwrap_or_else(|| "none".into());
        let _ = MARK.set(format!("{in_call}-marked"));
        Box::pin(async move {
            tokio::task::yield_now().await;
            let spawned = contextvars::spawn(async { TENANT.get() })
                .await
                .unwrap()
                .unwrap_or_else(|| "none".into());
            tokio::task::yield_now().await;
            let after = TENANT.get().unwrap_or_else(|| "none".into());
            Ok(format!(
                "{in_call} {after} {spawned} {}",
                MARK.get().unwrap()
            ))
        })
    }
}

fn expected(tenant: &str) -> String {
    format!("{tenant} {tenant} {tenant} {tenant}-marked")
}

fn request(tenant: &str) -> Request {
    Request::get("/")
        .header("x-tenant-id", tenant)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffer_and_concurrency_limit_under_the_layer_serve_each_request_in_its_context_over_tcp() {
    // The whole stack is the route's service: `Router::layer` would put axum's `Route`, which
    // calls its handler lazily from its future, between the worker and `WorksInCall`.
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new().on_request(tenant_hook))
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }))
        .layer(AcrossWorkerLayer::new(BufferLayer::new(64)))
        .layer(ConcurrencyLimitLayer::new(4))
        .service(WorksInCall);
    let app = Router::new().route_service("/", service);
    let addr = http::serve(app).await;

    let connections: Vec<_> = (0..32)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = http::Client::connect(addr).await;
                for r in 0..20 {
                    let tenant = format!("tenant-{c}-{r}");
                    let answer = client.get("/", &[("x-tenant-id", &tenant)]).await;
                    assert_eq!(
                        (answer.status, answer.body),
                        (200, expected(&tenant)),
                        "request {r} of connection {c}"
                    );
                }
            })
        })
        .collect();
    for connection in connections {
        connection.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_built_buffer_between_the_two_layers_carries_every_request_context() {
    // `Buffer::new` by hand: `CarryContextLayer` above it, `ReenterContextLayer` below it.
    let below = ReenterContextLayer.layer(ConcurrencyLimit::new(WorksInCall, 3));
    let worker = Buffer::new(below, 16);
    let service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(CarryContextLayer.layer(worker));
    let requests: Vec<_> = (0..500)
        .map(|i| {
            let tenant = format!("t{i}{}", "x".repeat(i % 5));
            // Plain `tokio::spawn`, as a server's connection task.
            let answer = tokio::spawn(service.clone().oneshot(request(&tenant)));
            (tenant, answer)
        })
        .collect();
    for (tenant, answer) in requests {
        assert_eq!(answer.await.unwrap().unwrap(), expected(&tenant));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_carries_no_context_is_served_in_an_empty_one_and_the_worker_lives_on() {
    // No `ContextLayer`, no `CarryContextLayer`: nothing to re-enter.
    let service = Buffer::new(ReenterContextLayer.layer(WorksInCall), 8);
    for round in 0..3 {
        let requests: Vec<_> = (0..50)
            .map(|_| tokio::spawn(service.clone().oneshot(Request::new(Body::empty()))))
            .collect();
        for request in requests {
            let answer = request.await.unwrap().expect("the worker is alive");
            assert_eq!(answer, "none none none none-marked", "round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_future_dropped_midway_under_the_worker_is_dropped_in_its_request_context() {
    use std::sync::{Arc, Mutex};

    /// Records the tenant its `Drop` sees, and sets a variable there.
    struct OnDrop(Arc<Mutex<Vec<Option<String>>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(TENANT.get());
            let _ = MARK.set("set while dropped".into());
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen);
    // A service whose future never finishes: the caller gives up on it.
    let pending = tower::service_fn(move |_: Request| {
        let on_drop = OnDrop(Arc::clone(&recorder));
        async move {
            let _on_drop = on_drop;
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(String::new())
        }
    });
    let service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(AcrossWorkerLayer::new(BufferLayer::new(8)).layer(pending));
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let call = service.clone().oneshot(request(&format!("t{i}")));
            tokio::spawn(async move {
                tokio::time::timeout(std::time::Duration::from_millis(20), call)
                    .await
                    .expect_err("never answers");
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let mut expected: Vec<_> = (0..20).map(|i| Some(format!("t{i}"))).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reenter_without_a_worker_in_between_keeps_the_request_context() {
    // A `ReenterContextLayer` with no `CarryContextLayer` above it, right under the layer.
    let service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(ReenterContextLayer.layer(WorksInCall));
    let answers: Vec<_> = (0..50)
        .map(|i| {
            let tenant = format!("t{i}");
            (
                tokio::spawn(service.clone().oneshot(request(&tenant))),
                tenant,
            )
        })
        .collect();
    for (answer, tenant) in answers {
        assert_eq!(answer.await.unwrap().unwrap(), expected(&tenant));
    }
}
