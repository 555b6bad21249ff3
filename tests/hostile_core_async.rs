//! Hostile tests of the async promises: `gather` under load and cancellation,
//! `#[preserve_context]` recursion and foreign runtimes, nested runtimes (`block_in_place`
//! with `Handle::block_on`, a runtime built inside a blocking job, a hand-made `block_on`
//! inside a task), `run_in_executor` and threads with panics, metadata under concurrency.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use contextvars::metadata::{get_all_metadata, remove_metadata, set_metadata};
use contextvars::{Context, FutureExt, context_var, preserve_context};

mod support;
use support::Rng;

#[context_var]
static REQUEST: u32;

#[context_var]
static DEPTH: u32 = 0;

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

async fn random_yields(rng: &mut Rng) {
    for _ in 0..rng.below(4) {
        tokio::task::yield_now().await;
    }
}

/// Runs `future` as a `contextvars::spawn` task of a fresh multi-thread runtime.
fn in_task<F>(future: F) -> Result<F::Output, tokio::task::JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    multi_thread().block_on(async { contextvars::spawn(future).await })
}

/// A minimal `block_on` that parks the thread: a plain executor with no tokio context.
fn park_block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

// ---------------------------------------------------------------------------------------
// gather
// ---------------------------------------------------------------------------------------

/// B24, gather: two thousand branches on a multi-thread runtime, each setting its own value
/// and yielding at random (sleeping on timers woken from other threads), each see only their
/// own value; the caller's value never changes.
#[test]
fn gather_of_two_thousand_branches_keeps_each_value_apart() {
    in_task(async {
        let _token = REQUEST.set(u32::MAX);
        let branches = (0..2000u32).map(|id| async move {
            let mut rng = Rng::new(u64::from(id) + 1);
            assert_eq!(REQUEST.get(), Some(u32::MAX));
            let _token = REQUEST.set(id);
            for _ in 0..3 {
                random_yields(&mut rng).await;
                if rng.below(4) == 0 {
                    tokio::time::sleep(Duration::from_micros(rng.below(200))).await;
                }
                assert_eq!(REQUEST.get(), Some(id));
                assert_eq!(REQUEST.get(), Some(id));
            }
            REQUEST.get()
        });
        let seen = contextvars::gather(branches).await;
        assert_eq!(seen, (0..2000).map(Some).collect::<Vec<_>>());
        assert_eq!(REQUEST.get(), Some(u32::MAX));
    })
    .unwrap();
}

static GATHER_DROPS: Mutex<Vec<(u32, Option<u32>)>> = Mutex::new(Vec::new());

struct NotesDrop(u32);

impl Drop for NotesDrop {
    fn drop(&mut self) {
        GATHER_DROPS.lock().unwrap().push((self.0, REQUEST.get()));
    }
}

#[context_var]
static NOTES: Arc<NotesDrop>;

/// B24, S9: a gather inside a task that is aborted mid-flight, while some branches have
/// panicked-free progress and others sleep, drops every branch's values inside that branch's
/// own context, and the spawner's context is untouched.
#[test]
fn an_aborted_task_mid_gather_drops_each_branch_in_its_own_context() {
    GATHER_DROPS.lock().unwrap().clear();
    in_task(async {
        let _token = REQUEST.set(1000);
        let handle = contextvars::spawn(contextvars::gather((0..50u32).map(|id| async move {
            let _ = REQUEST.set(id);
            let _ = NOTES.set(Arc::new(NotesDrop(id)));
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        })));
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.abort();
        assert!(handle.await.unwrap_err().is_cancelled());
        assert_eq!(REQUEST.get(), Some(1000));
        assert_eq!(NOTES.get().map(|n| n.0), None);
    })
    .unwrap();
    let mut drops = std::mem::take(&mut *GATHER_DROPS.lock().unwrap());
    drops.sort_unstable();
    assert_eq!(drops, (0..50).map(|id| (id, Some(id))).collect::<Vec<_>>());
}

