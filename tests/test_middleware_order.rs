//! Middleware order, asynchronous lookups and nested layers, over a real axum server on a
//! loopback port: code outside `ContextLayer` is told why it has no context and what the
//! order rule is; an asynchronous hook looks a tenant up and may answer 404 itself; an inner
//! `ContextLayer` builds on the context the outer one entered.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;

#[path = "support/mod.rs"]
mod support;

#[path = "support/http.rs"]
mod http;

#[context_var]
static TENANT: String;

#[context_var]
static REQUEST_ID: String;

#[context_var]
static USER: String;

#[context_var]
static REGION: &'static str;

fn header<'r>(request: &'r Request, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn or_none(value: Option<String>) -> String {
    value.unwrap_or_else(|| "none".into())
}

/// What the handlers answer: every variable, read after an await.
async fn whoami() -> String {
    tokio::task::yield_now().await;
    format!(
        "{} {} {} {}",
        or_none(REQUEST_ID.get()),
        or_none(TENANT.get()),
        or_none(USER.get()),
        REGION.get().unwrap_or("none")
    )
}

/// Added after `ContextLayer`, so outside it: it runs in the connection task. With
/// `x-probe`, it answers with what `try_set` and `set` say there.
async fn outside_the_layer(request: Request, next: Next) -> Response {
    if header(&request, "x-probe").is_some() {
        let error = TENANT.try_set("outside".into()).unwrap_err().to_string();
        let panic = std::panic::catch_unwind(|| {
            let _ = TENANT.set("outside".into());
        })
        .unwrap_err();
        let panic = support::panic_message(&*panic);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{error}\n{panic}"),
        )
            .into_response();
    }
    next.run(request).await
}

