//! Where the values a span-carrying task set in its context are dropped, once carrying spans
//! is on: every value a context holds is dropped inside that context, and a context that
//! carries a span runs its code inside that span, so a value's `Drop` that logs must log in
//! the task's span, whichever way the task got its span (spawned in a span entered by hand,
//! spawned from a context that carries the span, or a plain task under the hooks), whether it
//! ended or was aborted.

#![cfg(feature = "tracing")]

#[path = "support/spans.rs"]
mod spans;

use std::time::Duration;

use contextvars::{Context, context_var};
use tracing::{info, info_span};

/// Logs from its `Drop`, with what it reads there.
struct LogOnDrop(&'static str);

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        info!("{} tenant={:?}", self.0, TENANT.get());
    }
}

#[context_var]
static GUARD: LogOnDrop;

#[context_var]
static TENANT: &str = "none";

fn carry() {
    spans::install();
    contextvars::tracing::carry_spans();
}

/// The one event whose message starts with `prefix`.
fn logged(prefix: &str) -> spans::Logged {
    let found = spans::events(prefix);
    assert_eq!(found.len(), 1, "{prefix}: {found:?}");
    found.into_iter().next().unwrap()
}

fn parent(prefix: &str) -> Option<String> {
    logged(prefix).parent
}

/// Spawned in a span entered by hand (the task holds the span itself): the value the task
/// set drops inside the span and the task's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_a_task_spawned_in_a_span_drops_inside_it() {
    carry();
    let task = info_span!("values", test = "in span").in_scope(|| {
        contextvars::spawn(async {
            let _ = TENANT.set("acme");
            let _ = GUARD.set(LogOnDrop("values: in span"));
        })
    });
    task.await.unwrap();
    assert_eq!(
        logged("values: in span").message,
        "values: in span tenant=\"acme\""
    );
    assert_eq!(
        parent("values: in span").as_deref(),
        Some("values{test=\"in span\"}")
    );
}

/// Spawned from a context that carries the span (a snapshot taken in it): the value the
/// task set must drop inside the span too, as it does for a task spawned in the span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_a_task_whose_context_carries_the_span_drops_inside_it() {
    carry();
    let mut carrying = info_span!("values", test = "carried").in_scope(Context::current);
    let task = carrying.run(|| {
        contextvars::spawn(async {
            let _ = TENANT.set("acme");
            let _ = GUARD.set(LogOnDrop("values: carried"));
        })
    });
    drop(carrying);
    task.await.unwrap();
    assert_eq!(
        logged("values: carried").message,
        "values: carried tenant=\"acme\""
    );
    assert_eq!(
        parent("values: carried").as_deref(),
        Some("values{test=\"carried\"}")
    );
}

/// The same, for a task aborted while waiting: its context's values drop inside its span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_an_aborted_task_whose_context_carries_the_span_drops_inside_it() {
    carry();
    let mut carrying = info_span!("values", test = "carried aborted").in_scope(Context::current);
    let task = carrying.run(|| {
        contextvars::spawn(async {
            let _ = TENANT.set("acme");
            let _ = GUARD.set(LogOnDrop("values: carried aborted"));
            std::future::pending::<()>().await;
        })
    });
    drop(carrying);
    tokio::time::sleep(Duration::from_millis(10)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        logged("values: carried aborted").message,
        "values: carried aborted tenant=\"acme\""
    );
    assert_eq!(
        parent("values: carried aborted").as_deref(),
        Some("values{test=\"carried aborted\"}")
    );
}

/// A `Context` that carries a span, dropped with a value whose `Drop` logs: the value drops
/// inside the context and its span.
#[test]
fn a_dropped_context_drops_its_values_inside_its_span() {
    carry();
    let mut context = info_span!("values", test = "dropped context").in_scope(Context::current);
    context.run(|| {
        let _ = TENANT.set("acme");
        let _ = GUARD.set(LogOnDrop("values: dropped context"));
    });
    drop(context);
    assert_eq!(
        logged("values: dropped context").message,
        "values: dropped context tenant=\"acme\""
    );
    assert_eq!(
        parent("values: dropped context").as_deref(),
        Some("values{test=\"dropped context\"}")
    );
}

/// The helpers that run a closure or a future in a snapshot: `spawn_blocking`, a thread of
/// `contextvars::thread::spawn`, a `gather` branch, `in_current_context`. What each sets
/// drops when it is done: inside the snapshot's span, as its code ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_set_in_each_helper_drop_inside_the_span_it_ran_in() {
    use contextvars::FutureExt;
    carry();
    let span = info_span!("values", test = "helpers");
    let (blocking, thread, gathered, wrapped) = span.in_scope(|| {
        let blocking = contextvars::spawn_blocking(|| {
            let _ = GUARD.set(LogOnDrop("values: helper blocking"));
        });
        let thread = contextvars::thread::spawn(|| {
            let _ = GUARD.set(LogOnDrop("values: helper thread"));
        });
        let gathered = contextvars::gather([async {
            let _ = GUARD.set(LogOnDrop("values: helper gather"));
        }]);
        let wrapped = async {
            let _ = GUARD.set(LogOnDrop("values: helper wrapped"));
        }
        .in_current_context();
        (blocking, thread, gathered, wrapped)
    });
    blocking.await.unwrap();
    thread.join().unwrap();
    gathered.await;
    wrapped.await;
    let mut outside = Vec::new();
    for helper in ["blocking", "thread", "gather", "wrapped"] {
        let prefix = format!("values: helper {helper}");
        if parent(&prefix).as_deref() != Some("values{test=\"helpers\"}") {
            outside.push(helper);
        }
    }
    assert_eq!(outside, Vec::<&str>::new(), "dropped outside the span");
}

