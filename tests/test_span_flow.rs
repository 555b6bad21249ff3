//! The current `tracing` span flows with the context once `carry_spans()` is on: into every
//! spawn helper, every hooked task, every request of the tower layer; entered only while its
//! context runs; closed when the last holder is gone. Every test here turns carrying on (it is
//! process-wide); `test_span_flow_off.rs` checks that nothing flows without it.

#![cfg(feature = "tracing")]

#[path = "support/spans.rs"]
mod spans;

use std::time::Duration;

use contextvars::{Context, FutureExt, context_var, preserve_context};
use tracing::{Instrument, info, info_span};

fn carry() {
    spans::install();
    contextvars::tracing::carry_spans();
}

fn parent(message: &str) -> Option<String> {
    spans::event(message).parent
}

#[context_var]
static TENANT: &str = "none";

#[preserve_context]
async fn log_later(message: &'static str) {
    tokio::task::yield_now().await;
    info!("{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_helper_carries_the_span_to_its_grandchildren() {
    carry();
    let request = info_span!("request", test = "helpers");
    let (tasks, preserved, wrapped) = request.in_scope(|| {
        let spawn = contextvars::spawn(async {
            tokio::task::yield_now().await;
            info!("helpers: child");
            contextvars::spawn(async { info!("helpers: grandchild") })
                .await
                .unwrap();
        });
        let blocking = contextvars::spawn_blocking(|| info!("helpers: spawn_blocking"));
        let thread = contextvars::thread::spawn(|| {
            info!("helpers: thread");
            contextvars::thread::spawn(|| info!("helpers: thread grandchild"))
                .join()
                .unwrap();
        });
        let executor = contextvars::run_in_executor(
            |job| drop(std::thread::spawn(job)),
            || info!("helpers: run_in_executor"),
        );
        let gathered = contextvars::gather([
            Box::pin(async { info!("helpers: gather 1") })
                as std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
            Box::pin(async {
                tokio::task::yield_now().await;
                info!("helpers: gather 2");
            }),
        ]);
        let preserved = log_later("helpers: preserve_context");
        let wrapped = async { info!("helpers: in_current_context") }.in_current_context();
        (
            (spawn, blocking, thread, executor, gathered),
            preserved,
            wrapped,
        )
    });
    // Awaited outside the span: what flows is what was current at the snapshot.
    let (spawn, blocking, thread, executor, gathered) = tasks;
    spawn.await.unwrap();
    blocking.await.unwrap();
    thread.join().unwrap();
    executor.await.unwrap();
    gathered.await;
    preserved.await;
    wrapped.await;
    // `spawn_local` needs a `LocalSet`.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let task = info_span!("request", test = "helpers")
                .in_scope(|| contextvars::spawn_local(async { info!("helpers: spawn_local") }));
            task.await.unwrap();
        })
        .await;
    info!("helpers: outside");

    for message in [
        "helpers: child",
        "helpers: grandchild",
        "helpers: spawn_blocking",
        "helpers: thread",
        "helpers: thread grandchild",
        "helpers: run_in_executor",
        "helpers: gather 1",
        "helpers: gather 2",
        "helpers: preserve_context",
        "helpers: in_current_context",
        "helpers: spawn_local",
    ] {
        assert_eq!(
            parent(message).as_deref(),
            Some("request{test=\"helpers\"}"),
            "{message}"
        );
    }
    assert_eq!(parent("helpers: outside"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_takes_the_span_current_where_it_is_taken() {
    carry();
    let outer = info_span!("request", test = "inner");
    let task = contextvars::spawn(
        async {
            // Entered inside the task: the task's own spawns carry it, not the outer one.
            async {
                contextvars::spawn(async { info!("inner: grandchild of the inner span") })
                    .await
                    .unwrap();
            }
            .instrument(info_span!("step", test = "inner"))
            .await;
            contextvars::spawn(async { info!("inner: grandchild after the step") })
                .await
                .unwrap();
        }
        .instrument(outer),
    );
    task.await.unwrap();
    assert_eq!(
        parent("inner: grandchild of the inner span").as_deref(),
        Some("step{test=\"inner\"}")
    );
    assert_eq!(
        parent("inner: grandchild after the step").as_deref(),
        Some("request{test=\"inner\"}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_span_is_entered_only_while_its_context_runs() {
    carry();
    let mut ctx = info_span!("request", test = "entered").in_scope(Context::current);
    info!("entered: before");
    ctx.run(|| info!("entered: in run"));
    info!("entered: after");
    // A future in the context: inside on each poll, outside between polls.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let waiting = tokio::spawn(
        async {
            info!("entered: first poll");
            rx.await.unwrap();
            info!("entered: second poll");
        }
        .with_context(ctx.clone()),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    info!("entered: between polls");
    tx.send(()).unwrap();
    waiting.await.unwrap();

    let request = Some("request{test=\"entered\"}".to_string());
    assert_eq!(parent("entered: before"), None);
    assert_eq!(parent("entered: in run"), request);
    assert_eq!(parent("entered: after"), None);
    assert_eq!(parent("entered: first poll"), request);
    assert_eq!(parent("entered: between polls"), None);
    assert_eq!(parent("entered: second poll"), request);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_requests_each_log_under_their_own_span() {
    carry();
    let mut requests = Vec::new();
    for n in 0..200_u32 {
        let span = info_span!("request", n);
        requests.push(span.in_scope(|| {
            contextvars::spawn(async move {
                for step in 0..3 {
                    tokio::task::yield_now().await;
                    contextvars::spawn(async move { info!("many: {n} {step}") })
                        .await
                        .unwrap();
                }
            })
        }));
    }
    for request in requests {
        request.await.unwrap();
    }
    for n in 0..200_u32 {
        for step in 0..3 {
            assert_eq!(
                parent(&format!("many: {n} {step}")),
                Some(format!("request{{n={n}}}"))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_mapping_view_does_not_show_the_span() {
    carry();
    info_span!("request", test = "view").in_scope(|| {
        let ctx = Context::current();
        assert!(ctx.is_empty());
        assert_eq!(ctx.len(), 0);
        assert_eq!(ctx.iter().count(), 0);
        assert_eq!(format!("{ctx:?}"), "Context {}");
        let _tenant = TENANT.set("acme");
        let ctx = Context::current();
        assert_eq!(ctx.len(), 1);
        let names: Vec<&str> = ctx.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["TENANT"]);
    });
}

// ---------------------------------------------------------------------------------------------
// When the span closes.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_keeps_the_span_open_until_it_is_dropped() {
    carry();
    let shown = "request{test=\"snapshot\"}";
    let snapshot = info_span!("request", test = "snapshot").in_scope(Context::current);
    // The span's own handle is gone; the snapshot still holds it.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!spans::closed(shown));
    let copy = snapshot.clone();
    drop(snapshot);
    assert!(!spans::closed(shown));
    drop(copy);
    assert!(spans::closed(shown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_span_closes_when_the_last_task_holding_it_ends() {
    carry();
    let shown = "request{test=\"last task\"}";
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = info_span!("request", test = "last task").in_scope(|| {
        contextvars::spawn(async {
            rx.await.unwrap();
            info!("last task: done");
        })
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!spans::closed(shown), "closed while a task holds it");
    tx.send(()).unwrap();
    task.await.unwrap();
    assert!(spans::closed(shown), "still open once the task ended");

    // A thread, and a blocking task.
    let shown = "request{test=\"last thread\"}";
    let thread = info_span!("request", test = "last thread")
        .in_scope(|| contextvars::thread::spawn(|| std::thread::sleep(Duration::from_millis(20))));
    assert!(!spans::closed(shown));
    thread.join().unwrap();
    assert!(spans::closed(shown));
    let shown = "request{test=\"last blocking\"}";
    let blocking = info_span!("request", test = "last blocking")
        .in_scope(|| contextvars::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20))));
    assert!(!spans::closed(shown));
    blocking.await.unwrap();
    assert!(spans::closed(shown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_context_whose_values_have_no_drop_closes_its_span_at_once() {
    carry();
    let shown = "request{test=\"released\"}";
    // No await from here on: one thread, whose memory of released contexts is reused below.
    let mut ctx = info_span!("request", test = "released").in_scope(Context::current);
    ctx.run(|| drop(TENANT.set("acme")));
    drop(ctx);
    assert!(spans::closed(shown), "a dropped context kept its span open");
    // The next context written on this thread carries nothing of the dropped one.
    let _base = TENANT.set("base");
    let mut next = Context::current();
    next.run(|| {
        drop(TENANT.set("next"));
        info!("released: next context");
    });
    assert_eq!(parent("released: next context"), None);
}

#[context_var]
static NAME: String;

/// What `NAME` read in the `on_close` of the span of the test below.
static NAME_AT_CLOSE: std::sync::Mutex<Vec<Option<String>>> = std::sync::Mutex::new(Vec::new());

#[test]
fn a_span_carried_by_a_dropped_context_closes_inside_it_not_in_the_callers() {
    carry();
    let shown = "request{test=\"closes inside\"}";
    spans::on_close_of(shown, || {
        NAME_AT_CLOSE.lock().unwrap().push(NAME.get());
    });
    // A context whose only value drops quietly (a `String`), carrying the span.
    let mut ctx = info_span!("request", test = "closes inside").in_scope(Context::current);
    ctx.run(|| drop(NAME.set("the context's".to_string())));
    // Dropped inside another context: the span's subscriber sees the dropped context (by
    // then emptied), not the caller's.
    let mut caller = Context::new().with_value(&NAME, "the caller's".to_string());
    caller.run(|| drop(ctx));
    assert!(spans::closed(shown));
    assert_eq!(*NAME_AT_CLOSE.lock().unwrap(), [None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_built_in_a_span_does_not_keep_it_open() {
    carry();
    let shown = "startup{test=\"layer\"}";
    // A context cached for the life of the service: the layer's base.
    let layer =
        info_span!("startup", test = "layer").in_scope(contextvars::tower::ContextLayer::new);
    assert!(spans::closed(shown));
    drop(layer);
}

// ---------------------------------------------------------------------------------------------
// The hooks: every task of the runtime.
// ---------------------------------------------------------------------------------------------

#[cfg(all(feature = "hooks", tokio_unstable))]
mod hooks {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        contextvars::hooks::install(builder.worker_threads(4).enable_all())
            .build()
            .unwrap()
    }

    #[test]
    fn a_plain_tokio_spawn_runs_in_its_spawners_span() {
        carry();
        runtime().block_on(async {
            let task = info_span!("request", test = "hooks").in_scope(|| {
                tokio::spawn(async {
                    // Nothing here touches the context: the span is entered for the whole poll.
                    info!("hooks: child");
                    tokio::spawn(async { info!("hooks: grandchild") })
                        .await
                        .unwrap();
                    async {
                        tokio::spawn(async { info!("hooks: under the step") })
                            .await
                            .unwrap();
                    }
                    .instrument(info_span!("step", test = "hooks"))
                    .await;
                })
            });
            task.await.unwrap();
            tokio::spawn(async { info!("hooks: outside") })
                .await
                .unwrap();
        });
        let request = Some("request{test=\"hooks\"}".to_string());
        assert_eq!(parent("hooks: child"), request);
        assert_eq!(parent("hooks: grandchild"), request);
        assert_eq!(
            parent("hooks: under the step").as_deref(),
            Some("step{test=\"hooks\"}")
        );
        assert_eq!(parent("hooks: outside"), None);
    }

    #[test]
    fn a_runtime_installed_without_spans_carries_the_values_not_the_span() {
        carry();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let runtime =
            contextvars::hooks::install_without_spans(builder.worker_threads(2).enable_all())
                .build()
                .unwrap();
        let tenants = runtime.block_on(async {
            let task = Context::new().run(|| {
                let _ = TENANT.set("acme");
                info_span!("request", test = "without spans").in_scope(|| {
                    tokio::spawn(async {
                        info!("without spans: child");
                        let grandchild = tokio::spawn(async {
                            info!("without spans: grandchild");
                            TENANT.get()
                        });
                        // The spawn helpers still carry the span current where they are
                        // called: here, one the task enters itself.
                        let helper = info_span!("step", test = "without spans").in_scope(|| {
                            contextvars::spawn(async { info!("without spans: helper") })
                        });
                        helper.await.unwrap();
                        (TENANT.get(), grandchild.await.unwrap())
                    })
                })
            });
            task.await.unwrap()
        });
        assert_eq!(tenants, ("acme", "acme"));
        assert_eq!(parent("without spans: child"), None);
        assert_eq!(parent("without spans: grandchild"), None);
        assert_eq!(
            parent("without spans: helper").as_deref(),
            Some("step{test=\"without spans\"}")
        );
    }

    #[test]
    fn many_hooked_tasks_each_log_under_their_spawners_span() {
        carry();
        runtime().block_on(async {
            let mut tasks = Vec::new();
            for n in 0..200_u32 {
                tasks.push(info_span!("hooked", n).in_scope(|| {
                    tokio::spawn(async move {
                        for step in 0..3 {
                            tokio::task::yield_now().await;
                            info!("hooked: {n} {step}");
                        }
                        tokio::spawn(async move { info!("hooked: {n} child") })
                            .await
                            .unwrap();
                    })
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
        });
        for n in 0..200_u32 {
            let expected = Some(format!("hooked{{n={n}}}"));
            for step in 0..3 {
                assert_eq!(parent(&format!("hooked: {n} {step}")), expected);
            }
            assert_eq!(parent(&format!("hooked: {n} child")), expected);
        }
    }

    #[test]
    fn a_span_closes_when_the_last_hooked_task_holding_it_ends() {
        carry();
        let runtime = runtime();
        let shown = "request{test=\"hooked close\"}";
        runtime.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let task = info_span!("request", test = "hooked close")
                .in_scope(|| tokio::spawn(async { rx.await.unwrap() }));
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!spans::closed(shown));
            tx.send(()).unwrap();
            task.await.unwrap();
            // The terminate hook may run just after the output is handed over.
            for _ in 0..100 {
                if spans::closed(shown) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert!(spans::closed(shown), "kept open after its task ended");
    }
}

// ---------------------------------------------------------------------------------------------
// A real server: a span per request, a task spawned by the handler.
// ---------------------------------------------------------------------------------------------

#[path = "support/http.rs"]
mod http;

async fn in_request_span(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let span = info_span!("http", path = request.uri().path());
    next.run(request).instrument(span).await
}

async fn handler(axum::extract::Path(id): axum::extract::Path<u32>) -> String {
    contextvars::spawn(async move {
        tokio::task::yield_now().await;
        info!("server: task of {id}");
        contextvars::spawn(async move { info!("server: grandchild of {id}") })
            .await
            .unwrap();
    })
    .await
    .unwrap();
    id.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handlers_task_logs_under_the_request_span_over_tcp() {
    carry();
    let app = axum::Router::new()
        .route("/orders/{id}", axum::routing::get(handler))
        .layer(contextvars::tower::ContextLayer::new())
        .layer(axum::middleware::from_fn(in_request_span));
    let addr = http::serve(app).await;
    let mut clients = Vec::new();
    for client in 0..4_u32 {
        clients.push(tokio::spawn(async move {
            let mut connection = http::Client::connect(addr).await;
            for n in 0..10 {
                let id = 1000 + client * 100 + n;
                let answer = connection.get(&format!("/orders/{id}"), &[]).await;
                assert_eq!(answer.body, id.to_string());
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    for client in 0..4_u32 {
        for n in 0..10 {
            let id = 1000 + client * 100 + n;
            let expected = Some(format!("http{{path=\"/orders/{id}\"}}"));
            assert_eq!(parent(&format!("server: task of {id}")), expected);
            assert_eq!(parent(&format!("server: grandchild of {id}")), expected);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_task_is_dropped_inside_its_span_which_then_closes() {
    struct LogOnDrop;
    impl Drop for LogOnDrop {
        fn drop(&mut self) {
            info!("aborted: dropped");
        }
    }
    carry();
    let shown = "request{test=\"aborted\"}";
    // Spawned in a span entered by hand, which the spawner's context does not carry.
    let task = info_span!("request", test = "aborted").in_scope(|| {
        let guard = LogOnDrop;
        contextvars::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        })
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!spans::closed(shown), "closed while the task holds it");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(parent("aborted: dropped").as_deref(), Some(shown));
    assert!(spans::closed(shown), "still open once the task is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_task_whose_context_carries_the_span_is_dropped_inside_it() {
    struct LogOnDrop;
    impl Drop for LogOnDrop {
        fn drop(&mut self) {
            info!("aborted carried: dropped");
        }
    }
    carry();
    let shown = "request{test=\"aborted carried\"}";
    // Spawned from a context that carries the span already (a snapshot taken in it).
    let mut carrying = info_span!("request", test = "aborted carried").in_scope(Context::current);
    let task = carrying.run(|| {
        let guard = LogOnDrop;
        contextvars::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        })
    });
    drop(carrying);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!spans::closed(shown), "closed while the task holds it");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(parent("aborted carried: dropped").as_deref(), Some(shown));
    assert!(spans::closed(shown), "still open once the task is gone");
}

#[test]
fn what_a_context_carries_makes_it_no_larger() {
    // Its bindings and its identity, as without the feature: a snapshot copies no more, and
    // a spawned task is no larger.
    assert_eq!(std::mem::size_of::<Context>(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_that_carry_a_span_are_still_each_their_own_context() {
    carry();
    let (mut first, mut second) = info_span!("request", test = "identity")
        .in_scope(|| (Context::current(), Context::current()));
    let mut copy = first.clone();
    // A token is for the context it was made in: not another snapshot, nor a copy.
    let token = first.run(|| TENANT.set("ann"));
    assert!(second.run(|| TENANT.reset(token)).is_err());
    let token = first.run(|| TENANT.set("bob"));
    assert!(copy.run(|| TENANT.reset(token)).is_err());
    let token = first.run(|| TENANT.set("cid"));
    assert!(first.run(|| TENANT.reset(token)).is_ok());
    assert_eq!(first.get(&TENANT), Some(&"bob"));
}

#[test]
fn a_wrapped_future_runs_in_its_span_at_every_poll_on_one_thread() {
    // Polled again and again on one thread, reading a variable each time: every poll enters
    // the span, not only the first (a poll that found its read cache as it left it still
    // enters the span its context carries).
    carry();
    let mut poll = 0;
    let future = std::future::poll_fn(|_| {
        poll += 1;
        assert_eq!(TENANT.get(), "acme");
        info!("every poll: {poll}");
        std::task::Poll::<()>::Pending
    });
    let mut wrapped = std::pin::pin!(
        info_span!("request", test = "every poll")
            .in_scope(|| TENANT.scope("acme", future).in_current_context())
    );
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..3 {
        assert!(wrapped.as_mut().poll(&mut cx).is_pending());
        info!("every poll: between");
    }
    for poll in 1..=3 {
        assert_eq!(
            parent(&format!("every poll: {poll}")).as_deref(),
            Some("request{test=\"every poll\"}"),
            "poll {poll}"
        );
    }
    assert!(
        spans::events("every poll: between")
            .iter()
            .all(|event| event.parent.is_none())
    );
}
