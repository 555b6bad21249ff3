//! Hostile tests of B39 where the existing suites do not go: a value whose `Drop` panics, held
//! by a `spawn_local` task, a `contextvars::thread::spawn` thread, a `run_in_executor` job,
//! a `gather` branch and a `#[preserve_context]` future; and a panic payload whose own `Drop`
//! sets a variable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use contextvars::{context_var, preserve_context};

/// Its `Drop` panics.
struct Panics;

impl Drop for Panics {
    fn drop(&mut self) {
        panic!("a value's Drop panics");
    }
}

/// Its `Drop` records what it reads of `TENANT`.
struct Records(Arc<Mutex<Vec<Option<u32>>>>);

impl Drop for Records {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(TENANT.get());
    }
}

#[context_var]
static TENANT: u32;

#[context_var]
static RECORDS: Arc<Records>;

#[context_var]
static PANICS: Arc<Panics>;

fn log() -> Arc<Mutex<Vec<Option<u32>>>> {
    Arc::new(Mutex::new(Vec::new()))
}

/// Binds a tenant, a recording value and a panicking one (newest key last, dropped first).
fn bind(tenant: u32, log: &Arc<Mutex<Vec<Option<u32>>>>) {
    let _ = TENANT.set(tenant);
    let _ = RECORDS.set(Arc::new(Records(Arc::clone(log))));
    let _ = PANICS.set(Arc::new(Panics));
}

/// B39: a `spawn_local` task whose value panics when dropped at its end is reported as that
/// task's panic; its other values are still dropped inside it; a sibling local task and the
/// awaiting task are untouched.
#[test]
fn a_panicking_drop_in_a_spawn_local_task_is_that_tasks_panic() {
    let log = log();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let task_log = Arc::clone(&log);
    let (failed, sibling, own) = local.block_on(&runtime, async move {
        let _ = TENANT.set(1);
        let failing = contextvars::spawn_local(async move {
            bind(2, &task_log);
            tokio::task::yield_now().await;
            5
        });
        let sibling = contextvars::spawn_local(async {
            tokio::task::yield_now().await;
            TENANT.get()
        });
        let failed = failing.await;
        (
            failed.map_err(|err| err.is_panic()),
            sibling.await.unwrap(),
            TENANT.get(),
        )
    });
    assert_eq!(failed, Err(true));
    assert_eq!((sibling, own), (Some(1), Some(1)));
    assert_eq!(*log.lock().unwrap(), [Some(2)]);
}

/// B39, B30: a `contextvars::thread::spawn` thread whose value panics when its context is
/// dropped at the closure's end: the join reports a panic, the other values were dropped
/// inside the thread's context, and the spawner's context is untouched.
#[test]
fn a_panicking_drop_at_a_context_threads_end_is_that_threads_panic() {
    let log = log();
    let _token = TENANT.set(1);
    let thread_log = Arc::clone(&log);
    let joined = contextvars::thread::spawn(move || {
        bind(2, &thread_log);
        5
    })
    .join();
    assert!(joined.is_err(), "{joined:?}");
    assert_eq!(TENANT.get(), Some(1));
    assert_eq!(*log.lock().unwrap(), [Some(2)]);
}

