//! Values are dropped inside their context (B24): a value whose `Drop` reads and sets context
//! variables, held by a task's context, a request's context, a blocking job's context or a
//! `Context`, sees that context's values when it is dropped, may set, and nothing panics.
//! A task's values are dropped inside the task before its output is handed over; an output
//! nobody takes is dropped in an empty context of its own, so its sets reach no one.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use contextvars::tower::ContextLayer;
use contextvars::{Context, context_var};

#[path = "support/http.rs"]
mod http;

/// What a `Drop` saw: the `TENANT` it read, whether `try_set` worked, and whether it got to
/// its end (a plain `set` that panicked would stop it midway).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    label: String,
    tenant: Option<u32>,
    try_set_ok: bool,
    finished: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Reads `TENANT`, then sets variables with both `try_set` and `set`, as a connection pool's
/// guard or a metrics recorder might.
struct SetsOnDrop {
    label: String,
    log: Log,
}

impl SetsOnDrop {
    fn new(label: &str, log: &Log) -> Arc<Self> {
        Arc::new(SetsOnDrop {
            label: label.to_string(),
            log: Arc::clone(log),
        })
    }
}

impl Drop for SetsOnDrop {
    fn drop(&mut self) {
        let tenant = TENANT.get();
        let try_set_ok = MARK.try_set(1).is_ok();
        let _token = MARK.set(2);
        self.log.lock().unwrap().push(Seen {
            label: self.label.clone(),
            tenant,
            try_set_ok,
            finished: true,
        });
    }
}

#[context_var]
static TENANT: u32;

#[context_var]
static MARK: u32;

#[context_var]
static HOLDER: Arc<SetsOnDrop>;

fn log() -> Log {
    Arc::new(Mutex::new(Vec::new()))
}

/// What one `SetsOnDrop` dropped inside a context where `TENANT` is `tenant` records.
fn seen(label: &str, tenant: Option<u32>) -> Vec<Seen> {
    vec![Seen {
        label: label.to_string(),
        tenant,
        try_set_ok: true,
        finished: true,
    }]
}

