//! Nested layers through any executor, and the failure paths of a layer, over a real axum
//! server on a loopback port: a `ContextLayer` called from a `LocalSet` task inside another
//! layer's handler builds on the outer request's context where that context flowed to the task
//! (and on its own base where none did); an asynchronous hook that panics, answers early or
//! never returns loses no request's context and gives none to the next request on the
//! connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contextvars::tower::ContextLayer;
use contextvars::{Context, context_var};
use tokio::runtime::Handle;
use tokio::task::LocalSet;
use tower::{Layer, ServiceExt, service_fn};

#[path = "support/http.rs"]
mod http;

#[context_var]
static REQUEST_ID: String;

#[context_var]
static TENANT: String;

#[context_var]
static REGION: &'static str;

/// Each probe's tenant and the tenant it was dropped under.
type Drops = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A value whose `Drop` records the tenant it is dropped under.
struct Probe(Drops, String);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.lock().unwrap().push((self.1.clone(), TENANT.get()));
    }
}

#[context_var]
static PROBE: Probe;

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

fn or_none(value: Option<String>) -> String {
    value.unwrap_or_else(|| "none".into())
}

/// Every variable, read after an await.
async fn whoami() -> String {
    tokio::task::yield_now().await;
    format!(
        "{} {} {}",
        or_none(REQUEST_ID.get()),
        or_none(TENANT.get()),
        REGION.get().unwrap_or("none")
    )
}

/// How the handler reaches the inner service: a `LocalSet` on a blocking thread or on the
/// handler's own worker thread (`block_in_place`), its task spawned with
/// `contextvars::spawn_local` (inheriting the handler's context) or plain `spawn_local`.
#[derive(Clone, Copy, Debug)]
enum Via {
    BlockingThread,
    InPlaceInheriting,
    InPlacePlain,
}

impl Via {
    const ALL: [Via; 3] = [
        Via::BlockingThread,
        Via::InPlaceInheriting,
        Via::InPlacePlain,
    ];

    fn path(self) -> &'static str {
        match self {
            Via::BlockingThread => "/blocking-thread",
            Via::InPlaceInheriting => "/in-place-inheriting",
            Via::InPlacePlain => "/in-place-plain",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_called_from_a_local_set_task_builds_on_the_outer_request() {
    // The inner layer's own base, which its requests start from where no outer request's
    // context reached them.
    let inner = ContextLayer::with_base(Context::new().with_value(&REGION, "inner-base"))
        .on_request(|request: &mut axum::http::Request<()>| {
            if let Some(tenant) = request.headers().get("x-tenant-id") {
                let _ = TENANT.set(tenant.to_str().unwrap().to_string());
            }
        })
        .layer(service_fn(|_: axum::http::Request<()>| async {
            Ok::<_, Infallible>(whoami().await)
        }));

    let handler = move |via: Via| {
        let inner = inner.clone();
        move |request: Request| {
            let inner = inner.clone();
            async move {
                let mut inner_request = axum::http::Request::new(());
                if let Some(tenant) = header(&request, "x-tenant-id") {
                    inner_request
                        .headers_mut()
                        .insert("x-tenant-id", tenant.parse().unwrap());
                }
                let call = inner.oneshot(inner_request);
                let seen = match via {
                    Via::BlockingThread => {
                        let handle = Handle::current();
                        contextvars::spawn_blocking(move || {
                            let local = LocalSet::new();
                            handle.block_on(local.run_until(async move {
                                contextvars::spawn_local(call).await.unwrap()
                            }))
                        })
                        .await
                        .unwrap()
                    }
                    Via::InPlaceInheriting => tokio::task::block_in_place(|| {
                        let local = LocalSet::new();
                        Handle::current().block_on(local.run_until(async move {
                            contextvars::spawn_local(call).await.unwrap()
                        }))
                    }),
                    Via::InPlacePlain => tokio::task::block_in_place(|| {
                        let local = LocalSet::new();
                        Handle::current().block_on(local.run_until(async move {
                            tokio::task::spawn_local(call).await.unwrap()
                        }))
                    }),
                };
                // What the inner layer set stays there.
                format!("{} | {}", seen.unwrap(), whoami().await)
            }
        }
    };

    let _region = REGION.set("eu-west");
    let mut app = Router::new();
    for via in Via::ALL {
        app = app.route(via.path(), get(handler(via)));
    }
    let app = app.layer(ContextLayer::new().on_request(|request: &mut Request| {
        if let Some(id) = header(request, "x-request-id") {
            let _ = REQUEST_ID.set(id);
        }
    }));
    let addr = http::serve(app).await;

    let connections: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = http::Client::connect(addr).await;
                for r in 0..12 {
                    let (id, tenant) = (format!("r{c}-{r}"), format!("t{c}-{r}"));
                    let via = Via::ALL[(c + r) % 3];
                    let answer = client
                        .get(
                            via.path(),
                            &[("x-request-id", &id), ("x-tenant-id", &tenant)],
                        )
                        .await;
                    let expected = match via {
                        // The outer request's context flowed to the task: the inner request
                        // builds on it (its request id and region) and adds its tenant.
                        Via::BlockingThread | Via::InPlaceInheriting => {
                            format!("{id} {tenant} eu-west | {id} none eu-west")
                        }
                        // Nothing flowed to a plain task: the inner layer's own base.
                        Via::InPlacePlain => {
                            format!("none {tenant} inner-base | {id} none eu-west")
                        }
                    };
                    assert_eq!((answer.status, answer.body), (200, expected), "{via:?}");
                }
            })
        })
        .collect();
    for connection in connections {
        connection.await.unwrap();
    }
}