#[cfg(all(feature = "hooks", tokio_unstable))]
mod hooks {
    use super::*;

    /// Under the hooks (with writable inheritance, so that the task may set), a plain task's
    /// value drops inside its spawner's span when the task ends.
    #[test]
    fn a_value_set_in_a_hooked_task_drops_inside_its_spawners_span() {
        carry();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        let runtime = contextvars::hooks::install_writable(builder.worker_threads(2).enable_all())
            .build()
            .unwrap();
        runtime.block_on(async {
            let task = info_span!("values", test = "hooked").in_scope(|| {
                tokio::spawn(async {
                    let _ = TENANT.set("acme");
                    let _ = GUARD.set(LogOnDrop("values: hooked"));
                })
            });
            task.await.unwrap();
            for _ in 0..100 {
                if !spans::events("values: hooked").is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        assert_eq!(
            logged("values: hooked").message,
            "values: hooked tenant=\"acme\""
        );
        assert_eq!(
            parent("values: hooked").as_deref(),
            Some("values{test=\"hooked\"}")
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        contextvars::hooks::install(builder.worker_threads(2).enable_all())
            .build()
            .unwrap()
    }

    /// A background task spawned with `spawn_without_context` from inside a request's span:
    /// as the docs of `carry_spans` advise for tasks that outlive their spawner, it neither
    /// logs under the request's span nor keeps it open while it runs.
    #[test]
    fn spawn_without_context_carries_no_span() {
        carry();
        let shown = "values{test=\"without context\"}";
        runtime().block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let background = info_span!("values", test = "without context").in_scope(|| {
                contextvars::hooks::spawn_without_context(async {
                    info!("values: background");
                    rx.await.unwrap();
                })
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open_while_running = !spans::closed(shown);
            tx.send(()).unwrap();
            background.await.unwrap();
            assert_eq!(parent("values: background"), None);
            assert!(!open_while_running, "the request's span is kept open");
        });
    }

    /// The same with `suppress_flow` around a plain `tokio::spawn`.
    #[test]
    fn suppress_flow_carries_no_span() {
        carry();
        let shown = "values{test=\"suppressed\"}";
        runtime().block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let background = info_span!("values", test = "suppressed").in_scope(|| {
                contextvars::hooks::suppress_flow(|| {
                    tokio::spawn(async {
                        info!("values: suppressed");
                        rx.await.unwrap();
                    })
                })
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let open_while_running = !spans::closed(shown);
            tx.send(()).unwrap();
            background.await.unwrap();
            assert_eq!(parent("values: suppressed"), None);
            assert!(!open_while_running, "the request's span is kept open");
        });
    }
}

/// A subscriber whose `on_enter` panics while a context's values are being dropped inside the
/// span the context carries: the panic is the dropper's, and it leaves nothing behind on the
/// thread, so the next context dropped there still drops its values inside its own span.
#[test]
fn a_panicking_on_enter_during_a_drop_leaves_later_drops_in_their_span() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tracing::span::Id;
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::{Layer, registry};

    static ARMED: AtomicBool = AtomicBool::new(false);
    static PARENTS: Mutex<Vec<Option<String>>> = Mutex::new(Vec::new());

    struct Boom;
    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Boom {
        fn on_enter(&self, id: &Id, ctx: LayerContext<'_, S>) {
            let boom = ctx.span(id).is_some_and(|span| span.name() == "boom");
            let armed = boom && ARMED.swap(false, Ordering::SeqCst);
            assert!(!armed, "the subscriber's on_enter panics");
        }

        fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
            let parent = ctx.event_span(event).map(|span| span.name().to_string());
            PARENTS.lock().unwrap().push(parent);
        }
    }

    /// A value with a `Drop` that does nothing: the context is entered to drop it.
    struct Quiet;
    impl Drop for Quiet {
        fn drop(&mut self) {}
    }
    #[context_var]
    static QUIET: Quiet;

    contextvars::tracing::carry_spans();
    let subscriber = registry().with(Boom);
    tracing::subscriber::with_default(subscriber, || {
        let mut boom = info_span!("boom").in_scope(Context::current);
        boom.run(|| drop(QUIET.set(Quiet)));
        ARMED.store(true, Ordering::SeqCst);
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(boom)));
        assert!(dropped.is_err(), "the subscriber's panic is the dropper's");

        let mut next = info_span!("next").in_scope(Context::current);
        next.run(|| drop(GUARD.set(LogOnDrop("after the panic"))));
        drop(next);
    });
    assert_eq!(*PARENTS.lock().unwrap(), [Some("next".to_string())]);
}