/// Added before `ContextLayer`, so inside it: it sets what the handler reads.
async fn inside_the_layer(request: Request, next: Next) -> Response {
    if let Some(user) = header(&request, "x-user") {
        let _ = USER.set(user.to_string());
    }
    next.run(request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_outside_the_layer_names_the_order_rule_and_middleware_inside_it_sets_freely() {
    let app = Router::new()
        .route("/", get(whoami))
        .layer(from_fn(inside_the_layer))
        .layer(ContextLayer::new().on_request(|request: &mut Request| {
            if let Some(id) = header(request, "x-request-id") {
                let _ = REQUEST_ID.set(id.to_string());
            }
        }))
        .layer(from_fn(outside_the_layer));
    let addr = http::serve(app).await;
    let mut client = http::Client::connect(addr).await;

    let answer = client.get("/", &[("x-probe", "1")]).await;
    assert_eq!(answer.status, 500);
    let lines: Vec<&str> = answer.body.lines().collect();
    let (error, panic) = lines.split_at(lines.len() / 2);
    let (error, panic) = (error.join("\n"), panic.join("\n"));
    assert!(error.lines().count() <= 3, "short: {error}");
    assert_eq!(
        error, panic,
        "`set` panics with the message of `try_set`'s error"
    );
    for needle in [
        "`TENANT`",
        // The likely cause in a server: the order of the layers.
        "contextvars::tower::ContextLayer",
        "last `.layer()`",
        // What a task spawned without a context needs.
        "contextvars::spawn",
        "TENANT.scope(value, fut)",
        // Where the rest is explained (the docs list `from_fn`, `Buffer` and the other causes).
        "contextvars::SetError::NoContext",
    ] {
        assert!(error.contains(needle), "`{needle}` in: {error}");
    }

    // The connection is still good, and the middleware inside the layer sets freely.
    for i in 0..20 {
        let id = format!("r{i}");
        let user = format!("u{i}");
        let answer = client
            .get("/", &[("x-request-id", &id), ("x-user", &user)])
            .await;
        assert_eq!(
            (answer.status, answer.body),
            (200, format!("{id} none {user} none"))
        );
    }
}

/// Tenants known to the directory: `known-…`. A lookup takes a while.
async fn find_tenant(id: &str) -> Option<String> {
    tokio::time::sleep(Duration::from_micros(200)).await;
    id.strip_prefix("known-").map(str::to_uppercase)
}

/// How many requests reached the handler.
static HANDLED: AtomicUsize = AtomicUsize::new(0);

async fn counted_whoami() -> String {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    whoami().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_hook_resolves_the_tenant_and_answers_404_itself_for_an_unknown_one() {
    let _region = REGION.set("eu-west");
    let layer =
        ContextLayer::new()
            .body_in_context()
            .on_request_async(|request: Request| async move {
                let id = header(&request, "x-tenant-id")
                    .unwrap_or_default()
                    .to_string();
                // Set before the lookup's await, seen by the handler after it.
                let _ = REQUEST_ID.set(format!("req-{id}"));
                match find_tenant(&id).await {
                    Some(tenant) => {
                        let _ = TENANT.set(tenant);
                        Ok(request)
                    }
                    None => {
                        Err((StatusCode::NOT_FOUND, format!("unknown tenant {id}")).into_response())
                    }
                }
            });
    let app = Router::new().route("/", get(counted_whoami)).layer(layer);
    let addr = http::serve(app).await;

    let connections: Vec<_> = (0..32)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = http::Client::connect(addr).await;
                let mut found = 0;
                for r in 0..20 {
                    let known = (c + r) % 3 != 0;
                    let id = format!("{}{c}x{r}", if known { "known-" } else { "stranger-" });
                    let answer = client.get("/", &[("x-tenant-id", &id)]).await;
                    if known {
                        let tenant = id.strip_prefix("known-").unwrap().to_uppercase();
                        assert_eq!(
                            (answer.status, answer.body),
                            (200, format!("req-{id} {tenant} none eu-west"))
                        );
                        found += 1;
                    } else {
                        assert_eq!(
                            (answer.status, answer.body),
                            (404, format!("unknown tenant {id}"))
                        );
                    }
                }
                found
            })
        })
        .collect();
    let mut found = 0;
    for connection in connections {
        found += connection.await.unwrap();
    }
    assert_eq!(
        HANDLED.load(Ordering::Relaxed),
        found,
        "a request answered by the hook never reaches the handler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_layers_the_inner_hook_builds_on_what_the_outer_hook_set() {
    let _region = REGION.set("eu-west");
    let tenant_from_header = |request: &mut Request| {
        if let Some(tenant) = header(request, "x-tenant-id") {
            let _ = TENANT.set(tenant.to_string());
        }
    };
    // Routes with a layer of their own, a synchronous and an asynchronous one...
    let sync_routes = Router::new()
        .route("/sync", get(whoami))
        .layer(ContextLayer::new().on_request(tenant_from_header));
    let async_routes =
        Router::new()
            .route("/async", get(whoami))
            .layer(
                ContextLayer::new().on_request_async(move |mut request: Request| async move {
                    tokio::task::yield_now().await;
                    tenant_from_header(&mut request);
                    Ok::<_, Response>(request)
                }),
            );
    // ... inside an app-wide layer, built where `REGION` is set.
    let app = Router::new()
        .merge(sync_routes)
        .merge(async_routes)
        .route("/plain", get(whoami))
        .layer(ContextLayer::new().on_request(|request: &mut Request| {
            if let Some(id) = header(request, "x-request-id") {
                let _ = REQUEST_ID.set(id.to_string());
            }
        }));
    let addr = http::serve(app).await;

    let connections: Vec<_> = (0..16)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = http::Client::connect(addr).await;
                let mut seen = HashSet::new();
                for r in 0..30 {
                    let id = format!("r{c}-{r}");
                    let tenant = format!("t{c}-{r}");
                    let path = ["/sync", "/async", "/plain"][r % 3];
                    // Every fourth request brings no tenant: nothing lingers from before.
                    let with_tenant = r % 4 != 0;
                    let mut headers = vec![("x-request-id", id.as_str())];
                    if with_tenant {
                        headers.push(("x-tenant-id", tenant.as_str()));
                    }
                    let answer = client.get(path, &headers).await;
                    let tenant_seen = if with_tenant && path != "/plain" {
                        tenant.as_str()
                    } else {
                        "none"
                    };
                    assert_eq!(
                        (answer.status, answer.body),
                        (200, format!("{id} {tenant_seen} none eu-west")),
                        "{path}"
                    );
                    seen.insert(id);
                }
                seen.len()
            })
        })
        .collect();
    for connection in connections {
        assert_eq!(connection.await.unwrap(), 30);
    }
}

/// The layer wrapped around the whole router (served through `into_make_service`) instead of
/// given to `Router::layer`: a middleware the router holds is inside it and sets freely, the
/// hook runs before routing, and keep-alive connections served at once never see each
/// other's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_around_the_router_gives_every_request_its_own_context() {
    use axum::ServiceExt as _;
    use tower::Layer as _;

    let router = Router::new()
        .route("/", get(whoami))
        .layer(from_fn(inside_the_layer));
    let around = ContextLayer::new()
        .on_request(|request: &mut Request| {
            if let Some(id) = header(request, "x-request-id") {
                let _ = REQUEST_ID.set(id.to_string());
            }
        })
        .layer(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, around.into_make_service()).await });

    let clients = (0..8).map(|c| {
        tokio::spawn(async move {
            let mut client = http::Client::connect(addr).await;
            for i in 0..25 {
                let id = format!("c{c}r{i}");
                // Every other request without a user: nothing of the last one is left.
                let user = format!("u{c}-{i}");
                let mut headers = vec![("x-request-id", id.as_str())];
                if i % 2 == 0 {
                    headers.push(("x-user", &user));
                }
                let answer = client.get("/", &headers).await;
                let user = if i % 2 == 0 { user.as_str() } else { "none" };
                assert_eq!(
                    (answer.status, answer.body),
                    (200, format!("{id} none {user} none"))
                );
            }
        })
    });
    for client in clients.collect::<Vec<_>>() {
        client.await.unwrap();
    }
}
