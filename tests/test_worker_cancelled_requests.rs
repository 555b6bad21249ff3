//! B39 through a shared worker (`tower::buffer::Buffer` under `AcrossWorkerLayer`), served
//! over TCP: a request whose client goes away while it waits in the buffer's queue leaves
//! its carried context in the queue, and the worker task drops it when it gets there. A value
//! of that context whose `Drop` panics must not take the worker down: the next requests are
//! served as before.

#[path = "support/http.rs"]
mod http;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::http::StatusCode;
use contextvars::context_var;
use contextvars::tower::{AcrossWorkerLayer, ContextLayer};
use tokio::sync::Notify;
use tower::buffer::BufferLayer;
use tower::limit::ConcurrencyLimitLayer;
use tower::{BoxError, Service, ServiceBuilder};

#[context_var]
static TENANT: String;

/// A value whose `Drop` panics.
struct Panics;

impl Drop for Panics {
    fn drop(&mut self) {
        panic!("a queued request's value panics on drop");
    }
}

/// Counts its drops, and records whether each read the request's tenant.
struct Counted(String);

static COUNTED: AtomicUsize = AtomicUsize::new(0);
static COUNTED_INSIDE: AtomicUsize = AtomicUsize::new(0);

impl Drop for Counted {
    fn drop(&mut self) {
        COUNTED.fetch_add(1, Ordering::SeqCst);
        if TENANT.get().as_deref() == Some(self.0.as_str()) {
            COUNTED_INSIDE.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[context_var]
static PANICS: Panics;

#[context_var]
static VALUE: Counted;

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The tenants whose request the hook has seen.
static HOOKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The request hook: the tenant, and the values the test asks for.
fn hook(request: &mut Request) {
    let tenant = header(request, "x-tenant").unwrap_or_default();
    HOOKED.lock().unwrap().push(tenant.clone());
    let _ = TENANT.set(tenant.clone());
    if request.headers().contains_key("x-panics") {
        let _ = PANICS.set(Panics);
    }
    let _ = VALUE.set(Counted(tenant));
}

/// Answers with the tenant; a request with `x-block` says it got there, then waits for the
/// gate to open, holding the concurrency limit's only permit meanwhile.
#[derive(Clone)]
struct Gate {
    open: Arc<Notify>,
    reached: Arc<Notify>,
}

impl Service<Request> for Gate {
    type Response = String;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<String, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let block = request.headers().contains_key("x-block");
        let open = Arc::clone(&self.open);
        if block {
            self.reached.notify_one();
        }
        Box::pin(async move {
            if block {
                open.notified().await;
            }
            Ok(TENANT.get().unwrap_or_default())
        })
    }
}

fn gate() -> Gate {
    Gate {
        open: Arc::new(Notify::new()),
        reached: Arc::new(Notify::new()),
    }
}

async fn serve(gate: &Gate) -> std::net::SocketAddr {
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new().on_request(hook as fn(&mut Request)))
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }))
        .layer(AcrossWorkerLayer::new(BufferLayer::new(8)))
        .layer(ConcurrencyLimitLayer::new(1))
        .service(gate.clone());
    http::serve(Router::new().route_service("/", service)).await
}

/// One round: a blocked request holds the worker's service; a request queued behind it (with
/// a panicking value if `panics`) is given up by its client; the blocked one is released; then
/// a new request must be served.
async fn round(addr: std::net::SocketAddr, gate: &Gate, name: &str, panics: bool) -> (u16, String) {
    let blocked = tokio::spawn({
        let tenant = format!("{name}-blocked");
        async move {
            let mut client = http::Client::connect(addr).await;
            client
                .get("/", &[("x-tenant", &tenant), ("x-block", "1")])
                .await
                .body
        }
    });
    let reached = tokio::time::timeout(Duration::from_secs(5), gate.reached.notified());
    reached
        .await
        .expect("the blocked request reaches the service");

    let tenant = format!("{name}-queued");
    let mut headers = vec![("x-tenant", tenant.as_str())];
    if panics {
        headers.push(("x-panics", "1"));
    }
    let mut queued = http::Client::connect(addr).await;
    let in_queue = async {
        while !HOOKED.lock().unwrap().contains(&tenant) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The hook ran in the layer's `call`, which goes on to put the request in the queue.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::select! {
        answer = queued.try_get("/", &headers) => {
            panic!("{name}: answered while queued behind the blocked one: {:?}", answer.map(|a| a.body))
        }
        () = in_queue => {}
    }
    drop(queued);
    // The server notices the closed connection and drops its side of the request.
    tokio::time::sleep(Duration::from_millis(50)).await;

    gate.open.notify_one();
    assert_eq!(blocked.await.unwrap(), format!("{name}-blocked"));

    let mut next = http::Client::connect(addr).await;
    let tenant = format!("{name}-next");
    let answer = next.get("/", &[("x-tenant", &tenant)]).await;
    (answer.status, answer.body)
}

