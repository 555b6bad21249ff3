//! What a service pays per request: a real axum app served over a keep-alive TCP connection on
//! 127.0.0.1, in instructions per request under callgrind (SPEC S8, turn 3).
//!
//! Server and client run on one current-thread runtime in one process, over one connection,
//! so callgrind sees one thread doing the same work on every run. Every request carries the
//! same bytes, a 3-entry `baggage` header included, whatever the variant: only what the
//! server does with them differs.
//!
//! - `request/plain`: the app alone, its handler reading nothing.
//! - `request/identity_layer`: the same app behind a layer that does nothing
//!   (`tower_layer::Identity`) given to `Router::layer`: what axum adds for any layer there (it
//!   boxes the wrapped route again, and clones it for every request), which `request/layer`
//!   pays too.
//! - `request/layer`: behind `ContextLayer`, whose `on_request` sets 3 variables that the
//!   handler reads.
//! - `request/layer_around`: the same `ContextLayer` wrapped around the whole router
//!   (`layer.layer(router)`, served through `axum::ServiceExt::into_make_service`) instead of
//!   given to `Router::layer`: the form without axum's share of a layer.
//! - `request/accept_baggage`: `request/layer`, plus `.accept_baggage()`, which sets the 3
//!   variables declared with `#[context_var(baggage = "…")]` from the header; the handler reads
//!   them too.
//! - `request/layer_hooks` (feature `hooks`, under `--cfg tokio_unstable`): `request/layer` on a
//!   runtime with `contextvars::hooks::install`.
//!
//! `service OP N` serves `N` requests (after a few to warm up); `scripts/bench-report` runs it
//! under callgrind with two values of `N` and divides the difference by the difference in `N`,
//! which cancels the setup. `service --list` names the operations; `service --verify` checks
//! that each variant answers and that each handler saw the values it should (a handler that
//! does not answers 500, which fails the run).

use std::hint::black_box;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Builder, Runtime};
use tower_layer::Layer;

/// Set by the layer's `on_request` (3 variables).
#[context_var]
static REQUEST_NO: u64;
#[context_var]
static ROUTE: &'static str;
#[context_var]
static SHARD: u64;

/// Set from the `baggage` header by `accept_baggage`.
#[context_var(baggage = "tenant")]
static TENANT: String;
#[context_var(baggage = "user.id")]
static USER_ID: u64;
#[context_var(baggage = "source")]
static SOURCE: String;

/// Every request, in every variant: keep-alive HTTP/1.1 with a 3-entry `baggage` header.
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\
    baggage: tenant=acme,user.id=4711,source=mobile\r\n\r\n";

/// Requests served before counting starts: connection set-up, first allocations.
const WARM_UP: u64 = 16;

#[derive(Clone, Copy)]
enum Variant {
    Plain,
    IdentityLayer,
    Layer,
    LayerAround,
    AcceptBaggage,
    #[cfg(feature = "hooks")]
    LayerHooks,
}

const OPS: &[(&str, Variant)] = &[
    ("request/plain", Variant::Plain),
    ("request/identity_layer", Variant::IdentityLayer),
    ("request/layer", Variant::Layer),
    ("request/layer_around", Variant::LayerAround),
    ("request/accept_baggage", Variant::AcceptBaggage),
    #[cfg(feature = "hooks")]
    ("request/layer_hooks", Variant::LayerHooks),
];

fn set_three(_: &mut Request) {
    let _ = REQUEST_NO.set(black_box(7));
    let _ = ROUTE.set(black_box("/"));
    let _ = SHARD.set(black_box(3));
}

fn reads_three() -> bool {
    REQUEST_NO.get() == Some(7) && ROUTE.get() == Some("/") && SHARD.get() == Some(3)
}

fn answer(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "no")
    }
}

fn app(variant: Variant) -> Router {
    match variant {
        Variant::Plain => Router::new().route("/", get(|| async { answer(true) })),
        Variant::IdentityLayer => Router::new()
            .route("/", get(|| async { answer(true) }))
            .layer(tower_layer::Identity::new()),
        #[cfg(feature = "hooks")]
        Variant::LayerHooks => app(Variant::Layer),
        // The router alone: `serve` wraps it.
        Variant::LayerAround => Router::new().route("/", get(|| async { answer(reads_three()) })),
        Variant::Layer => Router::new()
            .route("/", get(|| async { answer(reads_three()) }))
            .layer(ContextLayer::new().on_request(set_three)),
        Variant::AcceptBaggage => Router::new()
            .route(
                "/",
                get(|| async {
                    answer(
                        reads_three()
                            && TENANT.with(|t| t.map(String::as_str) == Some("acme"))
                            && USER_ID.get() == Some(4711)
                            && SOURCE.with(|s| s.map(String::as_str) == Some("mobile")),
                    )
                }),
            )
            .layer(ContextLayer::new().on_request(set_three).accept_baggage()),
    }
}

fn runtime(variant: Variant) -> Runtime {
    let mut builder = Builder::new_current_thread();
    builder.enable_io();
    #[cfg(feature = "hooks")]
    if matches!(variant, Variant::LayerHooks) {
        contextvars::hooks::install(&mut builder);
    }
    let _ = variant;
    builder.build().expect("a runtime")
}

/// Sends `REQUEST` and reads the answer, which must be `200 ok`.
async fn request(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    stream.write_all(REQUEST).await.expect("send");
    buffer.clear();
    loop {
        let mut chunk = [0; 512];
        let n = stream.read(&mut chunk).await.expect("receive");
        assert!(n > 0, "the server closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
        // Every answer is `200` with a 2-byte body: complete once the head and body are in.
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n")
            && buffer.len() >= end + 4 + 2
        {
            break;
        }
    }
    assert!(
        buffer.starts_with(b"HTTP/1.1 200 ") && buffer.ends_with(b"\r\n\r\nok"),
        "{}",
        String::from_utf8_lossy(buffer)
    );
}

/// Serves `variant` and sends it `WARM_UP + requests` requests over one connection.
fn serve(variant: Variant, requests: u64) {
    let runtime = runtime(variant);
    runtime.block_on(async {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let server = tokio::spawn(async move {
            if let Variant::LayerAround = variant {
                let around = ContextLayer::new()
                    .on_request(set_three)
                    .layer(app(variant));
                let service = axum::ServiceExt::into_make_service(around);
                axum::serve(listener, service).await.expect("serving");
            } else {
                axum::serve(listener, app(variant)).await.expect("serving");
            }
        });
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut buffer = Vec::with_capacity(512);
        for _ in 0..WARM_UP + requests {
            request(&mut stream, &mut buffer).await;
        }
        drop(stream);
        server.abort();
    });
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [list] if list == "--list" => {
            for (name, _) in OPS {
                println!("{name}");
            }
        }
        [verify] if verify == "--verify" => {
            for (_, variant) in OPS {
                serve(*variant, 1);
            }
            println!("verified");
        }
        [name, requests] => {
            let (_, variant) = OPS
                .iter()
                .find(|(n, _)| n == name)
                .expect("an operation from --list");
            let requests = requests.parse().expect("a number of requests");
            // On a thread of its own, for the reason given in `instructions.rs`: the stack
            // starts on a fresh page whatever the arguments' length.
            std::thread::scope(|scope| {
                scope.spawn(|| serve(*variant, requests));
            });
        }
        // `cargo bench` runs every bench target, with no arguments: nothing to do.
        _ => {}
    }
}