fn taken(log: &Log) -> Vec<Seen> {
    std::mem::take(&mut *log.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_a_spawned_task_is_dropped_inside_the_task_when_it_ends() {
    let log = log();
    let _tenant = TENANT.set(7);
    let value = SetsOnDrop::new("task", &log);
    let answer = contextvars::spawn(async move {
        let _ = HOLDER.set(value);
        tokio::task::yield_now().await;
        "done"
    })
    .await;
    assert_eq!(answer.unwrap(), "done");
    assert_eq!(taken(&log), seen("task", Some(7)));
    // Nothing the `Drop` set reached the spawner.
    assert_eq!(MARK.get(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_an_aborted_task_is_dropped_inside_the_task() {
    let log = log();
    let _tenant = TENANT.set(3);
    let value = SetsOnDrop::new("aborted", &log);
    let (started, wait) = tokio::sync::oneshot::channel();
    let handle = contextvars::spawn(async move {
        let _ = HOLDER.set(value);
        started.send(()).unwrap();
        std::future::pending::<()>().await;
    });
    wait.await.unwrap();
    handle.abort();
    assert!(handle.await.unwrap_err().is_cancelled());
    assert_eq!(taken(&log), seen("aborted", Some(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_in_spawn_blocking_is_dropped_inside_its_context() {
    let log = log();
    let _tenant = TENANT.set(4);
    let value = SetsOnDrop::new("blocking", &log);
    let answer = contextvars::spawn_blocking(move || {
        let _ = HOLDER.set(value);
        "done"
    })
    .await;
    assert_eq!(answer.unwrap(), "done");
    assert_eq!(taken(&log), seen("blocking", Some(4)));
}

#[test]
fn a_context_dropped_while_another_is_entered_drops_its_values_inside_itself() {
    let log = log();
    let doomed = Context::new()
        .with_value(&TENANT, 5)
        .with_value(&HOLDER, SetsOnDrop::new("context", &log));
    let mut other = Context::new().with_value(&TENANT, 9);
    other.run(|| drop(doomed));
    assert_eq!(taken(&log), seen("context", Some(5)));
    // The `Drop`'s sets went with the dropped context, not into the entered one.
    assert_eq!(other.get(&MARK), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_dropped_in_a_task_without_a_context_drops_its_values_inside_itself() {
    let log = log();
    let value = SetsOnDrop::new("plain task", &log);
    tokio::spawn(async move {
        let ctx = Context::new()
            .with_value(&TENANT, 6)
            .with_value(&HOLDER, value);
        drop(ctx);
    })
    .await
    .unwrap();
    assert_eq!(taken(&log), seen("plain task", Some(6)));
}

#[test]
fn a_value_replaced_by_with_value_is_dropped_inside_that_context() {
    let log = log();
    let ctx = Context::new()
        .with_value(&TENANT, 8)
        .with_value(&HOLDER, SetsOnDrop::new("replaced", &log))
        .with_value(&HOLDER, SetsOnDrop::new("kept", &log));
    assert_eq!(taken(&log), seen("replaced", Some(8)));
    drop(ctx);
    assert_eq!(taken(&log), seen("kept", Some(8)));
}

/// A task's output whose `Drop` reads and sets (through the value it holds).
struct Output {
    _value: Arc<SetsOnDrop>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_dropped_with_its_join_handle_in_another_task_is_dropped_in_a_context_of_its_own()
{
    let log = log();
    let value = SetsOnDrop::new("output", &log);
    let handle = Context::new()
        .with_value(&TENANT, 11)
        .run(|| contextvars::spawn(async move { Output { _value: value } }));
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    // Another task, with a context of its own, drops the handle of the finished task.
    let dropper = Context::new().with_value(&TENANT, 1).run(|| {
        contextvars::spawn(async move {
            drop(handle);
            assert_eq!(TENANT.get(), Some(1));
            assert_eq!(
                MARK.get(),
                None,
                "the output's sets reached the dropping task"
            );
        })
    });
    dropper.await.unwrap();
    // The task's values went with the task: the output reads none of them, nor the
    // dropper's.
    assert_eq!(taken(&log), seen("output", None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_of_a_detached_task_is_dropped_in_a_context_of_its_own_when_it_finishes() {
    let log = log();
    let value = SetsOnDrop::new("detached", &log);
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let handle = Context::new().with_value(&TENANT, 12).run(|| {
        contextvars::spawn(async move {
            wait.await.unwrap();
            Output { _value: value }
        })
    });
    // Detached before it finishes: tokio drops the output on a worker, right after the
    // task's last poll.
    drop(handle);
    go.send(()).unwrap();
    for _ in 0..1000 {
        if !log.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(taken(&log), seen("detached", None));
}

// ---------------------------------------------------------------------------------------
// A request's values, over a real axum server
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_set_while_handling_a_request_is_dropped_inside_the_request_context() {
    let log = log();
    let handler_log = Arc::clone(&log);
    let app = Router::new()
        .route(
            "/",
            get(move || {
                let log = Arc::clone(&handler_log);
                async move {
                    let tenant = TENANT.get().unwrap_or(0);
                    let _ = HOLDER.set(SetsOnDrop::new(&format!("request {tenant}"), &log));
                    format!("tenant {tenant}")
                }
            }),
        )
        .layer(
            ContextLayer::new().on_request(|request: &mut axum::extract::Request| {
                let tenant = request.headers()["x-tenant"].to_str().unwrap().parse();
                let _ = TENANT.set(tenant.unwrap());
            }),
        );
    let addr = http::serve(app).await;

    let mut client = http::Client::connect(addr).await;
    for tenant in 1..=5 {
        // Keep-alive: one connection, one request after another; a panic in the worker would
        // close it, and `get` fails saying so.
        let answer = client.get("/", &[("x-tenant", &tenant.to_string())]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, format!("tenant {tenant}"));
    }
    let mut dropped = taken(&log);
    dropped.sort_by(|a, b| a.label.cmp(&b.label));
    let expected: Vec<Seen> = (1..=5)
        .flat_map(|tenant| seen(&format!("request {tenant}"), Some(tenant)))
        .collect();
    assert_eq!(dropped, expected);
}

#[test]
fn a_value_shared_by_two_contexts_is_dropped_inside_the_last_one_to_go() {
    let log = log();
    let first = Context::new()
        .with_value(&TENANT, 1)
        .with_value(&HOLDER, SetsOnDrop::new("shared", &log));
    // A copy that shares the value, with a tenant of its own.
    let second = first.clone().with_value(&TENANT, 2);
    // The first to go only lets go of its share: nothing is dropped, nothing seen.
    drop(first);
    assert!(log.lock().unwrap().is_empty());
    assert!(second.get(&HOLDER).is_some());
    // The last holder drops it inside itself.
    drop(second);
    assert_eq!(*log.lock().unwrap(), seen("shared", Some(2)));
}

#[test]
fn a_temporary_context_drops_only_what_it_added_and_the_callers_values_stay() {
    let log = log();
    let mut ctx = Context::new()
        .with_value(&TENANT, 3)
        .with_value(&HOLDER, SetsOnDrop::new("caller's", &log));
    ctx.run(|| {
        // `sync_scope` runs in a copy with one value added; the copy goes at the end.
        let seen_inside = TENANT.sync_scope(4, || (TENANT.get(), HOLDER.get().is_some()));
        assert_eq!(seen_inside, (Some(4), true));
        assert!(
            log.lock().unwrap().is_empty(),
            "the caller's value was not dropped"
        );
        assert_eq!(TENANT.get(), Some(3));
    });
    drop(ctx);
    assert_eq!(*log.lock().unwrap(), seen("caller's", Some(3)));
}

#[context_var]
static NAME: String;

#[context_var]
static NAMES: Vec<String>;

#[context_var]
static HOLDERS: Vec<Arc<SetsOnDrop>>;

#[context_var]
static MAYBE_HOLDER: Option<Arc<SetsOnDrop>>;

#[context_var]
static PAIR: (String, u64);

/// A type of the user's own, without a `Drop`: its fields' drops only free memory, but the
/// library cannot know that of a user's type, so it is dropped inside its context like any.
#[derive(Clone)]
struct Plain {
    _name: String,
}

#[context_var]
static PLAIN: Plain;

#[test]
fn only_types_whose_drop_frees_memory_and_nothing_else_may_be_dropped_outside_their_context() {
    use contextvars::Key;
    // Strings, vectors and tuples of them: a drop frees memory and runs no code of anyone's.
    assert!(<NAME as Key>::quiet_drop_proof().is_some());
    assert!(<NAMES as Key>::quiet_drop_proof().is_some());
    assert!(<PAIR as Key>::quiet_drop_proof().is_some());
    // A value whose `Drop` reads and sets variables, alone or inside a vector or an option,
    // and any type of the user's own: dropped inside its context.
    assert!(<HOLDER as Key>::quiet_drop_proof().is_none());
    assert!(<HOLDERS as Key>::quiet_drop_proof().is_none());
    assert!(<MAYBE_HOLDER as Key>::quiet_drop_proof().is_none());
    assert!(<PLAIN as Key>::quiet_drop_proof().is_none());
}

/// Reads `NAME` when dropped.
struct ReadsName {
    log: Arc<Mutex<Vec<Option<String>>>>,
}

impl Drop for ReadsName {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(NAME.get());
    }
}

#[context_var]
static READS_NAME: Arc<ReadsName>;

#[test]
fn a_value_whose_drop_reads_a_string_still_finds_it_bound_when_its_context_goes() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let doomed = Context::new()
        .with_value(&NAME, "ann".to_string())
        .with_value(&NAMES, vec!["bob".to_string()])
        .with_value(
            &READS_NAME,
            Arc::new(ReadsName {
                log: Arc::clone(&log),
            }),
        );
    let mut other = Context::new().with_value(&NAME, "eve".to_string());
    other.run(|| drop(doomed));
    assert_eq!(*log.lock().unwrap(), [Some("ann".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_holding_only_strings_end_without_their_values_reaching_another_task() {
    // Many tasks whose contexts hold only values that drop quietly end while others run,
    // and every task reads its own values to the end.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            contextvars::spawn(async move {
                let _token = NAME.set(format!("task {i}"));
                let _names = NAMES.set(vec![format!("a{i}"), format!("b{i}")]);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                    assert_eq!(NAME.get(), Some(format!("task {i}")));
                }
                NAMES.get().unwrap().len()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 2);
    }
    assert_eq!(NAME.get(), None);
}
