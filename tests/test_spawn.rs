//! Spawn helpers (SPEC S5, B25): `contextvars::spawn`, `spawn_blocking` and `spawn_local`
//! snapshot the caller's context at the call and isolate both ways; aborted and panicking
//! tasks leave nothing behind on the worker threads.

mod support;

use support::Rng;

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::ThreadId;
use std::time::Duration;

use contextvars::{Context, FutureExt, context_var};

#[context_var]
static A: u32;

#[context_var]
static B: String;

#[context_var]
static HITS: u32 = 0;

const WORKERS: usize = 4;

/// Every panic this file provokes on purpose carries this text, and is not printed.
const EXPECTED: &str = "expected test panic";

fn quiet_expected_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !message.is_some_and(|m| m.contains(EXPECTED)) {
                default(info);
            }
        }));
    });
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_time()
        .build()
        .unwrap()
}

/// Waits until `count` callers arrive, or gives up after `patience`, so that a round whose
/// tasks did not spread over the workers ends instead of hanging (and is tried again).
struct Rendezvous {
    arrived: Mutex<usize>,
    all_here: Condvar,
    count: usize,
    /// How long a task waits for the others before it gives up and goes on.
    patience: Duration,
}

impl Rendezvous {
    fn new(count: usize, patience: Duration) -> Self {
        Rendezvous {
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
            count,
            patience,
        }
    }

    fn wait(&self) {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all_here.notify_all();
        let _ = self
            .all_here
            .wait_timeout_while(arrived, self.patience, |n| *n < self.count)
            .unwrap();
    }
}

/// Plain `tokio::spawn` tasks on every worker thread (each worker is held by one probe until
/// all probes run), plus many more: none may see a value.
///
/// tokio does not promise to spread the probes of one round over the workers (a worker may
/// take several from the shared queue while the others stay parked), so rounds repeat, each
/// with a short rendezvous, until the probes have run on every worker.
async fn assert_workers_are_clean() {
    let mut threads = HashSet::new();
    for _round in 0..50 {
        let rendezvous = Arc::new(Rendezvous::new(WORKERS, Duration::from_millis(500)));
        let pinned: Vec<_> = (0..WORKERS)
            .map(|_| {
                let rendezvous = Arc::clone(&rendezvous);
                tokio::spawn(async move {
                    rendezvous.wait();
                    probe()
                })
            })
            .collect();
        for task in pinned {
            let (thread, seen) = task.await.unwrap();
            assert_eq!(
                seen,
                (None, None, 0, true),
                "a worker thread kept a task's values"
            );
            threads.insert(thread);
        }
        if threads.len() == WORKERS {
            break;
        }
    }
    assert_eq!(
        threads.len(),
        WORKERS,
        "the probes did not cover every worker in 50 rounds"
    );

    let many: Vec<_> = (0..256)
        .map(|_| {
            tokio::spawn(async {
                tokio::task::yield_now().await;
                probe().1
            })
        })
        .collect();
    for task in many {
        assert_eq!(
            task.await.unwrap(),
            (None, None, 0, true),
            "a worker thread kept a value"
        );
    }
}

fn probe() -> (ThreadId, (Option<u32>, Option<String>, u32, bool)) {
    let seen = (A.get(), B.get(), HITS.get(), Context::current().is_empty());
    (std::thread::current().id(), seen)
}

// B25: the child's snapshot is taken at the call; later sets by the parent are not seen, even
// though the child reads after them.
#[test]
fn spawn_snapshots_the_context_at_the_call() {
    multi_thread().block_on(async {
        let token = A.set(1);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let child = contextvars::spawn(async move {
            go_rx.await.unwrap();
            (A.get(), B.get())
        });
        A.reset(token).unwrap();
        let _later = A.set(2);
        let _b = B.set("later".to_string());
        go_tx.send(()).unwrap();
        assert_eq!(child.await.unwrap(), (Some(1), None));
    });
}

// B25: under concurrency, each child sees the value of the moment it was spawned.
#[test]
fn many_children_each_see_their_own_snapshot() {
    multi_thread().block_on(async {
        let mut children = Vec::new();
        for i in 0..2000u32 {
            let _i = A.set(i);
            children.push(contextvars::spawn(async move {
                let mut rng = Rng::new(u64::from(i));
                for _ in 0..rng.below(5) {
                    tokio::task::yield_now().await;
                }
                let seen = A.get();
                drop(A.set(seen.unwrap() + 1_000_000));
                seen
            }));
        }
        for (i, child) in (0..).zip(children) {
            assert_eq!(child.await.unwrap(), Some(i));
        }
        assert_eq!(A.get(), Some(1999));
    });
}

// B25: the child's sets are invisible to the parent, while the child runs and after; siblings
// are isolated from each other; grandchildren inherit the child's context.
#[test]
fn children_and_siblings_are_isolated_from_the_parent() {
    multi_thread().block_on(async {
        let _a = A.set(1);
        let (set_tx, set_rx) = tokio::sync::oneshot::channel::<()>();
        let (checked_tx, checked_rx) = tokio::sync::oneshot::channel::<()>();
        let child = contextvars::spawn(async move {
            let _a = A.set(10);
            let _b = B.set("child".to_string());
            set_tx.send(()).unwrap();
            checked_rx.await.unwrap();
            let grandchild = contextvars::spawn(async { (A.get(), B.get()) });
            (A.get(), grandchild.await.unwrap())
        });
        set_rx.await.unwrap();
        assert_eq!(
            (A.get(), B.get()),
            (Some(1), None),
            "the child's set reached the parent"
        );
        checked_tx.send(()).unwrap();
        let (child_a, grandchild) = child.await.unwrap();
        assert_eq!(child_a, Some(10));
        assert_eq!(grandchild, (Some(10), Some("child".to_string())));
        assert_eq!((A.get(), B.get()), (Some(1), None));

        let siblings: Vec<_> = (0..100u32)
            .map(|i| {
                contextvars::spawn(async move {
                    for step in 0..10 {
                        drop(HITS.set(HITS.get() + 1));
                        drop(B.set(format!("{i}/{step}")));
                        tokio::task::yield_now().await;
                        assert_eq!(B.get(), Some(format!("{i}/{step}")));
                    }
                    (A.get(), HITS.get())
                })
            })
            .collect();
        for sibling in siblings {
            assert_eq!(sibling.await.unwrap(), (Some(1), 10));
        }
        assert_eq!((HITS.get(), B.get()), (0, None));
    });
}

