//! Automatic flow (feature `hooks`, under `--cfg tokio_unstable`): on a runtime with the hooks,
//! every task, however spawned, starts in a snapshot of its spawner's context taken at the
//! spawn, for reading; a task spawned with plain `tokio::spawn` writes only in a context it
//! enters (`scope`, `with_context`, `contextvars::spawn`, the layer), unless the runtime was
//! built with `install_writable`; sets on either side stay invisible to the other; where no
//! hook runs, a task without a context still reads an empty context and cannot set.
//!
//! Run with `cargo test --features hooks --test test_hooks` (the workspace's `.cargo/config.toml`
//! sets `--cfg tokio_unstable`).

#![cfg(all(tokio_unstable, feature = "hooks"))]

#[path = "support/http.rs"]
mod http;
mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use contextvars::tower::ContextLayer;
use contextvars::{Context, FutureExt, SetError, context_var};
use support::Rng;
use tokio::net::TcpListener;
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Barrier, oneshot};

#[context_var]
static USER: &'static str;

#[context_var]
static REQUEST: u64;

#[context_var]
static SERVER: &'static str;

/// A runtime with the hooks installed: two workers, or the current thread.
fn hooked(multi_thread: bool) -> Runtime {
    support::hooked_runtime(multi_thread, false)
}

/// A runtime with the opt-in writable inheritance (asyncio's rule).
fn hooked_writable(multi_thread: bool) -> Runtime {
    support::hooked_runtime(multi_thread, true)
}

#[contextvars::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_and_grandchild_see_the_parents_values_as_of_the_spawn() {
    let _user = USER.set("ann");
    let child = tokio::spawn(async {
        let child_saw = USER.get();
        // The child reads what it inherited; it writes in a scope of its own.
        let grandchild = USER.sync_scope("bob", || tokio::spawn(async { USER.get() }));
        (child_saw, USER.get(), grandchild.await.unwrap())
    });
    let _later = USER.set("dan"); // after the child's spawn: not seen by it
    assert_eq!(
        child.await.unwrap(),
        (Some("ann"), Some("ann"), Some("bob"))
    );
    assert_eq!(USER.get(), Some("dan"));
}

#[contextvars::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_spawned_task_cannot_write_to_what_it_inherited() {
    let _user = USER.set("ann");
    let child = tokio::spawn(async {
        let refused = USER.try_set("bob").map(drop);
        let metadata = contextvars::metadata::try_set_metadata_with(
            "plan",
            "gold",
            contextvars::metadata::MetadataFlags::NONE,
        );
        (refused, metadata, USER.get())
    });
    let (refused, metadata, seen) = child.await.unwrap();
    assert_eq!(refused, Err(SetError::Inherited { var: "USER" }));
    assert!(metadata.is_err());
    assert_eq!(seen, Some("ann"));
    let message = tokio::spawn(async { USER.try_set("bob").unwrap_err().to_string() })
        .await
        .unwrap();
    assert!(message.contains("contextvars::spawn"), "{message}");
    assert!(message.contains("ContextLayer"), "{message}");
    assert!(message.lines().count() <= 3, "{message}");
    // `set` panics with that message, inside the child: its handle reports the panic.
    let failed = tokio::spawn(async {
        let _ = USER.set("bob");
    })
    .await;
    assert!(failed.unwrap_err().is_panic());
}

/// The opt-in: asyncio's rule, where a plain-spawned task writes to its own snapshot.
#[test]
fn with_install_writable_sets_never_cross_between_parent_and_child_either_way() {
    hooked_writable(false).block_on(sets_never_cross());
    hooked_writable(true).block_on(sets_never_cross());
}

async fn sets_never_cross() {
    let _user = USER.set("ann");
    let (child_set, child_has_set) = oneshot::channel();
    let (parent_set, parent_has_set) = oneshot::channel();
    let child = tokio::spawn(async move {
        let _ = USER.set("bob");
        child_set.send(()).unwrap();
        parent_has_set.await.unwrap();
        USER.get()
    });
    child_has_set.await.unwrap();
    assert_eq!(
        USER.get(),
        Some("ann"),
        "the child's set reached the parent"
    );
    let _ = USER.set("cid");
    parent_set.send(()).unwrap();
    assert_eq!(
        child.await.unwrap(),
        Some("bob"),
        "the parent's set reached the child"
    );
}

