//! Tasks spawned without a context (SPEC S5, B26): plain `tokio::spawn` never sees another
//! task's values, cannot set, has an empty `Context::current()`, and refuses foreign tokens;
//! `block_on`'s root future and plain threads keep a per-thread context.

mod support;

use support::{Rng, panic_message};

use contextvars::{Context, FutureExt, ResetError, SetError, context_var, copy_context};

#[context_var]
static A: u32;

#[context_var]
static B: String;

#[context_var]
static HITS: u32 = 7;

/// What a task spawned without a context must read: nothing but defaults.
const EMPTY: (Option<u32>, Option<String>, u32, bool) = (None, None, 7, true);

fn read_all() -> (Option<u32>, Option<String>, u32, bool) {
    (A.get(), B.get(), HITS.get(), Context::current().is_empty())
}

// B26: on a current-thread runtime every task shares one thread, whose own context holds the
// root future's values; plain tasks polled between the polls of tasks that set values, and
// while they hold them, read nothing.
#[test]
fn plain_tasks_read_defaults_only_on_a_shared_thread() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _root = A.set(1);
        let _root_b = B.set("root".to_string());
        let owners: Vec<_> = (0..50u32)
            .map(|i| {
                contextvars::spawn(async move {
                    for step in 0..20 {
                        drop(A.set(i));
                        drop(HITS.set(step));
                        let _b = B.scoped(format!("owner {i}"));
                        tokio::task::yield_now().await;
                        assert_eq!(A.get(), Some(i));
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..20 {
                        assert_eq!(read_all(), EMPTY);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for task in owners {
            task.await.unwrap();
        }
        for task in readers {
            task.await.unwrap();
        }
        assert_eq!((A.get(), B.get()), (Some(1), Some("root".to_string())));
    });
}

// B26: the same on a multi-thread runtime, with random yields.
#[test]
fn plain_tasks_read_defaults_only_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let _root = A.set(1);
        let (mut tasks, mut plain) = (Vec::new(), Vec::new());
        for i in 0..1000u32 {
            if i % 2 == 0 {
                tasks.push(contextvars::spawn(async move {
                    let mut rng = Rng::new(u64::from(i));
                    for _ in 0..10 {
                        drop(A.set(i));
                        drop(B.set(i.to_string()));
                        if rng.below(2) == 0 {
                            tokio::task::yield_now().await;
                        }
                        assert_eq!(A.get(), Some(i));
                    }
                }));
            } else {
                plain.push(tokio::spawn(async move {
                    let mut rng = Rng::new(u64::from(i));
                    for _ in 0..10 {
                        assert_eq!(read_all(), EMPTY, "a plain task saw another task's values");
                        if rng.below(2) == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        for task in plain {
            task.await.unwrap();
        }
    });
}

// B26: `set` (and `scoped`) panic with a message that names the variable and the fix.
#[test]
fn set_in_a_plain_task_panics_naming_the_fix() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let err = tokio::spawn(async { drop(A.set(1)) }).await.unwrap_err();
        let message = panic_message(&*err.into_panic());
        for needle in [
            "`A`",
            "contextvars::spawn",
            "A.scope(value, fut)",
            "ContextLayer",
        ] {
            assert!(message.contains(needle), "{needle} missing from: {message}");
        }

        let err = tokio::spawn(async { drop(B.scoped("b".to_string())) })
            .await
            .unwrap_err();
        let message = panic_message(&*err.into_panic());
        assert!(
            message.contains("`B`") && message.contains("contextvars::spawn"),
            "{message}"
        );
    });
}

// B26: `try_set` returns the error instead, and nothing is set.
#[test]
fn try_set_in_a_plain_task_returns_set_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (err, after) = tokio::spawn(async { (A.try_set(1).unwrap_err(), read_all()) })
            .await
            .unwrap();
        assert_eq!(err, SetError::NoContext { var: "A" });
        let message = err.to_string();
        assert!(message.contains("contextvars::spawn"), "{message}");
        assert!(message.contains("A.scope(value, fut)"), "{message}");
        assert!(message.lines().count() <= 3, "{message}");
        assert_eq!(after, EMPTY);
        // And the root future's context did not get it either.
        assert_eq!(A.get(), None);
    });
}

// B26: `Context::current()` is empty there, even when the spawner had values.
#[test]
fn current_context_is_empty_in_a_plain_task() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let _a = A.set(1);
        assert_eq!(Context::current().len(), 1);
        let (current, copied) = tokio::spawn(async { (Context::current(), copy_context()) })
            .await
            .unwrap();
        assert!(current.is_empty() && copied.is_empty());
        assert_eq!(current.len(), 0);
    });
}

