//! Typed context variables across three services, in the W3C `baggage` header.
//!
//! Three axum services on loopback, A → B → C. Each reads the request's `baggage` header
//! into its context (`ContextLayer::accept_baggage`), reports what it sees, and calls the
//! next one through a hyper-util client wrapped in `BaggageLayer`, which writes the
//! context's baggage into the outgoing request. C answers; each hop adds its own view.
//!
//! ```text
//! cargo run --example baggage
//! PORT_A=4001 PORT_B=4002 PORT_C=4003 cargo run --example baggage
//! ```
//!
//! What a service adds, besides declaring its variables with `baggage = "…"`:
//!
//! ```text
//! .layer(ContextLayer::new().accept_baggage())                           // server
//! let client = BaggageLayer::new().layer(Client::builder(exec).build_http()); // client
//! client.oneshot(request).await                                           // any call
//! ```

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http;
use axum::routing::get;
use axum::{Json, Router};
use contextvars::context_var;
use contextvars::metadata::get_all_metadata;
use contextvars::tower::{BaggageLayer, BaggageService, ContextLayer};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceExt};

/// The tenant: sent as `tenant=<name>`, arrives as a `String`.
#[context_var(name = "tenant", baggage = "tenant", log)]
pub(crate) static TENANT: String;

/// The user: sent as `user_id=<number>`, arrives as a `u64` (a value that is not one is
/// refused with a 400 naming the entry).
#[context_var(name = "user_id", baggage = "user_id")]
pub(crate) static USER_ID: u64;

/// What one hop saw in its context.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The service: `A`, `B` or `C`.
    pub(crate) hop: String,
    /// `TENANT` there.
    pub(crate) tenant: Option<String>,
    /// `USER_ID` there.
    pub(crate) user_id: Option<u64>,
    /// Entries no variable claims, kept and forwarded.
    pub(crate) forwarded: std::collections::BTreeMap<String, String>,
}

/// An HTTP client that writes the current context's baggage into every request.
pub(crate) type BaggageClient = BaggageService<Client<HttpConnector, Empty<Bytes>>>;

/// A hyper-util client (pooled keep-alive connections) behind `BaggageLayer`.
#[must_use]
pub(crate) fn client() -> BaggageClient {
    BaggageLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

/// One service: answers with what it sees and, if there is a next hop, what that one sees.
pub(crate) fn hop(name: &'static str, next: Option<SocketAddr>) -> Router {
    let client = client();
    Router::new()
        .route(
            "/",
            get(move || {
                let client = client.clone();
                async move { Json(handle(name, next, client).await) }
            }),
        )
        .layer(ContextLayer::new().accept_baggage())
}

async fn handle(name: &str, next: Option<SocketAddr>, client: BaggageClient) -> Vec<Seen> {
    let mut seen = vec![Seen {
        hop: name.to_string(),
        tenant: TENANT.get(),
        user_id: USER_ID.get(),
        forwarded: get_all_metadata(),
    }];
    if let Some(next) = next {
        let request = http::Request::get(format!("http://{next}/"))
            .body(Empty::new())
            .expect("a valid request");
        // `BaggageLayer` adds `tenant`, `user_id` and the forwarded entries here.
        match client.oneshot(request).await {
            Ok(response) => {
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(http_body_util::Collected::to_bytes);
                match body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    Some(downstream) => seen.extend::<Vec<Seen>>(downstream),
                    None => seen.push(failed("a bad answer")),
                }
            }
            Err(_) => seen.push(failed("no answer")),
        }
    }
    seen
}

fn failed(why: &str) -> Seen {
    Seen {
        hop: format!("(next hop: {why})"),
        tenant: None,
        user_id: None,
        forwarded: std::collections::BTreeMap::new(),
    }
}

/// Binds a loopback port (from `var`, else `default`) and serves `app` on it.
pub(crate) async fn serve(app: Router, var: &str, default: u16) -> SocketAddr {
    let port = std::env::var(var)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(default);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|err| panic!("bind 127.0.0.1:{port} ({var}): {err}"));
    let addr = listener.local_addr().expect("a local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Serves C, then B (calling C), then A (calling B), on ports from the environment.
pub(crate) async fn serve_chain(ports: [(&str, u16); 3]) -> SocketAddr {
    let [a, b, c] = ports;
    let c = serve(hop("C", None), c.0, c.1).await;
    let b = serve(hop("B", Some(c)), b.0, b.1).await;
    serve(hop("A", Some(b)), a.0, a.1).await
}

#[tokio::main]
async fn main() {
    let a = serve_chain([("PORT_A", 3101), ("PORT_B", 3102), ("PORT_C", 3103)]).await;
    // A plain client (no context here): the first service receives the header as given.
    let plain = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    for baggage in [
        "tenant=acme,user_id=42,campaign=spring%20sale",
        "tenant=globex,user_id=7",
        "tenant=acme,user_id=forty-two",
    ] {
        println!("GET http://{a}/  baggage: {baggage}");
        let request = http::Request::get(format!("http://{a}/"))
            .header("baggage", baggage)
            .body(Empty::new())
            .expect("a valid request");
        let response = plain.request(request).await.expect("A answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        if status.is_success() {
            let hops: Vec<Seen> = serde_json::from_slice(&body).expect("JSON");
            for seen in hops {
                println!(
                    "  {}: tenant={:?} user_id={:?} forwarded={:?}",
                    seen.hop, seen.tenant, seen.user_id, seen.forwarded
                );
            }
        } else {
            println!("  {status}: {}", String::from_utf8_lossy(&body));
        }
    }
}
