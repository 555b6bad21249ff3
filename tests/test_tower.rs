//! The tower layer: each request runs in a fresh copy of the base context captured when the
//! layer was built; the hook and the inner service's `call` run inside it; nothing crosses
//! between requests; bodies streamed after the handler returns poll in the request's context.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::routing::get;
use contextvars::tower::ContextLayer;
use contextvars::{Context, FutureExt, context_var};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt, service_fn};

#[context_var]
static REGION: &'static str;

#[context_var]
static TENANT: String;

#[context_var]
static STEP: u32 = 0;

/// Reads the `x-tenant-id` header into `TENANT`, inside the request's context.
fn tenant_hook(request: &mut Request) {
    if let Some(tenant) = request
        .headers()
        .get("x-tenant-id")
        .and_then(|v| v.to_str().ok())
    {
        let _ = TENANT.set(tenant.to_string());
    }
}

fn request(tenant: &str) -> Request {
    Request::get("/")
        .header("x-tenant-id", tenant)
        .body(Body::empty())
        .unwrap()
}

async fn text(body: Body) -> String {
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn requests_start_from_the_base_captured_when_the_layer_is_built() {
    let _region = REGION.set("eu-west");
    let layer = ContextLayer::new();
    let _later = REGION.set("us-east");
    let service = layer.layer(service_fn(|(): ()| async {
        Ok::<_, Infallible>(REGION.get())
    }));
    assert_eq!(service.oneshot(()).await.unwrap(), Some("eu-west"));

    let explicit = ContextLayer::with_base(Context::new().with_value(&REGION, "ap-south"));
    let service = explicit.layer(service_fn(|(): ()| async {
        Ok::<_, Infallible>(REGION.get())
    }));
    assert_eq!(service.oneshot(()).await.unwrap(), Some("ap-south"));
}

#[tokio::test]
async fn what_a_request_sets_reaches_neither_the_next_request_nor_the_base() {
    let _region = REGION.set("eu-west");
    let mut service = ContextLayer::new().layer(service_fn(|(): ()| async {
        let seen = (STEP.get(), REGION.get());
        let _ = STEP.set(seen.0 + 1);
        let _ = REGION.set("changed by a request");
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(seen)
    }));
    for _ in 0..3 {
        let seen = service.ready().await.unwrap().call(()).await.unwrap();
        assert_eq!(seen, (0, Some("eu-west")));
    }
    assert_eq!((STEP.get(), REGION.get()), (0, Some("eu-west")));
}

/// A service that does its work in `call`, not in the future it returns.
#[derive(Clone)]
struct WorksInCall;

impl Service<Request> for WorksInCall {
    type Response = (Option<String>, u32);
    type Error = Infallible;
    type Future = std::future::Ready<Result<(Option<String>, u32), Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request) -> Self::Future {
        let step = STEP.get() + 1;
        let _ = STEP.set(step); // panics unless `call` runs in a context
        std::future::ready(Ok((TENANT.get(), step)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_and_call_run_inside_the_request_context_even_in_a_task_without_one() {
    let service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(WorksInCall);
    // A server's connection task: plain `tokio::spawn`, no context of its own.
    let answer = tokio::spawn(async move {
        let mut service = service;
        let first = service
            .ready()
            .await
            .unwrap()
            .call(request("acme"))
            .await
            .unwrap();
        let second = service
            .ready()
            .await
            .unwrap()
            .call(request("globex"))
            .await
            .unwrap();
        (first, second, TENANT.get())
    })
    .await
    .unwrap();
    assert_eq!(
        answer,
        ((Some("acme".into()), 1), (Some("globex".into()), 1), None)
    );
}

#[tokio::test]
async fn the_hook_may_edit_the_request() {
    let layer = ContextLayer::new().on_request(|request: &mut Request| {
        request
            .headers_mut()
            .insert("x-request-id", "generated".parse().unwrap());
        let _ = TENANT.set("from-hook".into());
    });
    let service = layer.layer(service_fn(|request: Request| async move {
        let id = request.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        Ok::<_, Infallible>((id, TENANT.get()))
    }));
    let answer = service.oneshot(request("ignored")).await.unwrap();
    assert_eq!(
        answer,
        ("generated".to_string(), Some("from-hook".to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_through_axum_each_see_only_their_own_values() {
    let _region = REGION.set("eu-west");
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                let before = TENANT.get().unwrap();
                for i in 0..(before.len() % 4) {
                    tokio::time::sleep(Duration::from_micros(50 * i as u64)).await;
                    tokio::task::yield_now().await;
                }
                let spawned = contextvars::spawn(async { TENANT.get() })
                    .await
                    .unwrap()
                    .unwrap();
                let after = TENANT.get().unwrap();
                format!("{before} {spawned} {after} {}", REGION.get().unwrap())
            }),
        )
        .layer(ContextLayer::new().on_request(tenant_hook));
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let tenant = format!("t{i}{}", "x".repeat(i % 7));
                let response = app.oneshot(request(&tenant)).await.unwrap();
                (tenant, text(response.into_body()).await)
            })
        })
        .collect();
    for task in tasks {
        let (tenant, answer) = task.await.unwrap();
        assert_eq!(answer, format!("{tenant} {tenant} {tenant} eu-west"));
    }
}

/// A body that writes the tenant it sees at each poll, three times, over three polls.
struct TenantStream {
    left: u32,
}

impl futures_core::Stream for TenantStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        cx.waker().wake_by_ref();
        let seen = format!(
            "{}/{};",
            TENANT.get().unwrap_or_else(|| "none".into()),
            STEP.get()
        );
        Poll::Ready(Some(Ok(Bytes::from(seen))))
    }
}