// B26: a token made elsewhere does not reset there, and nothing changes anywhere.
#[test]
fn token_made_elsewhere_does_not_reset_in_a_plain_task() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _base = A.set(1);
        let root_token = A.set(2);
        let result = tokio::spawn(async move { (A.reset(root_token), read_all()) }).await;
        let (reset, after) = result.unwrap();
        assert!(
            matches!(reset, Err(ResetError::NoContext { var: "A" })),
            "{reset:?}"
        );
        assert_eq!(after, EMPTY);
        assert_eq!(
            A.get(),
            Some(2),
            "the refused token changed the root future's context"
        );

        let task_token = contextvars::spawn(async { A.set(3) }).await.unwrap();
        let reset = tokio::spawn(async move { A.reset(task_token) })
            .await
            .unwrap();
        assert!(reset.is_err());

        let guard = A.scoped(4);
        let err = tokio::spawn(async move { drop(guard) }).await.unwrap_err();
        let message = panic_message(&*err.into_panic());
        assert!(message.contains("different context"), "{message}");
        assert_eq!(
            A.get(),
            Some(4),
            "the guard changed the root future's context"
        );
    });
}

// B26: a plain task may still enter a context explicitly; what it sets there stays there.
#[test]
fn plain_task_can_enter_a_context_explicitly() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let seen = tokio::spawn(async {
            let mut ctx = Context::new();
            let in_run = ctx.run(|| {
                drop(A.set(1));
                A.get()
            });
            let in_future = async {
                drop(A.set(2));
                tokio::task::yield_now().await;
                A.get()
            }
            .in_current_context()
            .await;
            let in_scope = B.scope("scoped".to_string(), async { B.get() }).await;
            (
                in_run,
                ctx.get(&A).copied(),
                in_future,
                in_scope,
                read_all(),
            )
        })
        .await
        .unwrap();
        assert_eq!(
            seen,
            (Some(1), Some(1), Some(2), Some("scoped".to_string()), EMPTY)
        );
    });
}

// B26: a plain `spawn_blocking` job is a task without a context too: it cannot set, so a
// pooled blocking thread cannot hand one job's values to the next.
#[test]
fn plain_spawn_blocking_jobs_have_no_context() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let _root = A.set(1);
        let first = tokio::task::spawn_blocking(|| {
            (
                A.try_set(2).map(drop),
                read_all(),
                std::thread::current().id(),
            )
        });
        let (set, seen, thread) = first.await.unwrap();
        assert_eq!(set, Err(SetError::NoContext { var: "A" }));
        assert_eq!(seen, EMPTY);
        let second = tokio::task::spawn_blocking(|| (read_all(), std::thread::current().id()));
        let (seen, second_thread) = second.await.unwrap();
        assert_eq!(
            second_thread, thread,
            "the pool should have reused its one thread"
        );
        assert_eq!(seen, EMPTY);
    });
}

// B25 + B26: `contextvars::spawn` from a task without a context passes on an empty context,
// not whatever the worker thread holds.
#[test]
fn spawn_from_a_plain_task_starts_empty() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let _root = A.set(1);
        let seen = tokio::spawn(async {
            contextvars::spawn(async {
                let seen = read_all();
                drop(A.set(2));
                seen
            })
            .await
            .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(seen, EMPTY);
        assert_eq!(A.get(), Some(1));
    });
}

// B26: `block_on`'s root future is not a task: it uses the thread's own context, before,
// during and after `block_on`, as Python would.
#[test]
fn block_on_root_future_uses_the_threads_context() {
    let thread = std::thread::spawn(|| {
        let _before = A.set(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let inside = rt.block_on(async {
            let seen = A.get();
            drop(A.set(2));
            tokio::task::yield_now().await;
            (seen, A.get(), Context::current().len())
        });
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let inside_multi = multi.block_on(async {
            let seen = A.get();
            drop(B.set("multi".to_string()));
            tokio::task::yield_now().await;
            seen
        });
        (inside, inside_multi, A.get(), B.get())
    });
    let (inside, inside_multi, after, b_after) = thread.join().unwrap();
    assert_eq!(inside, (Some(1), Some(2), 1));
    assert_eq!(inside_multi, Some(2));
    assert_eq!((after, b_after), (Some(2), Some("multi".to_string())));
}

// B26: plain threads have a context each; a set on one is not seen on another.
#[test]
fn plain_threads_have_their_own_context() {
    let (tx, rx) = std::sync::mpsc::channel();
    let setter = std::thread::spawn(move || {
        let _a = A.set(1);
        tx.send(()).unwrap();
        // Keep the value while the other thread looks.
        std::thread::park();
        A.get()
    });
    rx.recv().unwrap();
    let other = std::thread::spawn(read_all).join().unwrap();
    setter.thread().unpark();
    assert_eq!(other, EMPTY);
    assert_eq!(setter.join().unwrap(), Some(1));
    assert_eq!(Context::new().run(read_all), EMPTY);
}