/// Without a panicking value: the queued request's values are dropped, inside its context,
/// and the worker serves on (the control for the test below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_in_the_queue_is_dropped_and_the_worker_serves_on() {
    let gate = gate();
    let addr = serve(&gate).await;
    let before = COUNTED.load(Ordering::SeqCst);
    let answer = round(addr, &gate, "control", false).await;
    assert_eq!(answer, (200, "control-next".to_string()));
    // The blocked, the queued and the next request's values, each dropped inside its context.
    for _ in 0..100 {
        if COUNTED.load(Ordering::SeqCst) >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(COUNTED.load(Ordering::SeqCst) >= before + 3);
    assert_eq!(
        COUNTED.load(Ordering::SeqCst),
        COUNTED_INSIDE.load(Ordering::SeqCst)
    );
}

/// B39: the queued request's value panics on drop. The worker task drops it (its client gave
/// up while it was queued) and the panic must stay that request's: the worker goes on serving
/// every later request. (Before the fix, the carried `Context`'s `Drop` raised the panic again
/// in the buffer's worker task, which died; every later request got `500 buffer's worker
/// closed unexpectedly`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_value_of_a_request_given_up_in_the_queue_does_not_kill_the_worker() {
    let gate = gate();
    let addr = serve(&gate).await;
    let answer = round(addr, &gate, "panics", true).await;
    assert_eq!(answer, (200, "panics-next".to_string()));
}

/// The same without a server: the request future waiting in the buffer's queue is dropped (its
/// task aborted) instead of a client going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_dropped_with_a_panicking_value_leaves_the_worker_serving() {
    use axum::body::Body;
    use tower::ServiceExt;

    let gate = gate();
    let service = ServiceBuilder::new()
        .layer(ContextLayer::new().on_request(hook as fn(&mut Request)))
        .layer(AcrossWorkerLayer::new(BufferLayer::new(8)))
        .layer(ConcurrencyLimitLayer::new(1))
        .service(gate.clone());
    let request = |tenant: &str, extra: &str| {
        Request::get("/")
            .header("x-tenant", tenant)
            .header(extra, "1")
            .body(Body::empty())
            .unwrap()
    };
    let blocked = tokio::spawn(service.clone().oneshot(request("blocked", "x-block")));
    tokio::time::timeout(Duration::from_secs(5), gate.reached.notified())
        .await
        .unwrap();
    let queued = tokio::spawn(service.clone().oneshot(request("repro-queued", "x-panics")));
    while !HOOKED.lock().unwrap().iter().any(|t| t == "repro-queued") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    queued.abort();
    let _ = queued.await;
    gate.open.notify_one();
    assert_eq!(blocked.await.unwrap().unwrap(), "blocked");
    let next = service.oneshot(request("next", "x-next")).await;
    assert_eq!(next.ok().as_deref(), Some("next"), "the worker is gone");
}

/// The worker's other drop: the future a worker made for a request (`ReenterContext`'s) and
/// then dropped itself, its caller gone (`Buffer` drops the future when the caller's channel is
/// closed), holding the last reference to the request's values. A value whose `Drop` panics
/// must not end the task that drops it, and the request's other values are still dropped
/// inside the request's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_future_the_worker_drops_keeps_its_values_panic() {
    use axum::body::Body;
    use contextvars::Context;
    use contextvars::tower::{CarriesContext, ReenterContextLayer};
    use tower::Layer;

    let mut service = ReenterContextLayer.layer(tower::service_fn(|_: Request| async {
        Ok::<_, Infallible>("answer")
    }));
    let mut request = Request::get("/").body(Body::empty()).unwrap();
    request.put_context(
        Context::new()
            .with_value(&TENANT, "worker-dropped".to_string())
            .with_value(&PANICS, Panics)
            .with_value(&WITNESS, Witness),
    );
    let future = service.call(request);
    let worker = tokio::spawn(async move {
        drop(future);
        "served on"
    });
    assert_eq!(worker.await.unwrap(), "served on");
    assert_eq!(
        *WITNESSED.lock().unwrap(),
        [Some("worker-dropped".to_string())]
    );
}

/// Records the tenant its `Drop` reads.
struct Witness;

static WITNESSED: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

impl Drop for Witness {
    fn drop(&mut self) {
        WITNESSED.lock().unwrap().push(TENANT.get());
    }
}

#[context_var]
static WITNESS: Witness;

/// The other side of the test above: a request's future that completes below the worker drops
/// the request's values in the poll that completes it, in the task that awaited it, where a
/// value whose `Drop` panics is that task's panic, as for any request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_requests_panicking_value_is_the_awaiting_tasks_panic() {
    use axum::body::Body;
    use contextvars::Context;
    use contextvars::tower::{CarriesContext, ReenterContextLayer};
    use tower::Layer;

    let mut service = ReenterContextLayer.layer(tower::service_fn(|_: Request| async {
        let _ = PANICS.set(Panics);
        Ok::<_, Infallible>("answer")
    }));
    let mut request = Request::get("/").body(Body::empty()).unwrap();
    request.put_context(Context::new().with_value(&TENANT, "completed".to_string()));
    let future = service.call(request);
    let awaited = tokio::spawn(future).await;
    assert!(
        awaited
            .as_ref()
            .is_err_and(tokio::task::JoinError::is_panic),
        "{awaited:?}"
    );
}
