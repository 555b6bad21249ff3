//! Scope guards and scopes (SPEC S3, B15–B16): reset on drop and on panic, sets inside the
//! span undone, nested and out-of-order guards, `sync_scope`/`scope` isolation, guards across
//! `.await`, and guards dropped in the wrong context.

mod support;

use support::{Rng, panic_message};

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use contextvars::{Context, ScopeGuard, context_var};

#[context_var]
static TENANT: u32;

#[context_var]
static USER: String = String::from("guest");

#[context_var(name = "guard.extra")]
static EXTRA: u32;

// B15: the guard sets, and dropping it restores "unset" or the previous value.
#[test]
fn guard_resets_when_dropped() {
    Context::new().run(|| {
        {
            let _guard = TENANT.scoped(1);
            assert_eq!(TENANT.get(), Some(1));
        }
        assert_eq!(TENANT.get(), None);
        assert!(!Context::current().contains(&TENANT));

        let _before = USER.set("ann".to_string());
        {
            let _guard = USER.scoped("bob".to_string());
            assert_eq!(USER.get(), "bob");
        }
        assert_eq!(USER.get(), "ann");
    });
}

// B15: also when unwinding from a panic.
#[test]
fn guard_resets_when_unwinding_from_a_panic() {
    Context::new().run(|| {
        let _before = TENANT.set(1);
        let result = catch_unwind(|| {
            let _guard = TENANT.scoped(2);
            let _other = USER.scoped("bob".to_string());
            assert_eq!(TENANT.get(), Some(2));
            panic!("boom");
        });
        assert_eq!(panic_message(&*result.unwrap_err()), "boom");
        assert_eq!(TENANT.get(), Some(1));
        assert_eq!(USER.get(), "guest");
        assert_eq!(Context::current().len(), 1);
    });
}

// B15: dropping a guard restores its own variable, and only it, exactly like resetting a
// token: sets of other variables made inside the guard's span stay.
#[test]
fn a_guard_restores_only_its_own_variable() {
    Context::new().run(|| {
        let _before = EXTRA.set(1);
        {
            let _guard = TENANT.scoped(1);
            drop(TENANT.set(2));
            drop(USER.set("inside".to_string()));
            drop(EXTRA.set(2));
            assert_eq!(
                (TENANT.get(), USER.get(), EXTRA.get()),
                (Some(2), "inside".into(), Some(2))
            );
        }
        assert_eq!(TENANT.get(), None, "the guard restores its own variable");
        assert_eq!(USER.get(), "inside", "a guard left a sibling's set alone");
        assert_eq!(EXTRA.get(), Some(2), "a guard left a sibling's set alone");
        assert_eq!(Context::current().len(), 2);
    });
}

// B15: nested guards unwind like a stack.
#[test]
fn nested_guards_restore_in_turn() {
    Context::new().run(|| {
        let outer = TENANT.scoped(1);
        let middle = USER.scoped("ann".to_string());
        let inner = TENANT.scoped(3);
        assert_eq!((TENANT.get(), USER.get()), (Some(3), "ann".to_string()));
        drop(inner);
        assert_eq!((TENANT.get(), USER.get()), (Some(1), "ann".to_string()));
        drop(middle);
        assert_eq!((TENANT.get(), USER.get()), (Some(1), "guest".to_string()));
        drop(outer);
        assert!(Context::current().is_empty());
    });
}

// B15: guards of one variable dropped out of order each restore their own old value, as
// tokens reset out of order do; other variables are never touched.
#[test]
fn out_of_order_guards_each_restore_their_own_old_value() {
    Context::new().run(|| {
        let outer = TENANT.scoped(1);
        let inner = TENANT.scoped(2);
        drop(outer);
        assert_eq!(
            TENANT.get(),
            None,
            "the outer guard restores what was before it"
        );

        let newer = TENANT.scoped(7);
        let _kept = EXTRA.set(8);
        drop(inner);
        assert_eq!(
            TENANT.get(),
            Some(1),
            "the inner guard restores its own old value"
        );
        assert_eq!(EXTRA.get(), Some(8));
        drop(newer);
        assert_eq!(TENANT.get(), None);
        assert_eq!(EXTRA.get(), Some(8));
    });
}

// B15: guards of different variables, dropped in any order, leave each other alone. (Under
// `select!`, the losing branch's guard is dropped while the winner's guard lives on.)
#[test]
fn guards_of_different_variables_dropped_in_any_order_leave_each_other_alone() {
    Context::new().run(|| {
        let tenant = TENANT.scoped(1);
        let extra = EXTRA.scoped(2);
        drop(tenant);
        assert_eq!((TENANT.get(), EXTRA.get()), (None, Some(2)));
        let tenant = TENANT.scoped(3);
        drop(extra);
        assert_eq!((TENANT.get(), EXTRA.get()), (Some(3), None));
        drop(tenant);
        assert!(Context::current().is_empty());
    });
}

// B15: `sync_scope` runs in a copy of the caller's context with the variable set; nothing it
// sets reaches the caller, also when it panics.
#[test]
fn sync_scope_runs_in_an_isolated_copy() {
    Context::new().run(|| {
        let _base = EXTRA.set(1);
        let seen = TENANT.sync_scope(5, || {
            drop(EXTRA.set(2));
            drop(USER.set("inside".to_string()));
            (TENANT.get(), EXTRA.get(), USER.get())
        });
        assert_eq!(seen, (Some(5), Some(2), "inside".to_string()));
        assert_eq!(
            (TENANT.get(), EXTRA.get(), USER.get()),
            (None, Some(1), "guest".to_string())
        );

        let result = catch_unwind(|| {
            TENANT.sync_scope(6, || {
                drop(EXTRA.set(3));
                panic!("inside sync_scope");
            })
        });
        assert!(result.is_err());
        assert_eq!((TENANT.get(), EXTRA.get()), (None, Some(1)));
    });
}

