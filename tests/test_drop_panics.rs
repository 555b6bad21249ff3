//! A value whose `Drop` panics, held in a task's or a context's values: the panic belongs to
//! the task (its `JoinHandle` gives a panic `JoinError`) or to whoever drops the context, never
//! to the task that awaits; the context's other values are still dropped, inside it.

mod support;

use std::sync::{Arc, Mutex};

use contextvars::{Context, context_var};
use support::panic_message;

/// A value whose `Drop` panics.
struct Panics;

impl Drop for Panics {
    fn drop(&mut self) {
        panic!("a value's Drop panics");
    }
}

/// A value whose `Drop` records what it reads of `TENANT` and sets `AFTER`.
struct Records(Arc<Mutex<Vec<Option<u32>>>>);

impl Drop for Records {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(TENANT.get());
        let _ = AFTER.try_set(77);
    }
}

#[context_var]
static PANICS: Arc<Panics>;

#[context_var]
static RECORDS: Arc<Records>;

#[context_var]
static TENANT: u32;

/// Set by `Records`' drop: it must never reach the code that awaits or drops.
#[context_var]
static AFTER: u32;

fn log() -> Arc<Mutex<Vec<Option<u32>>>> {
    Arc::new(Mutex::new(Vec::new()))
}

/// The task's body: binds both values and a tenant, then yields.
async fn binds_both(log: Arc<Mutex<Vec<Option<u32>>>>) -> u32 {
    let _ = TENANT.set(3);
    let _ = RECORDS.set(Arc::new(Records(log)));
    let _ = PANICS.set(Arc::new(Panics));
    tokio::task::yield_now().await;
    5
}

fn runtimes() -> [tokio::runtime::Runtime; 2] {
    [
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    ]
}

#[test]
fn a_panicking_drop_at_a_spawned_tasks_end_is_the_tasks_panic_not_the_awaiters() {
    for runtime in runtimes() {
        let log = log();
        let awaiter = runtime.block_on({
            let log = log.clone();
            async move {
                let result = contextvars::spawn(binds_both(log)).await;
                let err = result.expect_err("the task's value panicked on drop");
                assert!(err.is_panic(), "{err:?}");
                assert_eq!(panic_message(&*err.into_panic()), "a value's Drop panics");
                // The awaiter goes on, in its own context: nothing the task's values did
                // when dropped reached it.
                (AFTER.get(), TENANT.get())
            }
        });
        assert_eq!(awaiter, (None, None));
        // The other value was still dropped, inside the task's context.
        assert_eq!(*log.lock().unwrap(), [Some(3)]);
    }
}

#[test]
fn a_panicking_drop_in_spawn_blocking_is_the_tasks_panic() {
    for runtime in runtimes() {
        let log = log();
        let awaiter = runtime.block_on({
            let log = log.clone();
            async move {
                let err = contextvars::spawn_blocking(move || {
                    let _ = TENANT.set(4);
                    let _ = RECORDS.set(Arc::new(Records(log)));
                    let _ = PANICS.set(Arc::new(Panics));
                })
                .await
                .expect_err("the task's value panicked on drop");
                assert!(err.is_panic());
                AFTER.get()
            }
        });
        assert_eq!(awaiter, None);
        assert_eq!(*log.lock().unwrap(), [Some(4)]);
    }
}

#[test]
fn a_panicking_drop_in_an_aborted_task_is_reported_as_its_panic() {
    for runtime in runtimes() {
        let log = log();
        runtime.block_on({
            let log = log.clone();
            async move {
                let (bound, is_bound) = tokio::sync::oneshot::channel();
                let task = contextvars::spawn(async move {
                    let _ = TENANT.set(5);
                    let _ = RECORDS.set(Arc::new(Records(log)));
                    let _ = PANICS.set(Arc::new(Panics));
                    bound.send(()).unwrap();
                    std::future::pending::<()>().await;
                });
                is_bound.await.unwrap();
                task.abort();
                let err = task.await.expect_err("aborted");
                // tokio reports a panic while dropping an aborted task's future as a panic.
                assert!(err.is_panic(), "{err:?}");
                assert_eq!(AFTER.get(), None);
            }
        });
        assert_eq!(*log.lock().unwrap(), [Some(5)]);
    }
}

#[test]
fn a_task_that_panics_with_a_panicking_value_reports_its_own_panic_and_the_process_lives_on() {
    for runtime in runtimes() {
        let log = log();
        runtime.block_on({
            let log = log.clone();
            async move {
                let err = contextvars::spawn(async move {
                    let _ = TENANT.set(6);
                    let _ = RECORDS.set(Arc::new(Records(log)));
                    let _ = PANICS.set(Arc::new(Panics));
                    tokio::task::yield_now().await;
                    panic!("the body panics first");
                })
                .await
                .expect_err("the body panicked");
                assert_eq!(panic_message(&*err.into_panic()), "the body panics first");
                // The runtime still serves tasks.
                assert_eq!(contextvars::spawn(async { 1 }).await.unwrap(), 1);
            }
        });
        assert_eq!(*log.lock().unwrap(), [Some(6)]);
    }
}

#[test]
fn a_dropped_context_drops_every_value_inside_itself_then_raises_the_first_panic() {
    let log = log();
    let ctx = Context::new()
        .with_value(&TENANT, 8)
        .with_value(&PANICS, Arc::new(Panics))
        .with_value(&RECORDS, Arc::new(Records(log.clone())));
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(ctx)));
    let payload = dropped.expect_err("the context's drop raises the value's panic");
    assert_eq!(panic_message(&*payload), "a value's Drop panics");
    assert_eq!(*log.lock().unwrap(), [Some(8)]);
    // The thread's own context is as it was: nothing the values' drops set reached it.
    assert_eq!(AFTER.get(), None);
    assert_eq!(TENANT.get(), None);
}