/// Polls a future, turning a panic into an `Err`.
struct CatchUnwind(Pin<Box<dyn Future<Output = Response> + Send>>);

impl Future for CatchUnwind {
    type Output = Result<Response, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(response)) => Poll::Ready(Ok(response)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Outside the layer: a panic becomes a 500 and a request that takes too long a 504, so that
/// the connection goes on to its next request.
async fn catch_and_time_out(request: Request, next: Next) -> Response {
    let run = CatchUnwind(Box::pin(next.run(request)));
    match tokio::time::timeout(Duration::from_millis(200), run).await {
        Ok(Ok(response)) => response,
        Ok(Err(())) => (StatusCode::INTERNAL_SERVER_ERROR, "panicked").into_response(),
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "timed out").into_response(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_hook_that_panics_errs_or_never_returns_leaks_nothing_to_the_next_request() {
    let dropped: Drops = Arc::default();
    let probes = Arc::clone(&dropped);
    let layer = ContextLayer::new().on_request_async(move |request: Request| {
        let probes = Arc::clone(&probes);
        async move {
            tokio::task::yield_now().await;
            if let Some(tenant) = header(&request, "x-tenant-id") {
                let _ = TENANT.set(tenant.clone());
                let _ = PROBE.set(Probe(probes, tenant));
            }
            match header(&request, "x-mode").as_deref() {
                Some("panic") => panic!("the hook panicked"),
                Some("error") => Err((
                    StatusCode::FORBIDDEN,
                    format!("denied {}", or_none(TENANT.get())),
                )
                    .into_response()),
                Some("hang") => std::future::pending().await,
                _ => Ok(request),
            }
        }
    });
    let app = Router::new()
        .route("/", get(whoami))
        .layer(layer)
        .layer(from_fn(catch_and_time_out));
    let addr = http::serve(app).await;

    let connections: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = http::Client::connect(addr).await;
                let mut sent = Vec::new();
                for r in 0..6 {
                    for (mode, status) in [("panic", 500), ("error", 403), ("hang", 504)] {
                        let tenant = format!("{mode}-{c}-{r}");
                        let answer = client
                            .get("/", &[("x-tenant-id", &tenant), ("x-mode", mode)])
                            .await;
                        assert_eq!(answer.status, status, "{mode}: {}", answer.body);
                        if mode == "error" {
                            assert_eq!(answer.body, format!("denied {tenant}"));
                        }
                        sent.push(tenant);
                        // The next request on the same connection starts afresh.
                        let answer = client.get("/", &[]).await;
                        assert_eq!(
                            (answer.status, answer.body.as_str()),
                            (200, "none none none"),
                            "after {mode}"
                        );
                        let ok = format!("ok-{c}-{r}");
                        let answer = client.get("/", &[("x-tenant-id", &ok)]).await;
                        assert_eq!(answer.body, format!("none {ok} none"), "after {mode}");
                        sent.push(ok);
                    }
                }
                sent
            })
        })
        .collect();
    let mut sent = Vec::new();
    for connection in connections {
        sent.extend(connection.await.unwrap());
    }

    // Every request's values were dropped, inside that request's context: after a panic, an
    // early answer or a drop by the timeout too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while dropped.lock().unwrap().len() < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut dropped = dropped.lock().unwrap().clone();
    dropped.sort();
    sent.sort();
    let expected: Vec<_> = sent.iter().map(|t| (t.clone(), Some(t.clone()))).collect();
    assert_eq!(dropped, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_that_never_returns_keeps_its_request_context_to_itself_when_the_client_gives_up() {
    let dropped: Drops = Arc::default();
    let probes = Arc::clone(&dropped);
    // No timeout on the server: the client is the one that gives up.
    let layer = ContextLayer::new().on_request_async(move |request: Request| {
        let probes = Arc::clone(&probes);
        async move {
            if let Some(tenant) = header(&request, "x-tenant-id") {
                let _ = TENANT.set(tenant.clone());
                let _ = PROBE.set(Probe(probes, tenant));
            }
            if header(&request, "x-mode").as_deref() == Some("hang") {
                std::future::pending::<()>().await;
            }
            Ok::<_, Response>(request)
        }
    });
    let app = Router::new().route("/", get(whoami)).layer(layer);
    let addr = http::serve(app).await;

    let rounds: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                let tenant = format!("hang-{c}");
                let mut client = http::Client::connect(addr).await;
                let hung = tokio::time::timeout(
                    Duration::from_millis(100),
                    client.try_get("/", &[("x-tenant-id", &tenant), ("x-mode", "hang")]),
                )
                .await;
                assert!(hung.is_err(), "the hook never returns");
                drop(client);
                // Other connections, and other requests, start afresh meanwhile.
                let mut client = http::Client::connect(addr).await;
                for r in 0..5 {
                    let answer = client.get("/", &[]).await;
                    assert_eq!(answer.body, "none none none", "{tenant}");
                    let ok = format!("ok-{c}-{r}");
                    let answer = client.get("/", &[("x-tenant-id", &ok)]).await;
                    assert_eq!(answer.body, format!("none {ok} none"));
                }
            })
        })
        .collect();
    for round in rounds {
        round.await.unwrap();
    }
    // Whatever the server has dropped so far (the finished requests' values, and a hung
    // request's if the server noticed the closed connection) was dropped in its own context.
    for (tenant, seen) in dropped.lock().unwrap().iter() {
        assert_eq!(seen.as_deref(), Some(tenant.as_str()));
    }
}