// B15: `scope` takes its copy when first polled (as tokio's task-local scopes set their value),
// and nothing the future sets reaches the caller.
#[test]
fn scope_future_runs_in_a_copy_taken_at_the_first_poll() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let base = EXTRA.set(1);
        let future = TENANT.scope(5, async {
            tokio::task::yield_now().await;
            let seen = (TENANT.get(), EXTRA.get());
            drop(EXTRA.set(2));
            drop(USER.set("inside".to_string()));
            tokio::task::yield_now().await;
            (seen, EXTRA.get())
        });
        // Still in time for the future's copy, taken at its first poll.
        EXTRA.reset(base).unwrap();
        let _later = EXTRA.set(9);
        let (seen, after_set) = future.await;
        assert_eq!(seen, (Some(5), Some(9)));
        assert_eq!(after_set, Some(2));
        assert_eq!(
            (TENANT.get(), EXTRA.get(), USER.get()),
            (None, Some(9), "guest".to_string())
        );

        // In a task spawned without a context too, where `set` alone would panic.
        let seen = tokio::spawn(async {
            TENANT
                .scope(3, async {
                    drop(EXTRA.set(4));
                    tokio::task::yield_now().await;
                    (TENANT.get(), EXTRA.get())
                })
                .await
        })
        .await
        .unwrap();
        assert_eq!(seen, (Some(3), Some(4)));
    });
}

// B10 + B15: a guard is `Send + 'static` and may be held across `.await` in spawned tasks,
// whatever worker each poll runs on, for many concurrent tasks.
#[test]
fn guard_held_across_awaits_in_spawned_tasks() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..500u32)
            .map(|i| {
                contextvars::spawn(async move {
                    let mut rng = Rng::new(u64::from(i));
                    let guard = TENANT.scoped(i);
                    assert_send_static(&guard);
                    for step in 0..20u32 {
                        if rng.next().is_multiple_of(2) {
                            tokio::task::yield_now().await;
                        }
                        let inner = EXTRA.scoped(step);
                        if rng.next().is_multiple_of(3) {
                            tokio::task::yield_now().await;
                        }
                        assert_eq!((TENANT.get(), EXTRA.get()), (Some(i), Some(step)));
                        drop(inner);
                        assert_eq!(EXTRA.get(), None);
                    }
                    drop(guard);
                    Context::current().is_empty()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap(), "a guard did not undo its set");
        }
    });
}

// B16: a guard dropped in another context panics with a clear message and changes nothing,
// in either context.
#[test]
fn guard_dropped_in_another_context_panics_and_changes_nothing() {
    Context::new().run(|| {
        let guard = TENANT.scoped(1);
        let mut other = Context::new().with_value(&EXTRA, 5);
        let result = catch_unwind(AssertUnwindSafe(|| other.run(move || drop(guard))));
        let message = panic_message(&*result.unwrap_err());
        assert!(message.contains("`TENANT`"), "{message}");
        assert!(message.contains("different context"), "{message}");
        assert_eq!(
            TENANT.get(),
            Some(1),
            "the guard changed the context it was made in"
        );
        assert_eq!(
            other.get(&EXTRA),
            Some(&5),
            "the guard changed the context it was dropped in"
        );
        assert_eq!(other.len(), 1);
    });
}

// B16: the same when the guard travels to another thread.
#[test]
fn guard_dropped_on_another_thread_panics_there() {
    Context::new().run(|| {
        let guard: ScopeGuard = TENANT.scoped(1);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let _own = EXTRA.set(2);
            let result = catch_unwind(AssertUnwindSafe(move || drop(guard)));
            tx.send((EXTRA.get(), TENANT.get())).unwrap();
            result.map_err(|payload| panic_message(&*payload))
        });
        let message = thread.join().unwrap().unwrap_err();
        assert!(message.contains("different context"), "{message}");
        assert_eq!(rx.recv().unwrap(), (Some(2), None));
        assert_eq!(TENANT.get(), Some(1));
    });
}

// B16: dropped in another context while already panicking, the guard does nothing (a second
// panic would abort the process) and the original panic goes on.
#[test]
fn guard_dropped_in_another_context_during_a_panic_does_nothing() {
    Context::new().run(|| {
        let guard = TENANT.scoped(1);
        let mut other = Context::new().with_value(&EXTRA, 5);
        let result = catch_unwind(AssertUnwindSafe(|| {
            other.run(move || {
                let _guard = guard;
                panic!("original panic");
            });
        }));
        assert_eq!(panic_message(&*result.unwrap_err()), "original panic");
        assert_eq!(TENANT.get(), Some(1));
        assert_eq!(other.get(&EXTRA), Some(&5));
        assert!(!other.contains(&TENANT));
    });
}

// B16: a guard moved to another task panics that task, not the one that made it.
#[test]
fn guard_dropped_in_another_task_panics_that_task_only() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<ScopeGuard>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let maker = contextvars::spawn(async move {
            tx.send(TENANT.scoped(1)).unwrap();
            done_rx.await.unwrap();
            TENANT.get()
        });
        let dropper = contextvars::spawn(async move {
            let _own = EXTRA.set(2);
            drop(rx.await.unwrap());
        });
        let err = dropper.await.unwrap_err();
        let message = panic_message(&*err.into_panic());
        assert!(message.contains("different context"), "{message}");
        done_tx.send(()).unwrap();
        assert_eq!(maker.await.unwrap(), Some(1));
    });
}