/// Also the regression test for a task woken, and polled on the other worker, before the
/// worker that polled it last has run its after-poll hook (the context is still there).
#[test]
fn tasks_keep_their_values_when_they_migrate_between_workers() {
    const TASKS: u64 = 64;
    let runtime = hooked(true);
    let threads = runtime.block_on(async {
        let barrier = Arc::new(Barrier::new(usize::try_from(TASKS).unwrap()));
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                let barrier = barrier.clone();
                // Each task inherits its own value (plain-spawned tasks read, not write).
                REQUEST.sync_scope(n, || {
                    tokio::spawn(async move {
                        let mut threads = HashSet::new();
                        for _ in 0..200 {
                            threads.insert(std::thread::current().id());
                            // Everyone waits for everyone: wakes come from whichever worker
                            // arrives last, so tasks move between the two workers.
                            tokio::time::timeout(Duration::from_secs(30), barrier.wait())
                                .await
                                .expect("another task failed: see its panic");
                            assert_eq!(REQUEST.get(), Some(n));
                        }
                        threads
                    })
                })
            })
            .collect();
        let mut threads: Vec<HashSet<ThreadId>> = Vec::new();
        for task in tasks {
            threads.push(task.await.unwrap());
        }
        threads
    });
    assert!(
        threads.iter().any(|seen| seen.len() > 1),
        "no task ran on more than one worker: the test proved nothing"
    );
}

#[test]
fn handle_spawn_from_a_plain_thread_inherits_that_threads_context() {
    let runtime = hooked(true);
    let handle = runtime.handle().clone();
    let seen = std::thread::spawn(move || {
        let _user = USER.set("ann");
        let task = handle.spawn(async {
            let seen = USER.get();
            assert!(USER.try_set("bob").is_err());
            seen
        });
        let seen = handle.block_on(task).unwrap();
        (seen, USER.get())
    })
    .join()
    .unwrap();
    assert_eq!(seen, (Some("ann"), Some("ann")));
}

#[test]
fn spawn_from_the_block_on_root_inherits_the_threads_context() {
    for multi_thread in [false, true] {
        let runtime = hooked(multi_thread);
        let _user = USER.set("ann");
        let (seen, after) = runtime.block_on(async {
            let task = tokio::spawn(async {
                let seen = USER.get();
                assert!(USER.try_set("bob").is_err());
                seen
            });
            // The root's context is whole again after the task's polls on this thread.
            (task.await.unwrap(), USER.get())
        });
        assert_eq!((seen, after), (Some("ann"), Some("ann")));
        assert_eq!(USER.get(), Some("ann"));
    }
}

#[contextvars::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_set_tasks_inherit() {
    let mut set = tokio::task::JoinSet::new();
    for n in 0..16 {
        let _ = REQUEST.set(n);
        set.spawn(async move { (n, REQUEST.get()) });
    }
    while let Some(result) = set.join_next().await {
        let (n, seen) = result.unwrap();
        assert_eq!(seen, Some(n));
    }
}

#[contextvars::test]
async fn a_context_spawn_and_a_wrapped_future_still_run_in_their_own_context() {
    let _user = USER.set("ann");
    // `contextvars::spawn` inside the hook's context: its own snapshot wins and stays.
    let spawned = contextvars::spawn(async {
        let _ = USER.set("bob");
        tokio::task::yield_now().await;
        USER.get()
    });
    assert_eq!(spawned.await.unwrap(), Some("bob"));
    // A wrapped future inside a hooked task: its context while polled, the task's after.
    let task = tokio::spawn(async {
        let inner = async {
            tokio::task::yield_now().await;
            USER.get()
        }
        .with_context(Context::new().with_value(&USER, "eve"))
        .await;
        (inner, USER.get())
    });
    assert_eq!(task.await.unwrap(), (Some("eve"), Some("ann")));
    assert_eq!(USER.get(), Some("ann"));
}

#[contextvars::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_no_hook_runs_a_task_without_context_still_reads_empty_and_cannot_set() {
    let _user = USER.set("ann");
    // tokio's own `spawn_blocking`: no hook runs.
    let blocking = tokio::task::spawn_blocking(|| (USER.get(), USER.try_set("bob").is_err()));
    assert_eq!(blocking.await.unwrap(), (None, true));
    // A `LocalSet` polled inside this task: its tasks run no hook either, and must not see
    // this task's context, which is current on the thread while they are polled.
    let local = tokio::task::LocalSet::new();
    let seen = local
        .run_until(async {
            tokio::task::spawn_local(async { (USER.get(), USER.try_set("bob").is_err()) })
                .await
                .unwrap()
        })
        .await;
    assert_eq!(seen, (None, true));
    // The helpers still carry the context there.
    let blocking = contextvars::spawn_blocking(|| USER.get());
    assert_eq!(blocking.await.unwrap(), Some("ann"));
}

