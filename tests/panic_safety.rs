//! Panic and re-entrancy safety (SPEC S9): a panic anywhere (in `run`, in a poll, in a
//! value's `Drop`, in a default's initializer) leaves the thread's context as it was before;
//! a value's `Drop` may read and set variables wherever it runs; guards dropped out of order
//! or in the wrong context corrupt nothing (B16).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::{Poll, Waker};
use std::time::Duration;

use contextvars::{Context, FutureExt, SetError, context_var};

#[context_var]
static USER: String;

#[context_var]
static LEVEL: u32 = 0;

#[context_var]
static BOMB: Bomb;

#[context_var]
static NOISY: Noisy;

#[context_var]
static FLAKY: u32 = flaky_default();

#[context_var]
static SELF_REF: u32 = SELF_REF.get() + 1;

#[context_var]
static SELF_REF_TRY: u32 = SELF_REF_TRY.try_get().unwrap_or(0) + 1;

#[context_var]
static PING: u32 = PONG.get() + 1;

#[context_var]
static PONG: u32 = PING.get() + 1;

#[context_var]
static PICKY: Picky;

/// A panic of the test's own, raised with `resume_unwind` so that no hook prints it.
#[derive(Debug)]
struct Deliberate;

fn deliberate() -> ! {
    resume_unwind(Box::new(Deliberate))
}

/// Panics when dropped.
#[derive(Debug)]
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            deliberate();
        }
    }
}

/// What a [`Noisy`] saw when it was dropped: `USER`, and what setting `LEVEL` gave.
type Log = Arc<Mutex<Vec<(Option<String>, Result<(), SetError>)>>>;

/// Reads `USER` and sets `LEVEL` when dropped, and logs what happened.
#[derive(Debug)]
struct Noisy {
    log: Log,
    set_level: u32,
}

impl Drop for Noisy {
    fn drop(&mut self) {
        let user = USER.get();
        // The token is dropped: the value stays where the set put it.
        let set = LEVEL.try_set(self.set_level).map(drop);
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((user, set));
    }
}

fn logged(log: &Log) -> Vec<(Option<String>, Result<(), SetError>)> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Its `Clone` (which `get` calls) sets a variable.
#[derive(Debug)]
struct Picky;

impl Clone for Picky {
    fn clone(&self) -> Self {
        let _ = LEVEL.set(99);
        Picky
    }
}

static FLAKY_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Fails the first time, succeeds after.
fn flaky_default() -> u32 {
    assert!(
        FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) > 0,
        "the first computation of FLAKY's default fails"
    );
    7
}

/// The thread's current bindings, comparable.
fn bindings() -> Vec<(&'static str, String)> {
    let mut seen: Vec<_> = Context::current()
        .iter()
        .map(|(name, value)| (name, format!("{value:?}")))
        .collect();
    seen.sort();
    seen
}

/// Sets a value or two in the thread's own context, so that "as it was" is not "empty".
fn baseline() -> Vec<(&'static str, String)> {
    let _ = USER.set("outer".into());
    let _ = LEVEL.set(1);
    bindings()
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        String::new()
    }
}

/// Runs `f` on its own thread and waits at most a minute for it: a deadlock fails the test
/// instead of hanging it. The minute is far beyond what any of these needs.
fn without_deadlock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(catch_unwind(AssertUnwindSafe(f)));
    });
    match outcome.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(value)) => value,
        Ok(Err(payload)) => resume_unwind(payload),
        Err(err) => panic!("no answer within a minute ({err}): deadlock"),
    }
}

fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut std::task::Context::from_waker(Waker::noop()))
}

// ---------------------------------------------------------------------------------------
// Panics in `run`
// ---------------------------------------------------------------------------------------

#[test]
fn a_panic_in_run_restores_the_callers_context_and_keeps_what_the_closure_set() {
    let before = baseline();
    let mut ctx = Context::new();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            let _ = USER.set("inner".into());
            let _guard = LEVEL.scoped(5);
            deliberate();
        })
    }));
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    // As in Python: what the closure set before the panic stays in its context; the guard
    // was undone by the unwinding.
    assert_eq!(ctx.get(&USER).map(String::as_str), Some("inner"));
    assert_eq!(ctx.get(&LEVEL), None);
    // The context can be entered again.
    assert_eq!(ctx.run(|| USER.get()).as_deref(), Some("inner"));
}

