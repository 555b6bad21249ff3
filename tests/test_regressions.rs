//! Regressions: each test is named after what broke, and fails (or aborts the binary) with
//! the bug back in.

use std::cell::RefCell;
use std::sync::mpsc;

use contextvars::{Context, FutureExt, ResetError, SetError, Token, context_var};

#[context_var]
static V: u32;

#[context_var]
static OTHER: u32;

#[context_var]
static LATE_DEFAULT: u32 = 2;

#[context_var]
static EARLY_DEFAULT: u32 = 1;

/// A value whose `Drop` reads a context variable.
struct ReadsOnDrop;

impl Drop for ReadsOnDrop {
    fn drop(&mut self) {
        let _ = OTHER.get();
    }
}

#[context_var]
static READS_ON_DROP: ReadsOnDrop;

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

// B26: tasks spawned without a context, polled by a runtime driven inside `Context::run`,
// used to see and write the context that `run` entered, and so each other's values.
#[test]
fn plain_tasks_polled_inside_an_entered_context_do_not_share_it() {
    let mut ctx = Context::new().with_value(&OTHER, 3);
    let (first, second, outer) = ctx.run(|| {
        current_thread_runtime().block_on(async {
            let first = tokio::spawn(async { (V.try_set(1).map(drop), OTHER.get()) });
            let first = first.await.expect("task ran");
            let second = tokio::spawn(async { V.get() }).await.expect("task ran");
            // The root future of `block_on` is not a task: it sees the entered context.
            (first, second, OTHER.get())
        })
    });
    assert_eq!(first, (Err(SetError::NoContext { var: "V" }), None));
    assert_eq!(second, None);
    assert_eq!(outer, Some(3));
    assert!(!ctx.contains(&V));
}

// B26: `spawn_local` tasks polled by a `LocalSet` inside a context's future used to share it.
#[test]
fn plain_local_tasks_inside_a_context_future_do_not_share_it() {
    let seen = current_thread_runtime().block_on(
        async {
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async {
                    let writer = tokio::task::spawn_local(async { V.try_set(7).map(drop) });
                    let wrote = writer.await.expect("task ran");
                    let read = tokio::task::spawn_local(async { V.get() }).await;
                    (wrote, read.expect("task ran"), OTHER.get())
                })
                .await
        }
        .with_context(Context::new().with_value(&OTHER, 5)),
    );
    assert_eq!(seen, (Err(SetError::NoContext { var: "V" }), None, Some(5)));
}

// A value refused by `try_set` in a task without a context used to be dropped with the
// thread state borrowed, so its `Drop` reading a variable panicked instead of `Err`.
#[test]
fn refused_value_is_dropped_after_the_state_is_released() {
    let result = current_thread_runtime().block_on(async {
        tokio::spawn(async { READS_ON_DROP.try_set(ReadsOnDrop).map(drop) }).await
    });
    assert_eq!(
        result.expect("the task did not panic"),
        Err(SetError::NoContext {
            var: "READS_ON_DROP"
        })
    );
}

// B16: a guard dropped while unwinding in a task without a context must do nothing. Its
// saved bindings (sole owner of a value that reads variables on drop) used to be dropped with
// the state borrowed: a second panic during unwinding, which aborts the process.
#[test]
fn guard_dropped_while_unwinding_in_a_plain_task_does_nothing() {
    let guard = Context::new().run(|| {
        let kept = READS_ON_DROP.scoped(ReadsOnDrop);
        let guard = READS_ON_DROP.scoped(ReadsOnDrop);
        std::mem::forget(kept);
        guard
    });
    let result = current_thread_runtime().block_on(async move {
        tokio::spawn(async move {
            let _guard = guard;
            panic!("the user's panic");
        })
        .await
    });
    assert!(result.expect_err("the task panicked").is_panic());
}

// B14: a token made while the thread's context was being torn down (id 0) used to reset the
// variable in any context that had no id yet.
#[test]
fn token_made_at_thread_exit_resets_nothing() {
    struct SendsATokenOnDrop(mpsc::Sender<Token<V>>);
    impl Drop for SendsATokenOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(V.set(99));
        }
    }
    thread_local! {
        static LAST: RefCell<Option<SendsATokenOnDrop>> = const { RefCell::new(None) };
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        LAST.with(|last| *last.borrow_mut() = Some(SendsATokenOnDrop(tx)));
        // Use the context after `LAST`, so that its thread-local is destroyed first.
        let token = OTHER.set(1);
        OTHER.reset(token).expect("same context");
    })
    .join()
    .expect("thread ran");
    let token = rx.recv().expect("the value's drop sent a token");
    let mut ctx = Context::new().with_value(&V, 5);
    let result = ctx.run(|| V.reset(token));
    assert_eq!(result, Err(ResetError::OtherContext { var: "V" }));
    assert_eq!(ctx.get(&V), Some(&5));
}

// A default first needed in a value's `Drop` at thread exit used to panic inside a
// thread-local's destructor (its re-entrancy check's stack was gone), aborting the process.
#[test]
fn default_first_needed_at_thread_exit_is_computed() {
    struct ReadsADefaultOnDrop(mpsc::Sender<u32>);
    impl Drop for ReadsADefaultOnDrop {
        fn drop(&mut self) {
            let _ = self.0.send(LATE_DEFAULT.get());
        }
    }
    thread_local! {
        static LAST: RefCell<Option<ReadsADefaultOnDrop>> = const { RefCell::new(None) };
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        LAST.with(|last| *last.borrow_mut() = Some(ReadsADefaultOnDrop(tx)));
        // A first default computed after `LAST` is set up, so that the thread-local behind
        // the re-entrancy check is destroyed before `LAST`.
        assert_eq!(EARLY_DEFAULT.get(), 1);
    })
    .join()
    .expect("thread ran");
    assert_eq!(rx.recv(), Ok(2));
}