#[contextvars::test]
async fn spawn_without_context_and_suppress_flow_inherit_nothing() {
    let _user = USER.set("ann");
    let task = contextvars::hooks::spawn_without_context(async {
        let seen = USER.get();
        let _ = USER.set("maintenance"); // a context of its own: set works
        (seen, USER.get())
    });
    assert_eq!(task.await.unwrap(), (None, Some("maintenance")));
    let task = contextvars::hooks::suppress_flow(|| tokio::spawn(async { USER.get() }));
    assert_eq!(task.await.unwrap(), None);
    assert_eq!(USER.get(), Some("ann"));
}

/// Ten thousand tasks at once, each with random yields and nested plain spawns: each sees
/// exactly its own values, and its children see the values it had when it spawned them. The
/// tasks set their values in scopes of their own, as plain-spawned tasks must.
#[test]
fn ten_thousand_tasks_with_random_yields_and_nested_spawns_see_only_their_own() {
    const TASKS: u64 = 10_000;
    let runtime = hooked(true);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                tokio::spawn(async move {
                    assert_eq!(REQUEST.get(), None, "task {n} started with a value");
                    REQUEST
                        .scope(n, async move {
                            let mut rng = Rng::new(n);
                            let mut children = Vec::new();
                            for step in 0..4 {
                                for _ in 0..rng.below(3) {
                                    tokio::task::yield_now().await;
                                }
                                assert_eq!(REQUEST.get(), Some(n));
                                if rng.below(2) == 0 {
                                    let user = if step % 2 == 0 { "even" } else { "odd" };
                                    let yields = rng.below(3);
                                    children.push(USER.sync_scope(user, || {
                                        tokio::spawn(async move {
                                            for _ in 0..yields {
                                                tokio::task::yield_now().await;
                                            }
                                            let seen = (REQUEST.get(), USER.get());
                                            assert!(REQUEST.try_set(n + TASKS).is_err());
                                            let grandchild = REQUEST.sync_scope(n + TASKS, || {
                                                tokio::spawn(async { REQUEST.get() })
                                            });
                                            let grandchild = grandchild.await.unwrap();
                                            assert_eq!(grandchild, Some(n + TASKS));
                                            assert_eq!(seen, (Some(n), Some(user)));
                                        })
                                    }));
                                }
                            }
                            for child in children {
                                child.await.unwrap();
                            }
                            assert_eq!(REQUEST.get(), Some(n));
                        })
                        .await;
                    assert_eq!(REQUEST.get(), None);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// The same load with the opt-in writable inheritance: tasks set their inherited snapshot.
#[test]
fn with_install_writable_ten_thousand_tasks_with_random_yields_and_nested_spawns_see_only_their_own()
 {
    const TASKS: u64 = 10_000;
    let runtime = hooked_writable(true);
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|n| {
                tokio::spawn(async move {
                    let mut rng = Rng::new(n);
                    assert_eq!(REQUEST.get(), None, "task {n} started with a value");
                    let _ = REQUEST.set(n);
                    let mut children = Vec::new();
                    for step in 0..4 {
                        for _ in 0..rng.below(3) {
                            tokio::task::yield_now().await;
                        }
                        assert_eq!(REQUEST.get(), Some(n));
                        if rng.below(2) == 0 {
                            let _ = USER.set(if step % 2 == 0 { "even" } else { "odd" });
                            let user = USER.get();
                            let yields = rng.below(3);
                            children.push(tokio::spawn(async move {
                                for _ in 0..yields {
                                    tokio::task::yield_now().await;
                                }
                                let seen = (REQUEST.get(), USER.get());
                                let _ = REQUEST.set(n + TASKS); // never reaches the parent
                                let grandchild = tokio::spawn(async { REQUEST.get() });
                                assert_eq!(grandchild.await.unwrap(), Some(n + TASKS));
                                assert_eq!(seen, (Some(n), user));
                            }));
                        }
                    }
                    for child in children {
                        child.await.unwrap();
                    }
                    assert_eq!(REQUEST.get(), Some(n));
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// One request on a keep-alive connection; the response body, which must come with a 200.
async fn request(client: &mut http::Client, path: &str) -> String {
    let answer = client.get(path, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// What a handler reports: the server's variable, the request's, the user, and whether it
/// may set the user.
fn report() -> String {
    let seen = format!("{:?} {:?} {:?}", SERVER.get(), REQUEST.get(), USER.get());
    match USER.try_set("set by a handler") {
        Ok(_) => format!("{seen} set"),
        Err(SetError::Inherited { .. }) => format!("{seen} read-only"),
        Err(err) => format!("{seen} {err}"),
    }
}

#[test]
fn an_axum_server_started_in_a_context_gives_it_to_its_connections_and_the_layer_a_fresh_copy_per_request()
 {
    let runtime = hooked(true);
    runtime.block_on(async {
        let _server = SERVER.set("edge-1");
        let layered = Router::new()
            .route("/layered", get(|| async { report() }))
            .layer(ContextLayer::with_base(
                Context::current().with_value(&REQUEST, 7),
            ));
        // Without the layer, a handler runs in its connection task's context, which it reads
        // and cannot write to: one connection serves many requests.
        let app = Router::new()
            .route("/plain", get(|| async { report() }))
            .merge(layered);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A plain `tokio::spawn`, as any application starts its server; axum spawns each
        // connection's task itself, with `tokio::spawn`.
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let mut connection = http::Client::connect(addr).await;
        // Each request through the layer starts from the layer's base: the previous one's
        // set is gone, though both came on one connection.
        for _ in 0..3 {
            assert_eq!(
                request(&mut connection, "/layered").await,
                r#"Some("edge-1") Some(7) None set"#
            );
        }
        assert_eq!(
            request(&mut connection, "/plain").await,
            r#"Some("edge-1") None None read-only"#,
            "the connection task did not inherit the server's context"
        );
        // A second connection: a task of its own, with nothing from the first.
        let mut second = http::Client::connect(addr).await;
        assert_eq!(
            request(&mut second, "/plain").await,
            r#"Some("edge-1") None None read-only"#
        );
        assert_eq!(
            request(&mut second, "/layered").await,
            r#"Some("edge-1") Some(7) None set"#
        );
        server.abort();
        // The server's own context never saw a handler's set.
        assert_eq!(USER.get(), None);
    });
}

/// A task's values are dropped when it ends; a `Drop` that reads a variable at that moment
/// sees the task's context, on completion and on abort.
#[test]
fn values_of_a_finished_or_aborted_task_are_dropped_where_their_drop_can_read() {
    struct Probe(Arc<Mutex<Vec<Option<u64>>>>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(REQUEST.get());
        }
    }
    let runtime = hooked(true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    runtime.block_on(async {
        let probe = Probe(seen.clone());
        let _ = REQUEST.set(1);
        tokio::spawn(async move {
            let _probe = probe;
            tokio::task::yield_now().await;
        })
        .await
        .unwrap();
        let probe = Probe(seen.clone());
        let _ = REQUEST.set(2);
        let (started, is_started) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _probe = probe;
            started.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        is_started.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    });
    assert_eq!(*seen.lock().unwrap(), [Some(1), Some(2)]);
}

/// `#[contextvars::test]` takes tokio's arguments: here the current-thread ones, and the path
/// to tokio.
#[contextvars::test(
    flavor = "current_thread",
    unhandled_panic = "ignore",
    name = "hooked",
    crate = "tokio"
)]
async fn the_macro_takes_tokios_arguments() {
    let _user = USER.set("ann");
    // `unhandled_panic = "ignore"` (tokio's default, given explicitly): a panicking task
    // does not stop the runtime.
    let failed = tokio::spawn(async { panic!("a task's panic, ignored") }).await;
    assert!(failed.unwrap_err().is_panic());
    assert_eq!(
        tokio::spawn(async { USER.get() }).await.unwrap(),
        Some("ann")
    );
    assert_eq!(tokio::runtime::Handle::current().metrics().num_workers(), 1);
}

/// The `local` flavor (tokio's `LocalRuntime`): its tasks, `spawn_local`ed ones included,
/// inherit too.
#[contextvars::test(flavor = "local")]
async fn local_runtime_tasks_inherit() {
    let _user = USER.set("ann");
    let not_send = std::rc::Rc::new("ann's");
    let local =
        tokio::task::spawn_local(async move { USER.get().filter(|_| *not_send == "ann's") });
    assert_eq!(local.await.unwrap(), Some("ann"));
    assert_eq!(
        tokio::spawn(async { USER.get() }).await.unwrap(),
        Some("ann")
    );
}

/// Futures still pending when the runtime shuts down are dropped by the thread that shuts it
/// down or by a worker: their `Drop` never reads that thread's values. Dropped without a poll
/// hook, they read an empty context; a task woken just as the runtime shuts down is cancelled
/// inside its last poll, where it reads its own (tokio's cancel path, a race: both happen).
#[test]
fn futures_dropped_at_shutdown_never_read_the_dropping_threads_values() {
    struct Probe(Arc<Mutex<Vec<Option<&'static str>>>>);
    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.lock().unwrap().push(USER.get());
        }
    }
    for multi_thread in [false, true] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runtime = hooked(multi_thread);
        runtime.block_on(async {
            let _user = USER.set("task's");
            let probe = Probe(seen.clone());
            let (started, is_started) = oneshot::channel();
            tokio::spawn(async move {
                let _probe = probe;
                started.send(()).unwrap();
                std::future::pending::<()>().await;
            });
            is_started.await.unwrap();
        });
        let _user = USER.set("dropping thread's");
        drop(runtime);
        let seen = seen.lock().unwrap();
        assert!(
            matches!(seen[..], [None | Some("task's")]),
            "multi_thread: {multi_thread}: {seen:?}"
        );
    }
}

/// The hooks enter a task's context only when the poll first uses it: a spawn, a snapshot, a
/// read that the cache cannot answer, or a write. Polls that use nothing in between must not
/// lose it, and must not let the worker's own context show through.
#[test]
fn a_context_entered_only_when_a_poll_first_uses_it_is_the_tasks_own() {
    entered_when_first_used(false);
    entered_when_first_used(true);
}

fn entered_when_first_used(writable: bool) {
    let runtime = if writable {
        hooked_writable(true)
    } else {
        hooked(true)
    };
    let mut ctx = Context::new()
        .with_value(&USER, "ann")
        .with_value(&REQUEST, 1);
    let seen = ctx.run(|| {
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..64_u64 {
                tasks.push(tokio::spawn(async move {
                    // Several polls that touch nothing.
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    // A spawn as the first use of the context in this poll: the child must
                    // inherit the task's values, not the worker's.
                    let child = tokio::spawn(async { (USER.get(), REQUEST.get()) });
                    tokio::task::yield_now().await;
                    // A snapshot as the first use.
                    let snapshot = Context::current();
                    tokio::task::yield_now().await;
                    // A write as the first use (refused where the inheritance is read-only),
                    // then reads.
                    let _request = REQUEST.try_set(100 + i);
                    tokio::task::yield_now().await;
                    let after_yield = (USER.get(), REQUEST.get());
                    (
                        child.await.unwrap(),
                        snapshot.get(&USER).copied(),
                        after_yield,
                    )
                }));
            }
            let mut seen = Vec::new();
            for task in tasks {
                seen.push(task.await.unwrap());
            }
            seen
        })
    });
    for (i, got) in (0..64_u64).zip(seen) {
        assert_eq!(
            got,
            (
                (Some("ann"), Some(1)),
                Some("ann"),
                (Some("ann"), Some(if writable { 100 + i } else { 1 }))
            ),
            "task {i}, writable: {writable}"
        );
    }
    // Nothing the tasks set reached the spawner's context.
    assert_eq!(ctx.get(&REQUEST), Some(&1));
}

/// A hooked task whose poll has not used its context yet drives, on its own thread, a runtime
/// without the hooks: a task of that runtime, which has no context, spawns onto the hooked
/// runtime. The new task must inherit nothing, neither from the hooked task nor from anyone.
#[test]
fn a_task_without_context_spawning_inside_a_lazily_entered_poll_passes_on_nothing() {
    fn spawn_from_a_plain_task(read_first: bool) -> Option<&'static str> {
        let runtime = hooked(true);
        let handle = runtime.handle().clone();
        runtime.block_on(async move {
            let _user = USER.set("ann");
            tokio::spawn(async move {
                // This poll touches no variable: the task's context is still to be entered.
                tokio::task::block_in_place(move || {
                    let plain = Builder::new_current_thread().build().unwrap();
                    plain.block_on(async move {
                        tokio::spawn(async move {
                            if read_first {
                                assert_eq!(USER.get(), None);
                            }
                            // The hooked runtime's other worker runs it.
                            handle.spawn(async { USER.get() }).await.unwrap()
                        })
                        .await
                        .unwrap()
                    })
                })
            })
            .await
            .unwrap()
        })
    }
    assert_eq!(spawn_from_a_plain_task(false), None);
    assert_eq!(spawn_from_a_plain_task(true), None);
}