#[test]
fn a_panic_through_nested_runs_restores_every_level() {
    let before = baseline();
    let mut outer = Context::new().with_value(&LEVEL, 2);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        outer.run(|| {
            let _ = USER.set("middle".into());
            let inner = catch_unwind(AssertUnwindSafe(|| {
                Context::current().run(|| {
                    let _ = USER.set("inner".into());
                    deliberate();
                })
            }));
            assert!(inner.is_err());
            // Back in `outer`, as it was.
            assert_eq!((USER.get().as_deref(), LEVEL.get()), (Some("middle"), 2));
            deliberate();
        })
    }));
    assert!(caught.is_err());
    assert_eq!(bindings(), before);
}

// ---------------------------------------------------------------------------------------
// Panics in a poll
// ---------------------------------------------------------------------------------------

#[test]
fn a_panic_in_a_poll_restores_the_pollers_context() {
    let before = baseline();
    let mut future = pin!(
        async {
            let _ = USER.set("inner".into());
            let _guard = LEVEL.scoped(9);
            deliberate();
        }
        .with_context(Context::new())
    );
    let caught = catch_unwind(AssertUnwindSafe(|| poll_once(future.as_mut())));
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    // The wrapper's context keeps the set; the guard was undone by the unwinding.
    assert_eq!(
        future.context().get(&USER).map(String::as_str),
        Some("inner")
    );
    assert_eq!(future.context().get(&LEVEL), None);
    // Polling the spent future again panics (the async block says so), still cleanly.
    let again = catch_unwind(AssertUnwindSafe(|| poll_once(future.as_mut())));
    assert!(again.is_err());
    assert_eq!(bindings(), before);
}

#[test]
fn a_task_that_panics_leaves_its_spawner_and_the_next_task_untouched() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = baseline();
        let panicking: Vec<_> = (0..64_u32)
            .map(|n| {
                contextvars::spawn(async move {
                    let _ = USER.set(format!("task {n}"));
                    let _guard = LEVEL.scoped(n);
                    tokio::task::yield_now().await;
                    deliberate();
                })
            })
            .collect();
        for task in panicking {
            let err = task.await.unwrap_err();
            assert!(err.into_panic().is::<Deliberate>());
        }
        assert_eq!(bindings(), before);
        // Tasks spawned without a context afterwards, on the same workers, see nothing.
        let plain: Vec<_> = (0..64)
            .map(|_| tokio::spawn(async { (USER.get(), LEVEL.get(), Context::current().len()) }))
            .collect();
        for task in plain {
            assert_eq!(task.await.unwrap(), (None, 0, 0));
        }
    });
}

// ---------------------------------------------------------------------------------------
// Panics in a value's `Drop`
// ---------------------------------------------------------------------------------------

#[test]
fn a_value_that_panics_when_reset_drops_it_leaves_the_context_reset() {
    let before = baseline();
    let mut ctx = Context::new();
    let caught = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            let token = BOMB.set(Bomb);
            // The reset is done before the replaced value is dropped.
            let _ = BOMB.reset(token);
        });
    }));
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    assert!(!ctx.contains(&BOMB));
    // The thread's state was released before the drop: the context works on.
    assert!(!ctx.run(|| BOMB.is_set()));
}

#[test]
fn a_value_that_panics_when_its_guard_drops_it_leaves_the_context_restored() {
    let before = baseline();
    let mut ctx = Context::new().with_value(&LEVEL, 3);
    let caught = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            let guard = BOMB.scoped(Bomb);
            let _ = USER.set("inside the guard".into());
            drop(guard);
        });
    }));
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    // The guard restored its own variable, and only it, then the bomb went off.
    assert_eq!((ctx.len(), ctx.get(&LEVEL)), (2, Some(&3)));
    assert_eq!(
        ctx.run(|| (BOMB.is_set(), USER.get())),
        (false, Some("inside the guard".into()))
    );
}

#[test]
fn a_value_that_panics_when_its_context_drops_leaves_the_current_context_alone() {
    let before = baseline();
    let ctx = Context::current().with_value(&BOMB, Bomb);
    let caught = catch_unwind(AssertUnwindSafe(|| drop(ctx)));
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    assert!(!BOMB.is_set());
}

// ---------------------------------------------------------------------------------------
// Panics in a default's initializer
// ---------------------------------------------------------------------------------------

#[test]
fn a_panicking_default_is_computed_again_by_the_next_read() {
    without_deadlock(|| {
        let before = baseline();
        let first = catch_unwind(|| Context::current().with_value(&LEVEL, 5).run(|| FLAKY.get()));
        let message = panic_text(&*first.unwrap_err());
        assert!(
            message.contains("first computation of FLAKY's default fails"),
            "{message}"
        );
        assert_eq!(bindings(), before);
        // Nothing was stored: the next read runs the initializer again, and it succeeds.
        assert_eq!(FLAKY.get(), 7);
        assert_eq!(FLAKY.try_get(), Ok(7));
        assert_eq!(FLAKY.with(|v| *v), 7);
        assert_eq!(FLAKY_CALLS.load(Ordering::SeqCst), 2);
        assert_eq!(bindings(), before);
    });
}

