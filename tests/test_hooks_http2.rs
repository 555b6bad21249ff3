//! Requests multiplexed on one HTTP/2 connection to an axum server, under the runtime hooks
//! (feature `hooks`, `--cfg tokio_unstable`): no value set while one request is served is
//! read while another is. Without `ContextLayer`, a handler's write fails loudly instead of
//! reaching the other streams; with it, each request's values are its own, and a request the
//! client cancels drops its values inside its own context.
//!
//! Run with `RUSTFLAGS="--cfg tokio_unstable" cargo test --features hooks --test test_hooks_http2`.

#![cfg(all(tokio_unstable, feature = "hooks"))]

#[path = "support/h2.rs"]
mod h2;
mod support;

use std::sync::atomic::Ordering;

use axum::routing::get;
use h2::app::{self, LEFTOVER};
use support::{Rng, hooked_runtime, panic_message};

/// Requests in flight at once on the one connection.
const REQUESTS: usize = 256;

/// Sends `count` requests at once on `client`, to `/echo` or `/scoped` at random, each with
/// two random delays in its handler; returns `(path, id, answer)` in id order.
async fn send_all(
    client: &h2::Client,
    prefix: &str,
    count: usize,
    seed: u64,
    paths: &'static [&'static str],
) -> Vec<(&'static str, String, String)> {
    let mut rng = Rng::new(seed);
    let mut tasks = Vec::new();
    for n in 0..count {
        let id = format!("{prefix}-{n}");
        let path = paths[usize::try_from(rng.below(paths.len() as u64)).unwrap()];
        let delay = format!("{},{}", rng.below(20), rng.below(20));
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let answer = client
                .get(path, &[("x-id", id.as_str()), ("x-delay", delay.as_str())])
                .await;
            assert_eq!(answer.status, 200, "{path} {id}: {}", answer.body);
            assert_eq!(answer.version, axum::http::Version::HTTP_2, "{id}");
            (path, id, answer.body)
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("a request"));
    }
    answers
}

/// `set` in a handler without the layer: the panic's message, or "set" if it did not panic.
async fn set_panics() -> String {
    std::panic::catch_unwind(|| LEFTOVER.set("from /set".to_string()))
        .map_or_else(|payload| panic_message(&*payload), |_| "set".to_string())
}

/// Under the hooks and without the layer, on ONE HTTP/2 connection carrying 256 streams at
/// once: every handler's `try_set` fails with `SetError::Inherited` (its message naming the
/// layer) and `set` panics naming the layer; what handlers set where they may (inside
/// `ID.scope`, in a `contextvars::spawn` task) they read back as their own, and no stream
/// ever reads a value set by another. Current-thread and multi-thread runtimes.
#[test]
fn without_the_layer_streams_on_one_http2_connection_cannot_write_and_share_nothing() {
    let _serial = h2::serial();
    for multi_thread in [false, true] {
        hooked_runtime(multi_thread, false).block_on(async {
            app::start_counting();
            let router = app::router(false).route("/set", get(set_panics));
            let (addr, accepted) = h2::serve(router).await;
            let client = h2::Client::connect(addr).await;
            let prefix = format!("bare-{multi_thread}");
            let answers = send_all(&client, &prefix, REQUESTS, 5, &["/echo", "/scoped"]).await;
            for (path, id, body) in answers {
                let expected = if path == "/echo" {
                    "HTTP/2.0 start=(None, None) set=inherited(names layer: true) end=(None, None)"
                        .to_string()
                } else {
                    format!("scope=Some({id:?}) spawn=Some({id:?}) after=(None, None)")
                };
                assert_eq!(body, expected, "{path} {id}");
            }
            let panicked = client.get("/set", &[]).await.body;
            assert!(panicked.starts_with("cannot set `LEFTOVER`"), "{panicked}");
            assert!(panicked.contains("ContextLayer"), "{panicked}");
            assert!(
                app::MAX_IN_FLIGHT.load(Ordering::SeqCst) >= 32,
                "the streams interleaved"
            );
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
        });
    }
}

/// Under the hooks and with `ContextLayer::new().on_request(..)`, 256 requests multiplexed at
/// once on ONE HTTP/2 connection each read back their own id after sleeping, their writes
/// succeed, and what one sets is read by no other. Current-thread and multi-thread runtimes.
#[test]
fn with_the_layer_each_stream_on_one_http2_connection_has_its_own_values() {
    let _serial = h2::serial();
    for multi_thread in [false, true] {
        hooked_runtime(multi_thread, false).block_on(async {
            app::start_counting();
            let (addr, accepted) = h2::serve(app::router(true)).await;
            let client = h2::Client::connect(addr).await;
            let prefix = format!("layer-{multi_thread}");
            for (path, id, body) in
                send_all(&client, &prefix, REQUESTS, 11, &["/echo", "/scoped"]).await
            {
                let expected = if path == "/echo" {
                    app::echoed_alone(&id)
                } else {
                    // `ID.scope` and the spawned task each see their own value; after them,
                    // the handler reads the id the layer's hook set, and no `LEFTOVER`.
                    format!("scope=Some({id:?}) spawn=Some({id:?}) after=(Some({id:?}), None)")
                };
                assert_eq!(body, expected, "{path} {id}");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
            // The streams interleaved: many handlers were between their awaits at once.
            assert!(app::MAX_IN_FLIGHT.load(Ordering::SeqCst) >= 32);
        });
    }
}

/// Under the hooks and with the layer, a request the client cancels mid-flight (its stream
/// reset while its handler waits) has its values dropped, each drop reading that request's
/// own id; the other streams are answered as if nothing happened, and the connection keeps
/// serving new ones.
#[test]
fn with_the_layer_a_cancelled_stream_drops_its_values_in_its_own_context() {
    let _serial = h2::serial();
    for multi_thread in [false, true] {
        hooked_runtime(multi_thread, false).block_on(async {
            app::start_counting();
            let (addr, accepted) = h2::serve(app::router(true)).await;
            let client = h2::Client::connect(addr).await;
            let prefix = format!("cancel-{multi_thread}");
            cancel_some_while_others_run(&client, &prefix).await;
            for (_, id, body) in
                send_all(&client, &format!("{prefix}-after"), 64, 3, &["/echo"]).await
            {
                assert_eq!(body, app::echoed_alone(&id));
            }
            assert!(client.is_open());
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection");
        });
    }
}

/// Sends held requests and `REQUESTS` to `/echo` at once, cancels the held ones
/// (`h2::cancel_held_while`), and checks that every echo was answered alone.
async fn cancel_some_while_others_run(client: &h2::Client, prefix: &str) {
    let echoes = h2::cancel_held_while(client, prefix, || {
        let client = client.clone();
        let prefix = format!("{prefix}-echo");
        tokio::spawn(async move { send_all(&client, &prefix, REQUESTS, 99, &["/echo"]).await })
    })
    .await;
    for (_, id, body) in echoes {
        assert_eq!(body, app::echoed_alone(&id));
    }
}
