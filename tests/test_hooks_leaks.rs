//! Automatic flow leaves nothing behind: whatever way a task ends (completion, panic, abort,
//! runtime shutdown, or a spawn on a runtime already shut down), the hooks drop its context.
//! Counted with `contextvars::hooks::stored_contexts()`, which covers every runtime of the
//! process: hence one test in this binary, its scenarios in sequence.
//!
//! Run with `cargo test --features hooks --test test_hooks_leaks` (the workspace's
//! `.cargo/config.toml` sets `--cfg tokio_unstable`).

#![cfg(all(tokio_unstable, feature = "hooks"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use contextvars::context_var;
use contextvars::hooks::stored_contexts;
use tokio::runtime::{Builder, Handle, Runtime};

#[context_var]
static REQUEST: u64;

const TASKS: usize = 200;

fn hooked(multi_thread: bool) -> Runtime {
    let mut builder = if multi_thread {
        let mut builder = Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        Builder::new_current_thread()
    };
    contextvars::hooks::install(builder.enable_all())
        .build()
        .unwrap()
}

/// Waits until the table holds `expected` contexts: tokio ends a task (and calls the hook)
/// just after waking its `JoinHandle`, so on another worker that may come a moment later.
#[track_caller]
fn settles_at(expected: usize, scenario: &str) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while stored_contexts() != expected {
        assert!(
            Instant::now() < give_up,
            "{scenario}: {} contexts stored, {expected} expected",
            stored_contexts()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `drops` counts one drop: the hooks take an ended task's context out of the
/// table first and drop its values just after, on the worker that ran it.
#[track_caller]
fn dropped_once(drops: &AtomicUsize, what: &str) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while drops.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < give_up, "{what} was not freed");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(drops.load(Ordering::SeqCst), 1, "{what} was dropped twice");
}

/// A value that counts its drops, held in each task's context.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[context_var]
static HELD: Arc<Counted>;

#[test]
fn no_task_end_leaves_its_context_behind() {
    for multi_thread in [false, true] {
        let flavor = if multi_thread {
            "multi_thread"
        } else {
            "current_thread"
        };
        settles_at(0, "at the start");
        let runtime = hooked(multi_thread);
        completed(&runtime, flavor);
        panicked(&runtime, flavor);
        aborted(&runtime, flavor);
        let handle = runtime.handle().clone();
        shut_down(runtime, flavor);
        spawned_after_shutdown(&handle, flavor);
        shut_down_in_the_background(multi_thread, flavor);
        blocking(multi_thread, flavor);
    }
}

fn completed(runtime: &Runtime, flavor: &str) {
    // The counter counts: one context per live task.
    let (release, released) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut released = released.clone();
            runtime.spawn(async move { released.wait_for(|go| *go).await.map(|_| ()) })
        })
        .collect();
    assert_eq!(stored_contexts(), TASKS, "{flavor}: live tasks");
    release.send(true).unwrap();
    runtime.block_on(async {
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    settles_at(0, &format!("{flavor}: completed tasks"));

    // Tasks ready at their first poll, spawned from inside tasks.
    runtime.block_on(async {
        tokio::spawn(async {
            for n in 0..TASKS as u64 {
                let task = REQUEST.sync_scope(n, || tokio::spawn(async { REQUEST.get() }));
                assert_eq!(task.await.unwrap(), Some(n));
            }
        })
        .await
        .unwrap();
    });
    settles_at(0, &format!("{flavor}: tasks done in one poll"));
}

fn panicked(runtime: &Runtime, flavor: &str) {
    // Panics, before and after a first yield (their messages silenced).
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    runtime.block_on(async {
        for n in 0..TASKS {
            let task = tokio::spawn(async move {
                if n % 2 == 0 {
                    tokio::task::yield_now().await;
                }
                panic!("task {n} fails");
            });
            assert!(task.await.unwrap_err().is_panic());
        }
    });
    std::panic::set_hook(report);
    settles_at(0, &format!("{flavor}: panicked tasks"));
}

fn aborted(runtime: &Runtime, flavor: &str) {
    // Pending tasks, and tasks aborted before their first poll; a dropped `JoinSet` aborts
    // its tasks too.
    let drops = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let _held = HELD.scoped(Arc::new(Counted(drops.clone())));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| tokio::spawn(std::future::pending::<()>()))
            .collect();
        tokio::task::yield_now().await;
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..TASKS {
            set.spawn(std::future::pending::<()>());
        }
        drop(set);
        // The aborted tasks end at their next poll: let the runtime run them all (a
        // current-thread runtime runs them only inside `block_on`, so wait here, not after).
        let give_up = Instant::now() + Duration::from_secs(10);
        while stored_contexts() != 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    settles_at(0, &format!("{flavor}: aborted tasks"));
    // Every task's snapshot shared the value the root set; the root's guard is gone, and so
    // are the tasks: nothing keeps it alive.
    dropped_once(
        &drops,
        &format!("{flavor}: the value the aborted tasks inherited"),
    );
}

fn shut_down(runtime: Runtime, flavor: &str) {
    // Tasks still pending when the runtime shuts down, sharing a value whose drop we count.
    let drops = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let _held = HELD.scoped(Arc::new(Counted(drops.clone())));
        for _ in 0..TASKS {
            tokio::spawn(std::future::pending::<()>());
        }
        tokio::task::yield_now().await;
    });
    assert!(stored_contexts() >= TASKS, "{flavor}: pending tasks stored");
    drop(runtime);
    settles_at(0, &format!("{flavor}: runtime shut down"));
    dropped_once(
        &drops,
        &format!("{flavor}: the value the pending tasks inherited"),
    );
}

fn spawned_after_shutdown(handle: &Handle, flavor: &str) {
    // tokio ends such a task before its spawn hook runs.
    let _request = REQUEST.scoped(1);
    for _ in 0..TASKS {
        drop(handle.spawn(async { REQUEST.get() }));
    }
    settles_at(0, &format!("{flavor}: spawns after shutdown"));
}

fn shut_down_in_the_background(multi_thread: bool, flavor: &str) {
    // `shutdown_background`: the workers drop the tasks on their own time.
    let runtime = hooked(multi_thread);
    for _ in 0..TASKS {
        runtime.spawn(std::future::pending::<()>());
    }
    runtime.shutdown_background();
    settles_at(0, &format!("{flavor}: background shutdown"));
}

fn blocking(multi_thread: bool, flavor: &str) {
    // Blocking tasks end without a spawn hook: nothing is stored for them, and what the
    // terminate hook remembers does not swallow the next task's context.
    let runtime = hooked(multi_thread);
    runtime.block_on(async {
        for n in 0..TASKS as u64 {
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            let _ = REQUEST.set(n);
            assert_eq!(
                tokio::spawn(async { REQUEST.get() }).await.unwrap(),
                Some(n)
            );
        }
    });
    drop(runtime);
    settles_at(0, &format!("{flavor}: blocking tasks"));
}
