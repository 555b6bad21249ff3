//! B24 and B39 where they meet the hooks and the layer: every value a context holds is dropped
//! inside that context, so its `Drop` reads the context's values and may `set` (what it sets
//! is discarded, and nothing panics), wherever the context ends: a task's end or abort, a
//! request's end over TCP, a blocking job, with the hooks installed or not, and where a value
//! reached a plain task only by inheritance. A `Drop` that spawns a task does not hang.

#[path = "support/http.rs"]
mod http;
mod support;

use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::get;
use contextvars::context_var;
use contextvars::tower::ContextLayer;

/// `(id, tenant read in the drop, outcome of a set in the drop)`.
type Seen = (String, Option<String>, Result<(), String>);

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

/// A value whose `Drop` reads `TENANT`, sets `AFTER`, and, if asked, spawns a task.
struct Witness {
    id: String,
    spawn: bool,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let read = TENANT.get();
        let set = AFTER
            .try_set(format!("set by {}", self.id))
            .map(drop)
            .map_err(|err| err.to_string());
        if self.spawn {
            // A task spawned from a `Drop`, wherever that `Drop` runs.
            drop(tokio::spawn(async { TENANT.get() }));
        }
        SEEN.lock().unwrap().push((self.id.clone(), read, set));
    }
}

#[context_var]
static TENANT: String;

#[context_var]
static WITNESS: Witness;

#[context_var]
static AFTER: String;

/// Binds a tenant and a witness in the current context.
fn bind(id: &str, spawn: bool) {
    let _ = TENANT.set(id.to_string());
    let _ = WITNESS.set(Witness {
        id: id.to_string(),
        spawn,
    });
}