#[test]
fn a_default_that_reads_itself_panics_with_a_clear_message_every_time() {
    without_deadlock(|| {
        let before = baseline();
        for _ in 0..2 {
            let caught = catch_unwind(|| SELF_REF.get());
            let message = panic_text(&*caught.unwrap_err());
            assert!(message.contains("`SELF_REF`"), "{message}");
            assert!(message.contains("must not depend on itself"), "{message}");
            assert_eq!(bindings(), before);
        }
        // A value set in the context does not need the default.
        let _token = SELF_REF.set(3);
        assert_eq!(SELF_REF.get(), 3);
    });
}

/// The file of the last panic on this thread, as the panic hook saw it.
fn last_panic_file() -> Option<String> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|at| at.file().to_string());
            let _ = LAST.try_with(|last| *last.borrow_mut() = file);
            report(info);
        }));
    });
    LAST.with(|last| last.borrow_mut().take())
}

#[test]
fn a_default_that_reads_itself_is_reported_where_the_application_reads_it() {
    without_deadlock(|| {
        let _ = last_panic_file();
        // Each default reads itself the way its row reads it: the panic is that inner read's.
        let reads: [fn() -> u32; 3] = [
            || SELF_REF.get(),
            || SELF_REF.with(|v| *v),
            || SELF_REF_TRY.try_get().unwrap_or(0),
        ];
        for read in reads {
            assert!(catch_unwind(read).is_err());
            let file = last_panic_file().expect("the hook saw the panic");
            assert!(file.ends_with("panic_safety.rs"), "reported in {file}");
        }
    });
}

#[test]
fn defaults_that_read_each_other_panic_with_a_clear_message_instead_of_deadlocking() {
    without_deadlock(|| {
        let before = baseline();
        for _ in 0..2 {
            let caught = catch_unwind(|| PING.get());
            let message = panic_text(&*caught.unwrap_err());
            assert!(message.contains("must not depend on itself"), "{message}");
            assert_eq!(bindings(), before);
        }
        // Either one set breaks the cycle for the other's default.
        let seen = Context::new().with_value(&PONG, 10).run(|| PING.get());
        assert_eq!(seen, 11);
    });
}

// ---------------------------------------------------------------------------------------
// A value's `Drop` (or `Clone`) that uses context variables
// ---------------------------------------------------------------------------------------

#[test]
fn a_value_dropped_by_reset_may_read_and_set_variables() {
    let log = Log::default();
    let before = baseline();
    let mut ctx = Context::new().with_value(&USER, "ctx".to_string());
    ctx.run(|| {
        let token = NOISY.set(Noisy {
            log: Arc::clone(&log),
            set_level: 4,
        });
        NOISY.reset(token).unwrap();
        // The drop ran in this context, after the reset, and its set landed here.
        assert_eq!(LEVEL.get(), 4);
    });
    assert_eq!(logged(&log), [(Some("ctx".to_string()), Ok(()))]);
    assert_eq!(bindings(), before);
}

#[test]
fn a_value_dropped_by_its_guard_may_read_and_set_variables() {
    let log = Log::default();
    let before = baseline();
    let guard = NOISY.scoped(Noisy {
        log: Arc::clone(&log),
        set_level: 6,
    });
    drop(guard);
    assert_eq!(logged(&log), [(Some("outer".to_string()), Ok(()))]);
    // The guard restored the context first; the value's own set came after it, in this
    // context, like any other set.
    assert_eq!(LEVEL.get(), 6);
    let _ = LEVEL.set(1);
    assert_eq!(bindings(), before);
}

#[test]
fn a_future_dropped_unfinished_is_dropped_inside_its_context() {
    let log = Log::default();
    let before = baseline();
    let ctx = Context::new().with_value(&USER, "wrapped".to_string());
    let noisy = Noisy {
        log: Arc::clone(&log),
        set_level: 8,
    };
    let mut future = Box::pin(
        async move {
            let _noisy = noisy;
            std::future::pending::<()>().await;
        }
        .with_context(ctx),
    );
    assert!(poll_once(future.as_mut()).is_pending());
    drop(future);
    // The drop saw the wrapper's context, and its set stayed there.
    assert_eq!(logged(&log), [(Some("wrapped".to_string()), Ok(()))]);
    assert_eq!(bindings(), before);
}

