//! B42 under the hooks: a `ContextLayer` nested under another and called through another
//! executor (a `LocalSet` driven from `block_in_place` or from a blocking thread, its task
//! spawned with `contextvars::spawn_local` or plain `spawn_local`) builds on the outer
//! request's context where that context flowed to it, and never on another request's;
//! concurrent keep-alive connections on a hooked multi-thread runtime.

#![cfg(all(tokio_unstable, feature = "hooks"))]

#[path = "support/http.rs"]
mod http;
mod support;

use std::convert::Infallible;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;
use tokio::runtime::Handle;
use tokio::task::LocalSet;
use tower::{Layer, ServiceExt, service_fn};

#[context_var]
static REQUEST_ID: String;

#[context_var]
static TENANT: String;

fn or_none(value: Option<String>) -> String {
    value.unwrap_or_else(|| "none".into())
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// How the handler reaches the inner layer.
#[derive(Clone, Copy, Debug)]
enum Via {
    Blocking,
    InPlace,
    InPlacePlain,
}

async fn nested(request: Request) -> String {
    let via = match request.uri().path() {
        "/blocking" => Via::Blocking,
        "/in-place" => Via::InPlace,
        _ => Via::InPlacePlain,
    };
    let inner = ContextLayer::new()
        .on_request(|request: &mut axum::http::Request<()>| {
            if let Some(tenant) = request.headers().get("x-tenant") {
                let _ = TENANT.set(tenant.to_str().unwrap().to_string());
            }
        })
        .layer(service_fn(|_: axum::http::Request<()>| async {
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(format!(
                "{} {}",
                or_none(REQUEST_ID.get()),
                or_none(TENANT.get())
            ))
        }));
    let mut inner_request = axum::http::Request::new(());
    if let Some(tenant) = header(&request, "x-tenant") {
        inner_request
            .headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
    }
    let call = inner.oneshot(inner_request);
    let seen = match via {
        Via::Blocking => {
            let handle = Handle::current();
            contextvars::spawn_blocking(move || {
                handle.block_on(
                    LocalSet::new()
                        .run_until(async move { contextvars::spawn_local(call).await.unwrap() }),
                )
            })
            .await
            .unwrap()
        }
        Via::InPlace => tokio::task::block_in_place(|| {
            Handle::current().block_on(
                LocalSet::new()
                    .run_until(async move { contextvars::spawn_local(call).await.unwrap() }),
            )
        }),
        Via::InPlacePlain => tokio::task::block_in_place(|| {
            Handle::current().block_on(
                LocalSet::new()
                    .run_until(async move { tokio::task::spawn_local(call).await.unwrap() }),
            )
        }),
    };
    format!("{} | {}", seen.unwrap(), or_none(TENANT.get()))
}

/// 6 connections × 12 requests, the three ways in turn. The inner layer's tenant never
/// reaches the outer request; the inner request's id is its outer request's where it flowed
/// (`contextvars::spawn_local`), and in no case another request's.
#[test]
fn a_nested_layer_through_a_local_set_builds_on_its_own_outer_request_under_the_hooks() {
    support::hooked_runtime(true, false).block_on(async {
        let app = Router::new()
            .route("/blocking", get(nested))
            .route("/in-place", get(nested))
            .route("/in-place-plain", get(nested))
            .layer(ContextLayer::new().on_request(|request: &mut Request| {
                if let Some(id) = header(request, "x-request-id") {
                    let _ = REQUEST_ID.set(id);
                }
            }));
        let addr = http::serve(app).await;
        let connections: Vec<_> = (0..6)
            .map(|c| {
                tokio::spawn(async move {
                    let mut client = http::Client::connect(addr).await;
                    for r in 0..12 {
                        let (id, tenant) = (format!("r{c}-{r}"), format!("t{c}-{r}"));
                        let (via, path) = [
                            (Via::Blocking, "/blocking"),
                            (Via::InPlace, "/in-place"),
                            (Via::InPlacePlain, "/in-place-plain"),
                        ][(c + r) % 3];
                        let answer = client
                            .get(path, &[("x-request-id", &id), ("x-tenant", &tenant)])
                            .await;
                        assert_eq!(answer.status, 200);
                        let flowed = format!("{id} {tenant} | none");
                        let not_flowed = format!("none {tenant} | none");
                        match via {
                            Via::Blocking | Via::InPlace => {
                                assert_eq!(answer.body, flowed, "{via:?}");
                            }
                            Via::InPlacePlain => assert!(
                                answer.body == flowed || answer.body == not_flowed,
                                "{via:?}: {}",
                                answer.body
                            ),
                        }
                    }
                })
            })
            .collect();
        for connection in connections {
            connection.await.unwrap();
        }
    });
}