/// Waits (at most 5 s) for the witness `id` to be dropped, and returns what it saw.
async fn seen(id: &str) -> Seen {
    for _ in 0..500 {
        if let Some(seen) = SEEN.lock().unwrap().iter().find(|(i, _, _)| i == id) {
            return seen.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the witness {id} was never dropped")
}

fn expect_inside(seen: &Seen) {
    assert_eq!(
        (&seen.1, &seen.2),
        (&Some(seen.0.clone()), &Ok(())),
        "{}: the drop ran inside its context, and could set there",
        seen.0
    );
}

/// The runtimes of a scenario: `(name, runtime)`, plain and, where built with them, hooked.
fn runtimes() -> Vec<(String, tokio::runtime::Runtime)> {
    let mut all = Vec::new();
    for multi_thread in [false, true] {
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        let runtime = builder.worker_threads(2).enable_all().build().unwrap();
        all.push((format!("plain, multi {multi_thread}"), runtime));
        #[cfg(all(tokio_unstable, feature = "hooks"))]
        all.push((
            format!("hooks, multi {multi_thread}"),
            support::hooked_runtime(multi_thread, false),
        ));
    }
    all
}

/// A `contextvars::spawn` task's values, at its end and when it is aborted, and a blocking
/// job's, are dropped inside their context: the drop reads the task's tenant and its `set`
/// succeeds; nothing it set reaches the awaiting task.
#[test]
fn a_tasks_values_are_dropped_inside_its_context_at_its_end_and_abort() {
    for (name, runtime) in runtimes() {
        runtime.block_on(async {
            for spawn in [false, true] {
                let id = format!("{name} end {spawn}");
                let task_id = id.clone();
                contextvars::spawn(async move {
                    bind(&task_id, spawn);
                    tokio::task::yield_now().await;
                })
                .await
                .unwrap();
                expect_inside(&seen(&id).await);

                let id = format!("{name} abort {spawn}");
                let task_id = id.clone();
                let (bound, is_bound) = tokio::sync::oneshot::channel();
                let task = contextvars::spawn(async move {
                    bind(&task_id, spawn);
                    bound.send(()).unwrap();
                    std::future::pending::<()>().await;
                });
                is_bound.await.unwrap();
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
                expect_inside(&seen(&id).await);

                let id = format!("{name} blocking {spawn}");
                let job_id = id.clone();
                contextvars::spawn_blocking(move || bind(&job_id, spawn))
                    .await
                    .unwrap();
                expect_inside(&seen(&id).await);
            }
            assert_eq!(AFTER.get(), None, "{name}");
        });
    }
}

/// Under the hooks: a value that reaches a plain task only by inheritance, whose owner (a
/// `contextvars::spawn` task) ends first, so that the plain task's end drops it. Returns what
/// its `Drop` saw.
#[cfg(all(tokio_unstable, feature = "hooks"))]
async fn dropped_by_an_inheritor(id: &str, spawn: bool) -> Seen {
    let owner_id = id.to_string();
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    #[allow(clippy::async_yields_async)]
    let owner = contextvars::spawn(async move {
        bind(&owner_id, spawn);
        tokio::spawn(async move {
            let _ = wait.await;
            WITNESS.with(|w| w.is_some())
        })
    });
    let inheritor = owner.await.unwrap();
    go.send(()).unwrap();
    assert!(inheritor.await.unwrap(), "{id}: the value was inherited");
    seen(id).await
}

/// Under the hooks, a value that outlived its owner in a plain task that inherited it is
/// dropped at that task's end still reading the context it was set in; a `Drop` there that
/// spawns a task does not hang the hooks.
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn an_inherited_value_outliving_its_owner_is_dropped_reading_its_context() {
    for multi_thread in [false, true] {
        support::hooked_runtime(multi_thread, false).block_on(async {
            for spawn in [false, true] {
                let id = format!("inherited, multi {multi_thread}, spawn {spawn}");
                let seen = dropped_by_an_inheritor(&id, spawn).await;
                assert_eq!(seen.1.as_deref(), Some(id.as_str()));
            }
        });
    }
}

/// B24 (and B39's "inside that context") under the hooks: the same value's `Drop` may `set`,
/// though the context it is dropped in is the inheritor's, which that task could only read:
/// "a value's Drop may read and set variables; what it sets there is discarded with the
/// context, and nothing panics". (Before the fix, `try_set` there gave `SetError::Inherited`.)
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn a_drop_at_an_inheriting_tasks_end_can_set() {
    support::hooked_runtime(false, false).block_on(async {
        let seen = dropped_by_an_inheritor("inherited, can set", false).await;
        expect_inside(&seen);
    });
}

fn tenant_hook(request: &mut Request) {
    if let Some(tenant) = request
        .headers()
        .get("x-tenant")
        .and_then(|v| v.to_str().ok())
    {
        let _ = TENANT.set(tenant.to_string());
    }
}

async fn witness(headers: HeaderMap) -> String {
    let id = headers["x-tenant"].to_str().unwrap().to_string();
    let spawn = headers.contains_key("x-spawn");
    let _ = WITNESS.set(Witness {
        id: id.clone(),
        spawn,
    });
    if headers.contains_key("x-hang") {
        std::future::pending::<()>().await;
    }
    format!("{:?}", AFTER.get())
}

/// A request's values, when it ends, when its client goes away before the answer, and with
/// `body_in_context`, are dropped inside the request's context, with and without the hooks:
/// the drop reads the request's tenant and may set; no later request sees what it set.
#[test]
fn a_requests_values_are_dropped_inside_its_context_over_tcp() {
    for (name, runtime) in runtimes() {
        runtime.block_on(async {
            for body_in_context in [false, true] {
                let layer = ContextLayer::new().on_request(tenant_hook as fn(&mut Request));
                let router = Router::new().route("/", get(witness));
                let app = if body_in_context {
                    router.layer(layer.body_in_context())
                } else {
                    router.layer(layer)
                };
                let addr = http::serve(app).await;
                let mut client = http::Client::connect(addr).await;
                for spawn in [false, true] {
                    let id = format!("{name} request {body_in_context} {spawn}");
                    let mut headers = vec![("x-tenant", id.as_str())];
                    if spawn {
                        headers.push(("x-spawn", "1"));
                    }
                    assert_eq!(client.get("/", &headers).await.body, "None");
                    expect_inside(&seen(&id).await);

                    let id = format!("{name} gone {body_in_context} {spawn}");
                    headers[0].1 = id.as_str();
                    headers.push(("x-hang", "1"));
                    let mut doomed = http::Client::connect(addr).await;
                    let hung = tokio::time::timeout(
                        Duration::from_millis(50),
                        doomed.try_get("/", &headers),
                    )
                    .await;
                    assert!(hung.is_err());
                    drop(doomed);
                    expect_inside(&seen(&id).await);
                }
            }
        });
    }
}

/// A value whose `Drop` panics.
struct Panics;

impl Drop for Panics {
    fn drop(&mut self) {
        panic!("a plain task's value panics on drop");
    }
}

#[context_var]
static PANICS: Panics;

/// B39 with `install_writable`, as its docs say: a plain `tokio::spawn` task owns what it
/// sets, and the hooks drop it at the task's end, after tokio handed the task's output to its
/// `JoinHandle`. A value whose `Drop` panics there goes no further than the panic hook: the
/// handle gives the output, and the runtime and the next task go on, seeing nothing of it.
/// (`contextvars::spawn`'s handle gives such a panic: see the test above.)
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn a_panicking_value_of_a_writable_plain_task_goes_no_further_than_the_panic_hook() {
    support::hooked_runtime(false, true).block_on(async {
        let task = tokio::spawn(async {
            let _ = PANICS.set(Panics);
            tokio::task::yield_now().await;
            "output"
        });
        assert_eq!(task.await.unwrap(), "output");
        let next = tokio::spawn(async { PANICS.is_set() });
        assert!(!next.await.unwrap());
        assert!(!PANICS.is_set());
    });
}

/// B39 under the hooks: a `contextvars::spawn` task's value whose `Drop` panics is reported
/// by the task's `JoinHandle` as a panic, at the task's end and when it is aborted, on both
/// runtime flavors; the runtime goes on serving.
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn under_the_hooks_a_spawned_tasks_panicking_value_is_its_panic_at_end_and_abort() {
    for multi_thread in [false, true] {
        support::hooked_runtime(multi_thread, false).block_on(async {
            let ended = contextvars::spawn(async {
                let _ = PANICS.set(Panics);
                tokio::task::yield_now().await;
            })
            .await;
            assert!(ended.unwrap_err().is_panic(), "multi {multi_thread}");

            let (bound, is_bound) = tokio::sync::oneshot::channel();
            let task = contextvars::spawn(async move {
                let _ = PANICS.set(Panics);
                bound.send(()).unwrap();
                std::future::pending::<()>().await;
            });
            is_bound.await.unwrap();
            task.abort();
            assert!(task.await.unwrap_err().is_panic(), "multi {multi_thread}");
            assert_eq!(tokio::spawn(async { 7 }).await.unwrap(), 7);
        });
    }
}

/// B39 on a thread pool through `run_in_executor`: a value the job binds, whose `Drop` panics
/// when the job's context goes, never lets a panic out onto the pool's thread (which would
/// kill a worker, or abort the process under rayon): the job's future reports it as the
/// job's panic. A value whose `Drop` reads and sets is dropped inside the job's context.
#[test]
fn a_run_in_executor_jobs_panicking_value_stays_the_jobs() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (threads, thread) = std::sync::mpsc::channel();
            let result = contextvars::run_in_executor(
                move |job| threads.send(std::thread::spawn(job)).unwrap(),
                || {
                    bind("executor job", false);
                    let _ = PANICS.set(Panics);
                    5
                },
            )
            .await;
            let pool_thread = thread.recv().unwrap().join();
            assert!(pool_thread.is_ok(), "a panic reached the pool's thread");
            assert!(result.unwrap_err().is_panic());
            expect_inside(&seen("executor job").await);
        });
}

