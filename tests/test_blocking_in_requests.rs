//! Blocking work inside requests, where no runtime hook runs (B26, B34, B40): tokio's blocking
//! threads are reused from job to job, and `block_in_place` hands a worker's core to another
//! thread in the middle of a poll. Served over TCP behind the layer, with and without the
//! hooks, many requests at once: a plain `tokio::task::spawn_blocking` job never reads a
//! value another request's job left on its thread, a `contextvars::spawn_blocking` job reads
//! its own request's, and `block_in_place` keeps the request's context on both sides.

#[path = "support/http.rs"]
mod http;
mod support;

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;

#[context_var]
static TENANT: String;

/// Set by a blocking job: never to be read by another.
#[context_var]
static JOB: String;

fn tenant_hook(request: &mut Request) {
    if let Some(tenant) = request
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
    {
        let _ = TENANT.set(tenant.to_string());
    }
}

async fn blocking(headers: HeaderMap) -> String {
    let tenant = headers["x-tenant"].to_str().unwrap().to_string();
    let mut problems = Vec::new();
    // A job that inherits the request's context, and sets in it (its copy).
    let own = contextvars::spawn_blocking({
        let tenant = tenant.clone();
        move || {
            let seen = TENANT.get();
            let _ = JOB.set(tenant);
            std::thread::sleep(Duration::from_micros(200));
            seen
        }
    })
    .await
    .unwrap();
    if own.as_deref() != Some(tenant.as_str()) {
        problems.push(format!("contextvars job read {own:?}"));
    }
    // A plain job: no hook runs for it, so it reads an empty context, whatever ran on its
    // thread before.
    let plain =
        tokio::task::spawn_blocking(|| (TENANT.get(), JOB.get(), JOB.try_set("x".into()).is_ok()))
            .await
            .unwrap();
    if plain != (None, None, false) {
        problems.push(format!("plain job read {plain:?}"));
    }
    if JOB.get().is_some() {
        problems.push(format!(
            "the job's set reached the request: {:?}",
            JOB.get()
        ));
    }
    // `block_in_place`: the poll goes on on this thread while the core moves on.
    let in_place = tokio::task::block_in_place(|| {
        std::thread::sleep(Duration::from_micros(200));
        TENANT.get()
    });
    if in_place.as_deref() != Some(tenant.as_str()) {
        problems.push(format!("block_in_place read {in_place:?}"));
    }
    let _ = JOB.set(format!("request {tenant}"));
    tokio::task::yield_now().await;
    let after = (TENANT.get(), JOB.get());
    if after != (Some(tenant.clone()), Some(format!("request {tenant}"))) {
        problems.push(format!("after block_in_place and a yield: {after:?}"));
    }
    if problems.is_empty() {
        format!("ok {tenant}")
    } else {
        format!("{tenant}: {}", problems.join("; "))
    }
}

fn runtimes() -> Vec<(&'static str, tokio::runtime::Runtime)> {
    #[cfg_attr(not(all(tokio_unstable, feature = "hooks")), allow(unused_mut))]
    let mut all = vec![(
        "plain",
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )];
    #[cfg(all(tokio_unstable, feature = "hooks"))]
    all.push(("hooks", support::hooked_runtime(true, false)));
    all
}

/// 6 keep-alive connections of 15 requests each; each request runs a `contextvars` blocking
/// job, a plain one and a `block_in_place`, and reports whatever it read that was not its own.
#[test]
fn blocking_jobs_and_block_in_place_in_requests_read_only_their_own_request() {
    for (name, runtime) in runtimes() {
        runtime.block_on(async {
            let app = Router::new()
                .route("/", get(blocking))
                .layer(ContextLayer::new().on_request(tenant_hook as fn(&mut Request)));
            let addr = http::serve(app).await;
            let connections: Vec<_> = (0..6)
                .map(|c| {
                    tokio::spawn(async move {
                        let mut client = http::Client::connect(addr).await;
                        for r in 0..15 {
                            let tenant = format!("{name}-{c}-{r}");
                            let answer = client.get("/", &[("x-tenant", &tenant)]).await;
                            assert_eq!(answer.body, format!("ok {tenant}"));
                        }
                    })
                })
                .collect();
            for connection in connections {
                connection.await.unwrap();
            }
        });
    }
}

/// Under the hooks, a task that drives a second hooked runtime from `block_in_place` (polls
/// nest on one thread: the second runtime's hooks run inside the first task's poll) still
/// reads its own inherited values before, inside and after, and the tasks of the second
/// runtime never leave their values behind for it; many such tasks at once, each with its own.
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn a_nested_hooked_runtime_driven_from_block_in_place_keeps_each_tasks_values() {
    use contextvars::Context;

    let outer = support::hooked_runtime(true, false);
    outer.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let tenant = format!("outer-{i}");
                let mut context = Context::new().with_value(&TENANT, tenant.clone());
                // A plain spawn: the task inherits the tenant, for reading.
                context.run(|| {
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        let (inside, nested) = tokio::task::block_in_place(|| {
                            let inner = support::hooked_runtime(false, false);
                            let nested = inner.block_on(async {
                                contextvars::spawn(async {
                                    let _ = JOB.set("nested".into());
                                    tokio::task::yield_now().await;
                                    JOB.get()
                                })
                                .await
                                .unwrap()
                            });
                            (TENANT.get(), nested)
                        });
                        tokio::task::yield_now().await;
                        (tenant, inside, nested, TENANT.get(), JOB.get())
                    })
                })
            })
            .collect();
        for task in tasks {
            let (tenant, inside, nested, after, job) = task.await.unwrap();
            assert_eq!(inside.as_deref(), Some(tenant.as_str()));
            assert_eq!(nested.as_deref(), Some("nested"));
            assert_eq!(after.as_deref(), Some(tenant.as_str()));
            assert_eq!(job, None, "{tenant}");
        }
    });
}