/// B39 with `run_in_executor`: a job whose value panics when dropped at the job's end
/// resolves to a panic error, the worker thread lives on, and the job's other values were
/// dropped inside its context.
#[test]
fn a_panicking_drop_at_an_executor_jobs_end_is_the_jobs_panic() {
    let log = log();
    let (send, receive) = std::sync::mpsc::channel::<contextvars::Job>();
    let worker = std::thread::spawn(move || {
        let mut ran = 0;
        for job in receive {
            job();
            ran += 1;
        }
        ran
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let job_log = Arc::clone(&log);
    let (first, second) = runtime.block_on(async {
        let first = contextvars::run_in_executor(
            |job| send.send(job).unwrap(),
            move || {
                bind(2, &job_log);
                5
            },
        )
        .await;
        let second = contextvars::run_in_executor(|job| send.send(job).unwrap(), || 6).await;
        drop(send);
        (first.map_err(|err| err.is_panic()), second.ok())
    });
    assert_eq!(worker.join().unwrap(), 2);
    assert_eq!((first, second), (Err(true), Some(6)));
    assert_eq!(*log.lock().unwrap(), [Some(2)]);
}

/// B39 with `gather`: a branch whose value panics when dropped at the branch's end fails
/// the task that awaits the gather (the branch runs in it), and the branch's other values
/// are dropped inside the branch's context; other tasks are untouched.
#[test]
fn a_panicking_drop_at_a_gather_branchs_end_fails_the_gathering_task_only() {
    let log = log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let task_log = Arc::clone(&log);
    let (gathered, other) = runtime.block_on(async move {
        let other = contextvars::spawn(async {
            let _ = TENANT.set(9);
            tokio::task::yield_now().await;
            TENANT.get()
        });
        let gathered = contextvars::spawn(async move {
            contextvars::gather((0..4u32).map(|id| {
                let log = Arc::clone(&task_log);
                async move {
                    if id == 2 {
                        bind(20, &log);
                    } else {
                        let _ = TENANT.set(id);
                    }
                    tokio::task::yield_now().await;
                    id
                }
            }))
            .await
        })
        .await;
        (gathered.map_err(|err| err.is_panic()), other.await.unwrap())
    });
    assert_eq!(gathered, Err(true));
    assert_eq!(other, Some(9));
    assert_eq!(*log.lock().unwrap(), [Some(20)]);
}

#[preserve_context]
async fn binds_and_yields(log: Arc<Mutex<Vec<Option<u32>>>>) -> u32 {
    bind(30, &log);
    tokio::task::yield_now().await;
    7
}

/// B39, B27: a `#[preserve_context]` future whose body's value panics when dropped (with the
/// future, inside its context): the panic is the task's that owned the future
/// (`JoinError::Panic`), never the awaiting task's; the body's other values were dropped
/// inside the body's context; the awaiting task's context is as it was.
#[test]
fn a_panicking_drop_of_a_preserved_futures_value_fails_the_owning_task_only() {
    let log = log();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let task_log = Arc::clone(&log);
    let outcome = runtime.block_on(async move {
        contextvars::spawn(async move {
            let _ = TENANT.set(3);
            let owner = contextvars::spawn(binds_and_yields(task_log));
            let failed = owner.await.map_err(|err| err.is_panic());
            (failed, TENANT.get(), PANICS.get().is_some())
        })
        .await
        .unwrap()
    });
    assert_eq!(outcome, (Err(true), Some(3), false));
    assert_eq!(*log.lock().unwrap(), [Some(30)]);
}

/// Its `Drop` sets `TENANT` (as B24 allows a `Drop` to) and counts.
struct PayloadSets;

static PAYLOAD_DROPS: AtomicUsize = AtomicUsize::new(0);

impl Drop for PayloadSets {
    fn drop(&mut self) {
        let _ = TENANT.try_set(99);
        PAYLOAD_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

/// S9, B26: a detached task that panics with a payload whose `Drop` sets a variable: the
/// payload is dropped without aborting the process and its set reaches no other task.
#[test]
fn a_detached_tasks_panic_payload_that_sets_when_dropped_reaches_no_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(async {
        for _ in 0..20 {
            drop(contextvars::spawn(async {
                tokio::task::yield_now().await;
                std::panic::panic_any(PayloadSets);
            }));
        }
        for _ in 0..100 {
            if PAYLOAD_DROPS.load(Ordering::SeqCst) == 20 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let plain = tokio::spawn(async { TENANT.get() }).await.unwrap();
        let fresh = contextvars::spawn(async { TENANT.get() }).await.unwrap();
        let blocking = contextvars::spawn_blocking(|| TENANT.get()).await.unwrap();
        (plain, fresh, blocking, TENANT.get())
    });
    assert_eq!(PAYLOAD_DROPS.load(Ordering::SeqCst), 20);
    assert_eq!(seen, (None, None, None, None));
}