/// Handler that sets a value, then answers with a body that streams later.
async fn streaming() -> Body {
    let _ = STEP.set(7);
    Body::from_stream(TenantStream { left: 3 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_body_in_context_a_streaming_body_polls_in_the_request_context() {
    let app = Router::new().route("/", get(streaming)).layer(
        ContextLayer::new()
            .body_in_context()
            .on_request(tenant_hook),
    );
    let response = app.oneshot(request("acme")).await.unwrap();
    // The server polls the body later, in its connection task, which has no context.
    let body = tokio::spawn(text(response.into_body())).await.unwrap();
    assert_eq!(body, "acme/7;acme/7;acme/7;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_body_in_context_a_streaming_body_sees_no_context() {
    let app = Router::new()
        .route("/", get(streaming))
        .layer(ContextLayer::new().on_request(tenant_hook));
    let response = app.oneshot(request("acme")).await.unwrap();
    let body = tokio::spawn(text(response.into_body())).await.unwrap();
    assert_eq!(body, "none/0;none/0;none/0;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_streamed_by_a_real_hyper_server_polls_in_the_request_context() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = Router::new().route("/", get(streaming)).layer(
        ContextLayer::new()
            .body_in_context()
            .on_request(tenant_hook),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut answers = Vec::new();
    for tenant in ["acme", "globex"] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-tenant-id: {tenant}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        answers.push(response);
    }
    server.abort();
    for (tenant, response) in ["acme", "globex"].iter().zip(&answers) {
        // Chunked: three chunks, each written when hyper polled the body.
        assert!(
            response.contains("transfer-encoding: chunked"),
            "{response}"
        );
        assert_eq!(
            response.matches(&format!("{tenant}/7;")).count(),
            3,
            "{response}"
        );
        assert!(!response.contains("none/"), "{response}");
    }
}

#[tokio::test]
async fn a_request_future_dropped_midway_is_dropped_inside_its_context() {
    struct RecordOnDrop(Arc<Mutex<Vec<Option<String>>>>);
    impl Drop for RecordOnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(TENANT.get());
        }
    }
    let seen_on_drop = Arc::new(Mutex::new(Vec::new()));
    let recorder = Arc::clone(&seen_on_drop);
    let mut service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(service_fn(move |_: Request| {
            let guard = RecordOnDrop(Arc::clone(&recorder));
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(())
            }
        }));
    let mut future = Box::pin(service.ready().await.unwrap().call(request("acme")));
    assert!(poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending())).await);
    drop(future);
    assert_eq!(*seen_on_drop.lock().unwrap(), [Some("acme".to_string())]);
    assert_eq!(TENANT.get(), None);
}