// B25: `spawn_blocking` snapshots at the call and isolates both ways; a blocking thread reused
// by the pool does not keep a job's values.
#[test]
fn spawn_blocking_snapshots_and_isolates() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .build()
        .unwrap();
    rt.block_on(async {
        let token = A.set(1);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let job = contextvars::spawn_blocking(move || {
            go_rx.recv().unwrap();
            let seen = A.get();
            drop(A.set(5));
            drop(B.set("blocking".to_string()));
            (seen, A.get(), std::thread::current().id())
        });
        A.reset(token).unwrap();
        let _later = A.set(2);
        go_tx.send(()).unwrap();
        let (seen, inside, thread) = job.await.unwrap();
        assert_eq!((seen, inside), (Some(1), Some(5)));
        assert_eq!(
            (A.get(), B.get()),
            (Some(2), None),
            "the job's sets reached the caller"
        );

        // The only blocking thread runs a plain job next: it sees none of that.
        let plain = tokio::task::spawn_blocking(|| (probe().1, std::thread::current().id()));
        let (seen, plain_thread) = plain.await.unwrap();
        assert_eq!(
            plain_thread, thread,
            "the pool should have reused its one thread"
        );
        assert_eq!(
            seen,
            (None, None, 0, true),
            "a blocking thread kept a job's values"
        );
    });
}

// B25: `spawn_local` snapshots at the call and isolates both ways.
#[test]
fn spawn_local_snapshots_and_isolates() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let token = A.set(1);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let child = contextvars::spawn_local(async move {
            go_rx.await.unwrap();
            let seen = A.get();
            drop(A.set(7));
            tokio::task::yield_now().await;
            (seen, A.get())
        });
        A.reset(token).unwrap();
        let _later = A.set(2);
        go_tx.send(()).unwrap();
        assert_eq!(child.await.unwrap(), (Some(1), Some(7)));
        assert_eq!(A.get(), Some(2));

        let plain = tokio::task::spawn_local(async { probe().1 });
        assert_eq!(plain.await.unwrap(), (None, None, 0, true));
    });
}

// B25 + S9: aborting tasks at random points (mid-flight on other workers, or parked) leaves
// no value on any worker thread.
#[test]
fn aborted_tasks_leave_nothing_behind_on_worker_threads() {
    multi_thread().block_on(async {
        for round in 0..10u64 {
            let mut rng = Rng::new(round);
            let tasks: Vec<_> = (0..200u32)
                .map(|i| {
                    let task = async move {
                        let mut rng = Rng::new(u64::from(i));
                        let _guard = A.scoped(i);
                        let _token = B.set(format!("task {i}"));
                        loop {
                            drop(HITS.set(HITS.get() + 1));
                            let nested = async {
                                let _inner = A.scoped(i + 1);
                                tokio::task::yield_now().await;
                            };
                            nested.with_context(Context::current()).await;
                            if rng.below(4) == 0 {
                                tokio::time::sleep(Duration::from_micros(rng.below(100))).await;
                            }
                            // Never true: the task runs until it is aborted.
                            if HITS.get() == u32::MAX {
                                break;
                            }
                        }
                    };
                    if i % 2 == 0 {
                        contextvars::spawn(task)
                    } else {
                        let handle = tokio::spawn(task.in_current_context());
                        contextvars::spawn(async move { handle.await.unwrap() })
                    }
                })
                .collect();
            for _ in 0..rng.below(20) {
                tokio::task::yield_now().await;
            }
            for task in &tasks {
                task.abort();
                if rng.below(8) == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for task in tasks {
                assert!(task.await.unwrap_err().is_cancelled());
            }
        }
        assert_workers_are_clean().await;
    });
}

// B25 + S9: tasks that panic (in their body, in a nested context, in `Context::run`) leave no
// value on any worker thread.
#[test]
fn panicking_tasks_leave_nothing_behind_on_worker_threads() {
    quiet_expected_panics();
    multi_thread().block_on(async {
        let tasks: Vec<_> = (0..300u32)
            .map(|i| {
                contextvars::spawn(async move {
                    let _guard = A.scoped(i);
                    drop(B.set(format!("task {i}")));
                    tokio::task::yield_now().await;
                    match i % 3 {
                        0 => panic!("{EXPECTED} in a task body"),
                        1 => {
                            async {
                                drop(HITS.set(5));
                                tokio::task::yield_now().await;
                                panic!("{EXPECTED} in a nested context");
                            }
                            .in_current_context()
                            .await;
                        }
                        _ => Context::new().run(|| {
                            drop(HITS.set(6));
                            panic!("{EXPECTED} in Context::run");
                        }),
                    }
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap_err().is_panic());
        }
        assert_workers_are_clean().await;
    });
}