/// gather, S9: a branch that panics fails the gather's task alone (`JoinError::Panic`), with
/// the other branches' values dropped in their own contexts; a sibling task is untouched.
#[test]
fn a_panicking_gather_branch_fails_its_task_only() {
    GATHER_DROPS.lock().unwrap().clear();
    in_task(async {
        let _token = REQUEST.set(500);
        let sibling = contextvars::spawn(async {
            for _ in 0..20 {
                tokio::task::yield_now().await;
                assert_eq!(REQUEST.get(), Some(500));
            }
            REQUEST.get()
        });
        let failing = contextvars::spawn(contextvars::gather((100..110u32).map(|id| async move {
            let _ = REQUEST.set(id);
            let _ = NOTES.set(Arc::new(NotesDrop(id)));
            tokio::task::yield_now().await;
            assert!(id != 105, "branch {id} fails on purpose");
            tokio::time::sleep(Duration::from_millis(20)).await;
        })));
        assert!(failing.await.unwrap_err().is_panic());
        assert_eq!(sibling.await.unwrap(), Some(500));
        assert_eq!(REQUEST.get(), Some(500));
    })
    .unwrap();
    let mut drops = std::mem::take(&mut *GATHER_DROPS.lock().unwrap());
    drops.sort_unstable();
    assert_eq!(
        drops,
        (100..110).map(|id| (id, Some(id))).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------
// #[preserve_context]
// ---------------------------------------------------------------------------------------

/// Recurses, each level setting `DEPTH` to one more than what it saw when it was called.
#[preserve_context]
async fn descend(levels: u32) -> Vec<u32> {
    let seen = DEPTH.get();
    let _token = DEPTH.set(seen + 1);
    tokio::task::yield_now().await;
    let mut below = if levels == 0 {
        Vec::new()
    } else {
        Box::pin(descend(levels - 1)).await
    };
    // The level below set `DEPTH` only inside itself.
    assert_eq!(DEPTH.get(), seen + 1);
    below.push(seen);
    below
}

/// B27: a recursive `#[preserve_context]` function: each call captures its caller's context
/// (with the caller's set), and no level's set reaches the one above.
#[test]
fn recursive_preserved_calls_each_capture_their_callers_context() {
    let seen = in_task(async {
        let out = descend(20).await;
        assert_eq!(DEPTH.get(), 0);
        out
    });
    assert_eq!(seen.unwrap(), (0..=20).rev().collect::<Vec<_>>());
}

#[preserve_context]
async fn read_request_later() -> Option<u32> {
    tokio::task::yield_now().await;
    REQUEST.get()
}

/// B27: a future made in a context, then polled on another runtime in another thread (whose
/// root future has a context of its own), still sees the context of its call.
#[test]
fn a_preserved_future_polled_on_a_runtime_of_another_thread_keeps_its_callers_values() {
    let future = Context::new()
        .with_value(&REQUEST, 77)
        .run(read_request_later);
    let seen = std::thread::spawn(move || {
        let _token = REQUEST.set(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seen = runtime.block_on(future);
        (seen, REQUEST.get())
    })
    .join()
    .unwrap();
    assert_eq!(seen, (Some(77), Some(1)));
}

// ---------------------------------------------------------------------------------------
// Nested runtimes and executors
// ---------------------------------------------------------------------------------------

/// B23, B25, B26: inside a task, `block_in_place` + `Handle::block_on` runs a future on the
/// same thread as a nested call: it reads the task's values; a task it spawns with
/// `contextvars::spawn` inherits them, one spawned with plain `tokio::spawn` sees none.
#[test]
fn block_in_place_and_handle_block_on_inside_a_task() {
    let runtime = multi_thread();
    let handle = runtime.handle().clone();
    let seen = runtime
        .block_on(async {
            contextvars::spawn(async move {
                let _token = REQUEST.set(9);
                tokio::task::block_in_place(|| {
                    handle.block_on(async {
                        let direct = REQUEST.get();
                        let inherited = contextvars::spawn(async { REQUEST.get() }).await.unwrap();
                        let plain = tokio::spawn(async { REQUEST.get() }).await.unwrap();
                        (direct, inherited, plain)
                    })
                })
            })
            .await
        })
        .unwrap();
    assert_eq!(seen, (Some(9), Some(9), None));
}

/// B25, B26: a runtime built inside a `contextvars::spawn_blocking` job: its `block_on` root
/// runs in the job's context, `contextvars::spawn` there inherits it, plain `tokio::spawn`
/// sees nothing, and the job's own sets stay in the job.
#[test]
fn a_runtime_built_inside_a_blocking_job() {
    let seen = in_task(async {
        let _token = REQUEST.set(3);
        let job = contextvars::spawn_blocking(|| {
            let _token = DEPTH.set(8);
            let inner = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            inner.block_on(async {
                let root = (REQUEST.get(), DEPTH.get());
                let child = contextvars::spawn(async { (REQUEST.get(), DEPTH.get()) })
                    .await
                    .unwrap();
                let plain = tokio::spawn(async { (REQUEST.get(), DEPTH.get()) })
                    .await
                    .unwrap();
                (root, child, plain)
            })
        })
        .await
        .unwrap();
        (job, DEPTH.get())
    })
    .unwrap();
    assert_eq!(
        seen,
        (((Some(3), 8), (Some(3), 8), (None, 0)), 0),
        "(root, contextvars::spawn, tokio::spawn), then the spawner's DEPTH"
    );
}

/// B23, B24: a plain executor's `block_on` inside a task polls on the task's thread as a
/// nested call: a plain future reads the task's values, a wrapped future runs in its own
/// context and its sets stay there.
#[test]
fn a_hand_made_block_on_inside_a_task() {
    let seen = in_task(async {
        let _token = REQUEST.set(21);
        let plain = park_block_on(async { REQUEST.get() });
        let wrapped = park_block_on(
            async {
                let _ = REQUEST.set(22);
                REQUEST.get()
            }
            .in_current_context(),
        );
        tokio::task::yield_now().await;
        (plain, wrapped, REQUEST.get())
    })
    .unwrap();
    assert_eq!(seen, (Some(21), Some(22), Some(21)));
}

/// `tokio::select!` losers (B15, B24): each branch wrapped with `in_current_context` sets and
/// holds a guard; the loser is dropped inside its own context and the caller's value stays.
#[test]
fn select_losers_holding_guards_leave_the_caller_alone() {
    in_task(async {
        let _token = REQUEST.set(1);
        for round in 0..200u32 {
            let fast = async move {
                let _guard = REQUEST.scoped(round);
                tokio::task::yield_now().await;
                REQUEST.get()
            }
            .in_current_context();
            let slow = async move {
                let _guard = REQUEST.scoped(round + 10_000);
                tokio::time::sleep(Duration::from_secs(10)).await;
                REQUEST.get()
            }
            .in_current_context();
            let won = tokio::select! {
                won = fast => won,
                won = slow => won,
            };
            assert_eq!(won, Some(round));
            assert_eq!(REQUEST.get(), Some(1));
        }
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Executors and threads with panics
// ---------------------------------------------------------------------------------------

/// B21, B31, `run_in_executor`: a job that sets and then panics resolves to a panic error; the
/// worker thread's next unwrapped job sees none of its values (nor the submitter's).
#[test]
fn a_panicking_executor_job_leaves_nothing_on_its_worker() {
    let (send, receive) = mpsc::channel::<contextvars::Job>();
    let (plain_send, plain_receive) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
    let worker = std::thread::spawn(move || {
        for job in receive {
            job();
            // After each job, run the plain jobs queued meanwhile.
            while let Ok(plain) = plain_receive.try_recv() {
                plain();
            }
        }
    });
    let runtime = multi_thread();
    let outcome = runtime.block_on(async {
        contextvars::spawn(async move {
            let _token = REQUEST.set(40);
            let failed = contextvars::run_in_executor(
                |job| send.send(job).unwrap(),
                || {
                    let _ = DEPTH.set(41);
                    assert_eq!(REQUEST.get(), Some(40));
                    panic!("job fails on purpose");
                },
            )
            .await;
            let (report, seen) = std::sync::mpsc::channel();
            plain_send
                .send(Box::new(move || {
                    report.send((REQUEST.get(), DEPTH.get())).unwrap();
                }))
                .unwrap();
            let ok =
                contextvars::run_in_executor(|job| send.send(job).unwrap(), || DEPTH.get()).await;
            drop(send);
            (
                failed.map_err(|e| e.is_panic()).err(),
                ok.ok(),
                seen.recv().unwrap(),
            )
        })
        .await
    });
    worker.join().unwrap();
    assert_eq!(outcome.unwrap(), (Some(true), Some(0), (None, 0)));
}

static THREAD_DROPS: Mutex<Vec<(u32, Option<u32>)>> = Mutex::new(Vec::new());

struct ThreadNote(u32);

impl Drop for ThreadNote {
    fn drop(&mut self) {
        THREAD_DROPS.lock().unwrap().push((self.0, REQUEST.get()));
    }
}

#[context_var]
static THREAD_NOTE: Arc<ThreadNote>;

/// B24, B30, S9: a `contextvars::thread::spawn` thread that sets and panics: the join gives
/// the panic, the thread's values are dropped inside its own context (seeing its own
/// `REQUEST`), and the spawner's context is untouched.
#[test]
fn a_panicking_context_thread_drops_its_values_in_its_context_and_leaves_the_spawner_alone() {
    THREAD_DROPS.lock().unwrap().clear();
    let _token = REQUEST.set(60);
    let handles: Vec<_> = (0..8u32)
        .map(|id| {
            contextvars::thread::spawn(move || {
                assert_eq!(REQUEST.get(), Some(60));
                let _ = REQUEST.set(id);
                let _ = THREAD_NOTE.set(Arc::new(ThreadNote(id)));
                assert!(id % 2 == 0, "thread {id} fails on purpose");
                id
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().ok()).collect();
    assert_eq!(
        results,
        (0..8)
            .map(|id| (id % 2 == 0).then_some(id))
            .collect::<Vec<_>>()
    );
    assert_eq!(REQUEST.get(), Some(60));
    assert!(THREAD_NOTE.get().is_none());
    let mut drops = std::mem::take(&mut *THREAD_DROPS.lock().unwrap());
    drops.sort_unstable();
    assert_eq!(drops, (0..8).map(|id| (id, Some(id))).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// spawn_local
// ---------------------------------------------------------------------------------------

/// B25, S9: on a `LocalSet`, local tasks spawned with `contextvars::spawn_local` that set,
/// yield and panic at random keep their values apart; a panic fails its own task only and
/// the values of a panicking task are dropped in its context.
#[test]
fn spawn_local_tasks_with_panics_keep_their_values_apart() {
    THREAD_DROPS.lock().unwrap().clear();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let results = local.block_on(&runtime, async {
        let _token = REQUEST.set(999);
        let handles: Vec<_> = (0..100u32)
            .map(|id| {
                contextvars::spawn_local(async move {
                    let mut rng = Rng::new(u64::from(id) * 7 + 1);
                    assert_eq!(REQUEST.get(), Some(999));
                    let _ = REQUEST.set(id);
                    let _ = THREAD_NOTE.set(Arc::new(ThreadNote(id)));
                    random_yields(&mut rng).await;
                    assert!(id % 10 != 3, "task {id} fails on purpose");
                    random_yields(&mut rng).await;
                    REQUEST.get()
                })
            })
            .collect();
        let mut results = Vec::new();
        for handle in handles {
            results.push(handle.await.ok().flatten());
        }
        assert_eq!(REQUEST.get(), Some(999));
        results
    });
    assert_eq!(
        results,
        (0..100)
            .map(|id| (id % 10 != 3).then_some(id))
            .collect::<Vec<_>>()
    );
    let mut drops = std::mem::take(&mut *THREAD_DROPS.lock().unwrap());
    drops.sort_unstable();
    assert_eq!(drops, (0..100).map(|id| (id, Some(id))).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// Metadata under concurrency
// ---------------------------------------------------------------------------------------

/// B38, S9: many tasks on a multi-thread runtime set and remove metadata at random, yielding
/// between steps, and take snapshots meanwhile: each task's map follows its own model alone,
/// each snapshot keeps the map it was taken with, and the spawner's map never changes.
#[test]
fn metadata_under_concurrent_sets_removes_and_snapshots() {
    static CHECKED: AtomicUsize = AtomicUsize::new(0);
    in_task(async {
        set_metadata("shared", "root");
        let tasks: Vec<_> = (0..64u64)
            .map(|task| {
                contextvars::spawn(async move {
                    let mut rng = Rng::new(task + 1);
                    let mut model = BTreeMap::from([("shared".to_string(), "root".to_string())]);
                    let mut snapshots: Vec<(Context, BTreeMap<String, String>)> = Vec::new();
                    for step in 0..60 {
                        let key = format!("k{}", rng.below(6));
                        match rng.below(3) {
                            0 => {
                                let value = format!("t{task}s{step}");
                                set_metadata(key.clone(), value.clone());
                                model.insert(key, value);
                            }
                            1 => {
                                assert_eq!(remove_metadata(&key), model.remove(&key));
                            }
                            _ => snapshots.push((Context::current(), model.clone())),
                        }
                        random_yields(&mut rng).await;
                        assert_eq!(get_all_metadata(), model);
                    }
                    for (mut snapshot, expected) in snapshots {
                        assert_eq!(snapshot.run(get_all_metadata), expected);
                        CHECKED.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            get_all_metadata(),
            BTreeMap::from([("shared".to_string(), "root".to_string())])
        );
    })
    .unwrap();
    assert!(CHECKED.load(Ordering::Relaxed) > 100);
}

/// gather, B24: a gather polled for a while in one task, then moved to another task (on
/// another worker) and finished there: every branch's wake reaches the new task, each branch
/// still reads its own value, and neither task's context is touched.
#[test]
fn a_gather_moved_to_another_task_mid_flight_finishes_there() {
    let seen = in_task(async {
        let _token = REQUEST.set(1);
        let mut gathered = Box::pin(contextvars::gather((0..64u32).map(|id| async move {
            let mut rng = Rng::new(u64::from(id) + 5);
            let _ = REQUEST.set(id + 100);
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(rng.below(15))).await;
                assert_eq!(REQUEST.get(), Some(id + 100));
            }
            REQUEST.get()
        })));
        tokio::select! {
            _ = &mut gathered => panic!("the branches sleep longer than this"),
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        let other = contextvars::spawn(async move {
            let _ = REQUEST.set(2);
            let out = tokio::time::timeout(Duration::from_secs(2), gathered)
                .await
                .expect("a branch's wake did not reach the task that now polls the gather");
            (out, REQUEST.get())
        });
        let (out, there) = other.await.unwrap();
        (out, there, REQUEST.get())
    })
    .unwrap();
    assert_eq!(seen.0, (100..164).map(Some).collect::<Vec<_>>());
    assert_eq!((seen.1, seen.2), (Some(2), Some(1)));
}

/// gather, B24: a gather inside a gather branch: inner branches start from their outer
/// branch's context (its set included) and keep their own sets; the outer branch's value is
/// left as it set it.
#[test]
fn nested_gathers_inherit_their_branch_and_keep_their_sets() {
    let seen = in_task(async {
        contextvars::gather((0..8u32).map(|outer| async move {
            let _ = REQUEST.set(outer);
            let inner = contextvars::gather((0..8u32).map(|inner| async move {
                let from_outer = REQUEST.get();
                tokio::task::yield_now().await;
                let _ = REQUEST.set(outer * 100 + inner);
                tokio::task::yield_now().await;
                (from_outer, REQUEST.get())
            }))
            .await;
            (inner, REQUEST.get())
        }))
        .await
    })
    .unwrap();
    for (outer, (inner, own)) in (0..8u32).zip(seen) {
        assert_eq!(own, Some(outer));
        let want: Vec<_> = (0..8u32)
            .map(|inner| (Some(outer), Some(outer * 100 + inner)))
            .collect();
        assert_eq!(inner, want);
    }
}

/// gather: branches woken from inside other branches' polls (a chain of oneshot channels
/// where each branch wakes one polled before it in the same pass, and a chain the other
/// way) all finish: a wake during a poll of the gather is never lost.
#[test]
fn gather_branches_woken_by_sibling_branches_during_the_same_poll_all_finish() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for reverse in [false, true] {
        let seen = runtime.block_on(async {
            contextvars::spawn(async move {
                const N: u32 = 1000;
                let mut senders = Vec::new();
                let mut receivers = Vec::new();
                for _ in 0..N {
                    let (send, receive) = tokio::sync::oneshot::channel::<u32>();
                    senders.push(Some(send));
                    receivers.push(Some(receive));
                }
                // Branch `i` waits for its link, then sets its value and wakes the next one
                // in the chain: `i + 1`, or `i - 1` when `reverse`.
                let branches = (0..N).map(|i| {
                    let receive = receivers[i as usize].take().unwrap();
                    let next = if reverse {
                        i.checked_sub(1)
                    } else {
                        (i + 1 < N).then_some(i + 1)
                    };
                    let send = next.and_then(|next| senders[next as usize].take());
                    let first = if reverse { N - 1 } else { 0 };
                    let starter = (i == first).then(|| senders[i as usize].take().unwrap());
                    async move {
                        if let Some(starter) = starter {
                            starter.send(i).unwrap();
                        }
                        let from = receive.await.unwrap();
                        let _ = REQUEST.set(i);
                        if let Some(send) = send {
                            send.send(i).unwrap();
                        }
                        (from, REQUEST.get())
                    }
                });
                let branches: Vec<_> = branches.collect();
                tokio::time::timeout(Duration::from_secs(2), contextvars::gather(branches))
                    .await
                    .expect("a wake from a sibling branch was lost")
            })
            .await
            .unwrap()
        });
        for (i, (from, own)) in (0..1000u32).zip(seen) {
            assert_eq!(own, Some(i));
            let want = match (reverse, i) {
                (false, 0) | (true, 999) => i,
                (false, _) => i - 1,
                (true, _) => i + 1,
            };
            assert_eq!(from, want, "reverse {reverse}, branch {i}");
        }
    }
}

/// A generic service whose preserved method recurses through `self: Arc<Self>`.
struct Service<T> {
    label: T,
}

impl<T: Clone + Send + Sync + 'static> Service<T> {
    /// Each level reads `REQUEST` as its caller's context had it at the call, sets its own
    /// level, and recurses.
    #[preserve_context]
    async fn walk(self: Arc<Self>, levels: u32) -> Vec<(T, Option<u32>)> {
        let seen = REQUEST.get();
        let _ = REQUEST.set(levels);
        tokio::task::yield_now().await;
        let mut out = if levels == 0 {
            Vec::new()
        } else {
            Box::pin(Arc::clone(&self).walk(levels - 1)).await
        };
        assert_eq!(REQUEST.get(), Some(levels));
        out.push((self.label.clone(), seen));
        out
    }
}

/// B27, B28: a generic `#[preserve_context]` method taking `self: Arc<Self>`, called in one
/// context on a plain thread and spawned with plain `Handle::spawn` on a runtime owned
/// elsewhere: it runs in the context of its call; each recursive level sees its caller's set.
#[test]
fn a_generic_recursive_preserved_method_spawned_on_a_foreign_runtime() {
    let runtime = multi_thread();
    let handle = runtime.handle().clone();
    let service = Arc::new(Service { label: "svc" });
    let joined = std::thread::spawn(move || {
        let future = Context::new()
            .with_value(&REQUEST, 50)
            .run(|| service.walk(3));
        let _token = REQUEST.set(1);
        handle.spawn(future)
    })
    .join()
    .unwrap();
    let out = runtime.block_on(joined).unwrap();
    assert_eq!(
        out,
        [
            ("svc", Some(1)),
            ("svc", Some(2)),
            ("svc", Some(3)),
            ("svc", Some(50))
        ]
    );
}