#[tokio::test]
async fn the_response_future_exposes_the_request_context() {
    let mut service = ContextLayer::new()
        .on_request(tenant_hook)
        .layer(service_fn(|_: Request| async { Ok::<_, Infallible>(()) }));
    let future = service.ready().await.unwrap().call(request("acme"));
    assert_eq!(
        future.context().get(&TENANT).map(String::as_str),
        Some("acme")
    );
    future.await.unwrap();
}

/// What `poll_ready` saw: `REGION` and `STEP`.
type Seen = Arc<Mutex<Vec<(Option<&'static str>, u32)>>>;

/// A service whose readiness depends on context: it records what `poll_ready` sees.
#[derive(Clone)]
struct ReadyReadsContext(Seen);

impl Service<()> for ReadyReadsContext {
    type Response = ();
    type Error = Infallible;
    type Future = std::future::Ready<Result<(), Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        let step = STEP.get();
        let _ = STEP.set(step + 1); // panics unless `poll_ready` runs in a context
        self.0.lock().unwrap().push((REGION.get(), step));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_ready_runs_in_a_fresh_copy_of_the_base_context() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = ContextLayer::with_base(Context::new().with_value(&REGION, "eu-west"));
    let mut service = layer.layer(ReadyReadsContext(Arc::clone(&seen)));
    // In a task without a context, as a server's connection task is.
    tokio::spawn(async move {
        for _ in 0..2 {
            service.ready().await.unwrap().call(()).await.unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [(Some("eu-west"), 0), (Some("eu-west"), 0)]
    );
}

/// Calls `service` and, before polling the call's future, polls other futures on this thread,
/// each in a context of its own for the first time: none of them may read the request's
/// values, which the handler then reads (`REGION`, and `tenant` in `TENANT`).
async fn others_read_nothing_of_a_call_made<S>(mut service: S, tenant: &str)
where
    S: Service<Request, Response = (Option<&'static str>, Option<String>), Error = Infallible>,
{
    // Called, not polled yet: the call left the read cache ready for the handler's reads of
    // the request's values.
    let pending = service.ready().await.unwrap().call(request("ignored"));
    let other = async { (REGION.get(), TENANT.get()) }.with_context(Context::new());
    assert_eq!(other.await, (None, None));
    let task = contextvars::spawn(async { (REGION.get(), TENANT.get()) });
    assert_eq!(task.await.unwrap(), (None, None));
    let own = Context::new().with_value(&TENANT, "own".into());
    let with_own = async { (REGION.get(), TENANT.get()) }.with_context(own);
    assert_eq!(with_own.await, (None, Some("own".into())));
    let seen = pending.await.unwrap();
    assert_eq!(seen, (Some("eu-west"), Some(tenant.to_string())));
}

#[tokio::test]
async fn what_a_call_leaves_for_its_handlers_reads_is_never_read_by_another_future() {
    let handler =
        service_fn(|_: Request| async { Ok::<_, Infallible>((REGION.get(), TENANT.get())) });
    // With a hook that sets a value.
    let with_hook = ContextLayer::with_base(Context::new().with_value(&REGION, "eu-west"))
        .on_request(|_: &mut Request| {
            let _ = TENANT.set("the request's".into());
        });
    others_read_nothing_of_a_call_made(with_hook.layer(handler), "the request's").await;
    // Without one: the base's values only.
    let without_hook = ContextLayer::with_base(
        Context::new()
            .with_value(&REGION, "eu-west")
            .with_value(&TENANT, "the base's".into()),
    );
    others_read_nothing_of_a_call_made(without_hook.layer(handler), "the base's").await;
}