/// B39, the same class as the `Buffer` worker's drops (see `test_worker_cancelled_requests.rs`):
/// a task binds a value whose `Drop` panics and hands a job to a pool with
/// `run_in_executor`; the task ends first, so the job's copy of the context holds the last
/// reference; the pool then drops the job without running it (a queue shut down). The panic
/// "never surfaces in another task": the pool's thread goes on. (Before the fix it was raised
/// on the pool's thread, which died; under rayon the process would have aborted.)
#[test]
fn a_job_dropped_unrun_after_its_task_ended_does_not_panic_the_pool() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (queue, jobs) = std::sync::mpsc::channel::<contextvars::Job>();
            let (done, task_done) = std::sync::mpsc::channel::<()>();
            let pool = std::thread::spawn(move || {
                // Shut down before running anything: once the task has ended, drop every job.
                task_done.recv().unwrap();
                drop(jobs.into_iter().collect::<Vec<_>>());
            });
            contextvars::spawn(async move {
                let _ = PANICS.set(Panics);
                drop(contextvars::run_in_executor(
                    move |job| queue.send(job).unwrap(),
                    || 1,
                ));
            })
            .await
            .unwrap();
            done.send(()).unwrap();
            assert!(
                pool.join().is_ok(),
                "the value's panic killed the pool's thread"
            );
        });
}