#[test]
fn a_value_dropped_with_a_threads_own_context_sees_the_thread_exiting() {
    let log = Log::default();
    let in_thread = Arc::clone(&log);
    std::thread::spawn(move || {
        let _ = USER.set("thread".into());
        let _ = NOISY.set(Noisy {
            log: in_thread,
            set_level: 2,
        });
        // The thread ends with both in its own context.
    })
    .join()
    .expect("dropping the thread's context does not panic");
    // The thread's context is gone by then: nothing to read, nowhere to set.
    let seen = logged(&log);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, None);
    assert!(
        matches!(seen[0].1, Err(SetError::ThreadExiting { .. })),
        "{seen:?}"
    );
}

#[test]
fn a_clone_that_sets_a_variable_panics_clearly_and_corrupts_nothing() {
    let before = baseline();
    let mut ctx = Context::new().with_value(&PICKY, Picky);
    let caught = catch_unwind(AssertUnwindSafe(|| ctx.run(|| PICKY.get())));
    let message = panic_text(&*caught.unwrap_err());
    assert!(
        message.contains("`Clone`") && message.contains("`with`"),
        "{message}"
    );
    assert_eq!(bindings(), before);
    // `with` lends the value without cloning it.
    assert!(ctx.run(|| PICKY.with(|picky| picky.is_some())));
    assert_eq!(ctx.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Guards dropped out of order, or in the wrong context (B16)
// ---------------------------------------------------------------------------------------

#[test]
fn guards_dropped_out_of_order_restore_only_their_own_variable() {
    let before = baseline();
    let outer = LEVEL.scoped(2);
    let inner = USER.scoped("inner".into());
    drop(outer);
    // The outer guard restored its variable and left the inner guard's alone.
    assert_eq!((LEVEL.get(), USER.get().as_deref()), (1, Some("inner")));
    drop(inner);
    assert_eq!(bindings(), before);
}

#[test]
fn a_guard_dropped_in_another_context_panics_and_changes_neither() {
    let before = baseline();
    let mut ctx = Context::new();
    let guard = ctx.run(|| LEVEL.scoped(5));
    let caught = catch_unwind(AssertUnwindSafe(|| drop(guard)));
    let message = panic_text(&*caught.unwrap_err());
    assert!(message.contains("different context"), "{message}");
    assert_eq!(bindings(), before);
    assert_eq!(ctx.get(&LEVEL), Some(&5));
}

#[test]
fn a_guard_dropped_in_another_context_while_unwinding_does_nothing() {
    let before = baseline();
    let mut ctx = Context::new();
    let guard = ctx.run(|| LEVEL.scoped(5));
    let caught = catch_unwind(AssertUnwindSafe(|| {
        let _guard = guard;
        deliberate();
    }));
    // The original panic, not a second one (which would have aborted the process).
    assert!(caught.unwrap_err().is::<Deliberate>());
    assert_eq!(bindings(), before);
    assert_eq!(ctx.get(&LEVEL), Some(&5));
}

#[test]
fn a_guard_dropped_on_another_thread_panics_there_and_changes_nothing() {
    let before = baseline();
    let guard = LEVEL.scoped(5);
    let other = std::thread::spawn(move || {
        let _ = LEVEL.set(7);
        drop(guard);
    })
    .join();
    let message = panic_text(&*other.unwrap_err());
    assert!(message.contains("different context"), "{message}");
    // Still in the guard's span here; `before` had LEVEL = 1.
    assert_eq!(LEVEL.get(), 5);
    let _ = LEVEL.set(1);
    assert_eq!(bindings(), before);
}

#[test]
fn a_guard_dropped_in_a_task_without_a_context_panics_there_and_changes_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let before = baseline();
        let guard = LEVEL.scoped(5);
        let err = tokio::spawn(async move { drop(guard) }).await.unwrap_err();
        let message = panic_text(&*err.into_panic());
        assert!(message.contains("different context"), "{message}");
        assert_eq!(LEVEL.get(), 5);
        let _ = LEVEL.set(1);
        assert_eq!(bindings(), before);
    });
}

#[test]
fn a_guard_undone_by_an_outer_one_stays_undone_after_new_guards_reach_its_depth() {
    let before = baseline();
    let outer = LEVEL.scoped(2);
    let inner = USER.scoped("inner".into());
    drop(outer); // undoes `inner` too
    let third = LEVEL.scoped(3);
    let fourth = LEVEL.scoped(4);
    // `inner` was undone already: dropping it now must change nothing.
    drop(inner);
    assert_eq!((LEVEL.get(), USER.get().as_deref()), (4, Some("outer")));
    drop(fourth);
    assert_eq!(LEVEL.get(), 3);
    drop(third);
    assert_eq!(bindings(), before);
}
