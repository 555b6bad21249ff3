//! Requests multiplexed on one HTTP/2 connection to an axum server, without the runtime hooks:
//! behind `ContextLayer`, each request's values are its own, however its stream interleaves
//! with the others on the connection, and a request the client cancels drops its values
//! inside its own context while the connection goes on serving the rest.
//!
//! The same promises under the hooks: `tests/test_hooks_http2.rs`.

#[path = "support/h2.rs"]
mod h2;
mod support;

use std::sync::atomic::Ordering;

use h2::app;
use support::Rng;

/// Requests in flight at once on the one connection.
const REQUESTS: usize = 256;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sends `/echo` for ids `{prefix}-0..count` all at once on `client`, each with two random
/// delays in its handler, and returns `(id, answer)` in id order.
async fn echo_all(
    client: &h2::Client,
    prefix: &str,
    count: usize,
    seed: u64,
) -> Vec<(String, String)> {
    let mut rng = Rng::new(seed);
    let mut tasks = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let delay = format!("{},{}", rng.below(20), rng.below(20));
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let answer = client
                .get(
                    "/echo",
                    &[("x-id", id.as_str()), ("x-delay", delay.as_str())],
                )
                .await;
            assert_eq!(answer.status, 200, "{id}: {}", answer.body);
            assert_eq!(answer.version, axum::http::Version::HTTP_2, "{id}");
            (id, answer.body)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("a request"));
    }
    answers
}

/// Behind `ContextLayer::new().on_request(..)`, 256 requests multiplexed at once on ONE
/// HTTP/2 connection each read back their own id after sleeping, and what a handler sets
/// midway is read by no other request (each starts without it). Without the layer, `ID`
/// would be unset and this fails.
#[test]
fn with_the_layer_each_stream_on_one_http2_connection_has_its_own_values() {
    let _serial = h2::serial();
    runtime().block_on(async {
        app::start_counting();
        let (addr, accepted) = h2::serve(app::router(true)).await;
        let client = h2::Client::connect(addr).await;
        for round in 0..2 {
            let prefix = format!("layer-{round}");
            for (id, body) in echo_all(&client, &prefix, REQUESTS, 40 + round).await {
                assert_eq!(body, app::echoed_alone(&id));
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
        // The streams interleaved: many handlers were between their awaits at once.
        assert!(app::MAX_IN_FLIGHT.load(Ordering::SeqCst) >= 32);
    });
}

/// Behind the layer, a request the client cancels mid-flight (its stream reset while its
/// handler waits) has its values dropped, and each drop runs in that request's own context
/// (it reads its own id); the other streams on the connection are answered as if nothing
/// happened, and the connection keeps serving new ones.
#[test]
fn with_the_layer_a_cancelled_stream_drops_its_values_in_its_own_context() {
    let _serial = h2::serial();
    runtime().block_on(async {
        app::start_counting();
        let (addr, accepted) = h2::serve(app::router(true)).await;
        let client = h2::Client::connect(addr).await;
        cancel_some_while_others_run(&client, "cancel").await;
        // The connection still serves.
        for (id, body) in echo_all(&client, "cancel-after", 64, 7).await {
            assert_eq!(body, app::echoed_alone(&id));
        }
        assert!(client.is_open());
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
    });
}

/// Sends held requests and `REQUESTS` to `/echo` at once, cancels the held ones
/// (`h2::cancel_held_while`), and checks that every echo was answered alone.
async fn cancel_some_while_others_run(client: &h2::Client, prefix: &str) {
    let echoes = h2::cancel_held_while(client, prefix, || {
        let client = client.clone();
        let prefix = format!("{prefix}-echo");
        tokio::spawn(async move { echo_all(&client, &prefix, REQUESTS, 99).await })
    })
    .await;
    for (id, body) in echoes {
        assert_eq!(body, app::echoed_alone(&id));
    }
}