/// B34 and B24 at runtime shutdown, where no hook runs: a request still being served when its
/// runtime shuts down (its connection still open) has its values dropped inside its own
/// context, with and without the hooks.
#[test]
fn a_request_pending_at_runtime_shutdown_drops_its_values_inside_its_context() {
    for (name, runtime) in runtimes() {
        let id = format!("{name} shutdown");
        let client = runtime.block_on(async {
            let app = Router::new()
                .route("/", get(witness))
                .layer(ContextLayer::new().on_request(tenant_hook as fn(&mut Request)));
            let addr = http::serve(app).await;
            let mut client = http::Client::connect(addr).await;
            let headers = [("x-tenant", id.as_str()), ("x-hang", "1")];
            let hung =
                tokio::time::timeout(Duration::from_millis(50), client.try_get("/", &headers))
                    .await;
            assert!(hung.is_err());
            client
        });
        drop(runtime);
        drop(client);
        let seen = SEEN
            .lock()
            .unwrap()
            .iter()
            .find(|(i, _, _)| *i == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id}: never dropped"));
        expect_inside(&seen);
    }
}

/// B40's writable contexts inside a read-only task: under the hooks, a plain task (which only
/// inherited its values) may write wherever it entered a context of its own (`scope`,
/// `sync_scope`, `Context::run`, `in_current_context`), and a value bound there is dropped,
/// when that context ends, inside it: its `Drop` reads that context's tenant and may set.
#[cfg(all(tokio_unstable, feature = "hooks"))]
#[test]
fn a_read_only_task_writes_in_contexts_it_enters_and_their_values_drop_inside_them() {
    use contextvars::{Context, FutureExt};

    for multi_thread in [false, true] {
        support::hooked_runtime(multi_thread, false).block_on(async {
            let parent = Context::new().with_value(&TENANT, "parent".to_string());
            let task = parent.clone().run(|| {
                tokio::spawn(async move {
                    assert!(AFTER.try_set("refused".into()).is_err(), "read-only");
                    let id = format!("scope {multi_thread}");
                    TENANT
                        .scope(id.clone(), async {
                            tokio::task::yield_now().await;
                            bind(&id, false);
                        })
                        .await;
                    let id = format!("sync_scope {multi_thread}");
                    TENANT.sync_scope(id.clone(), || bind(&id, false));
                    let id = format!("run {multi_thread}");
                    Context::current().run(|| bind(&id, false));
                    let id = format!("in_current_context {multi_thread}");
                    let bound = id.clone();
                    async move {
                        tokio::task::yield_now().await;
                        bind(&bound, false);
                    }
                    .in_current_context()
                    .await;
                    (TENANT.get(), AFTER.get(), WITNESS.with(|w| w.is_some()), id)
                })
            });
            let (tenant, after, witness, _) = task.await.unwrap();
            assert_eq!(
                (tenant.as_deref(), after, witness),
                (Some("parent"), None, false)
            );
            for what in ["scope", "sync_scope", "run", "in_current_context"] {
                expect_inside(&seen(&format!("{what} {multi_thread}")).await);
            }
        });
    }
}

/// B39 for a thread started with `contextvars::thread::spawn`: a value it binds whose `Drop`
/// panics never aborts the process and is reported as the thread's panic (`join` gives
/// `Err`); a value beside it whose `Drop` reads is dropped inside that context.
#[test]
fn a_context_threads_panicking_value_never_aborts_the_process() {
    let id = "context thread".to_string();
    let thread = contextvars::thread::spawn(move || {
        bind(&id, false);
        let _ = PANICS.set(Panics);
    });
    assert!(thread.join().is_err(), "reported as the thread's panic");
    let seen = SEEN
        .lock()
        .unwrap()
        .iter()
        .find(|(i, _, _)| i == "context thread")
        .cloned()
        .expect("dropped when the thread ended");
    assert_eq!(seen.1.as_deref(), Some("context thread"));
}
